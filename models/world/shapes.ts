/**
 * The base set's object kinds. Each spans the unit box in its larger dimension, so an object's
 * measured extent is its placement's scale whatever its kind; none is drawn rotated.
 */
import type { ColorName } from './palette';
import { circle, type Figure, polygon, radial, rect } from './figures';

export const SHAPE_KINDS = ['circle', 'square', 'triangle', 'star', 'cross', 'ring'] as const;
export type ShapeKind = (typeof SHAPE_KINDS)[number];

export function isShapeKind(word: string): word is ShapeKind {
  return (SHAPE_KINDS as readonly string[]).includes(word);
}

const H = Math.sqrt(3) / 4; // half the height of an equilateral triangle of side 1

export function shapeFigure(kind: ShapeKind, color: ColorName): Figure {
  switch (kind) {
    case 'circle':
      return [{ color, primitives: [circle(0, 0, 0.5)] }];
    case 'square':
      return [{ color, primitives: [rect(-0.5, -0.5, 0.5, 0.5)] }];
    case 'triangle':
      return [
        {
          color,
          primitives: [
            polygon([
              [0, -H],
              [0.5, H],
              [-0.5, H],
            ]),
          ],
        },
      ];
    case 'star': {
      // a 5-point star is 0.951 wide and 0.905 tall at radius 0.5: scaled so its width is 1
      const r = 0.5 / Math.cos(Math.PI / 10);
      const pts = radial(5, r, 0.45 * r).map(([x, y]) => [x, y + 0.05 * r] as const);
      return [{ color, primitives: [polygon(pts)] }];
    }
    case 'cross':
      return [{ color, primitives: [rect(-0.5, -0.17, 0.5, 0.17), rect(-0.17, -0.5, 0.17, 0.5)] }];
    case 'ring':
      return [{ color, primitives: [circle(0, 0, 0.5), circle(0, 0, 0.28)], evenOdd: true }];
  }
}
