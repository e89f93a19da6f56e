/**
 * The world's geometry: a figure is colored layers of circles and polygons in a unit box
 * ([-0.5, 0.5]², y down). One description serves both the drawing (an SVG that sharp renders)
 * and the scorers' templates (point tests here), so what is drawn and what is matched cannot drift.
 */
import type { ColorName } from './palette';

export type Point = readonly [number, number];

export type Primitive =
  | { readonly type: 'circle'; readonly cx: number; readonly cy: number; readonly r: number }
  | { readonly type: 'polygon'; readonly points: readonly Point[] };

/** Primitives painted in one color; `evenOdd` cuts holes where primitives overlap (a ring). */
export interface Layer {
  readonly color: ColorName;
  readonly primitives: readonly Primitive[];
  readonly evenOdd?: boolean;
}

/** Layers painted in order, later over earlier. */
export type Figure = readonly Layer[];

/** Where a figure sits in an image: its unit box's centre and side, as fractions of the image side. */
export interface Placement {
  readonly x: number;
  readonly y: number;
  readonly scale: number;
}

export function circle(cx: number, cy: number, r: number): Primitive {
  return { type: 'circle', cx, cy, r };
}

export function polygon(points: readonly Point[]): Primitive {
  return { type: 'polygon', points };
}

export function rect(x0: number, y0: number, x1: number, y1: number): Primitive {
  return polygon([
    [x0, y0],
    [x1, y0],
    [x1, y1],
    [x0, y1],
  ]);
}

/** Vertices of a regular polygon or star around (0, 0); `inner` > 0 alternates outer and inner radii. */
export function radial(count: number, outer: number, inner = 0, rotation = -Math.PI / 2): Point[] {
  const n = inner > 0 ? 2 * count : count;
  return Array.from({ length: n }, (_, i) => {
    const r = inner > 0 && i % 2 === 1 ? inner : outer;
    const a = rotation + (2 * Math.PI * i) / n;
    return [r * Math.cos(a), r * Math.sin(a)] as Point;
  });
}

/** The part of a convex polygon between the horizontal lines y0 < y1 (Sutherland-Hodgman on two half-planes). */
export function band(points: readonly Point[], y0: number, y1: number): Point[] {
  const clip = (pts: readonly Point[], keep: (p: Point) => boolean, y: number): Point[] => {
    const out: Point[] = [];
    for (let i = 0; i < pts.length; i++) {
      const a = pts[i];
      const b = pts[(i + 1) % pts.length];
      if (keep(a)) out.push(a);
      if (keep(a) !== keep(b)) {
        const t = (y - a[1]) / (b[1] - a[1]);
        out.push([a[0] + t * (b[0] - a[0]), y]);
      }
    }
    return out;
  };
  return clip(
    clip(points, (p) => p[1] >= y0, y0),
    (p) => p[1] <= y1,
    y1,
  );
}

function insidePrimitive(p: Primitive, x: number, y: number): boolean {
  if (p.type === 'circle') return (x - p.cx) ** 2 + (y - p.cy) ** 2 <= p.r * p.r;
  let inside = false;
  const pts = p.points;
  for (let i = 0, j = pts.length - 1; i < pts.length; j = i++) {
    const [xi, yi] = pts[i];
    const [xj, yj] = pts[j];
    if (yi > y !== yj > y && x < ((xj - xi) * (y - yi)) / (yj - yi) + xi) inside = !inside;
  }
  return inside;
}

function insideLayer(layer: Layer, x: number, y: number): boolean {
  if (!layer.evenOdd) return layer.primitives.some((p) => insidePrimitive(p, x, y));
  return layer.primitives.filter((p) => insidePrimitive(p, x, y)).length % 2 === 1;
}

/** The color a figure shows at unit-box point (x, y), or undefined where it is transparent. */
export function colorAt(figure: Figure, x: number, y: number): ColorName | undefined {
  for (let i = figure.length - 1; i >= 0; i--) if (insideLayer(figure[i], x, y)) return figure[i].color;
  return undefined;
}

/** The figure's tight bounding box in unit-box coordinates. */
export function boundsOf(figure: Figure): { x0: number; y0: number; x1: number; y1: number } {
  let x0 = Infinity;
  let y0 = Infinity;
  let x1 = -Infinity;
  let y1 = -Infinity;
  const add = (x: number, y: number) => {
    x0 = Math.min(x0, x);
    y0 = Math.min(y0, y);
    x1 = Math.max(x1, x);
    y1 = Math.max(y1, y);
  };
  for (const layer of figure)
    for (const p of layer.primitives) {
      if (p.type === 'circle') {
        add(p.cx - p.r, p.cy - p.r);
        add(p.cx + p.r, p.cy + p.r);
      } else for (const [x, y] of p.points) add(x, y);
    }
  return { x0, y0, x1, y1 };
}

const fmt = (v: number) => Number(v.toFixed(3)).toString();

function pathOf(p: Primitive, px: (x: number) => number, py: (y: number) => number, s: number): string {
  if (p.type === 'polygon') return `M${p.points.map(([x, y]) => `${fmt(px(x))} ${fmt(py(y))}`).join('L')}Z`;
  const r = fmt(p.r * s);
  const x0 = fmt(px(p.cx - p.r));
  const x1 = fmt(px(p.cx + p.r));
  const y = fmt(py(p.cy));
  return `M${x0} ${y}A${r} ${r} 0 1 0 ${x1} ${y}A${r} ${r} 0 1 0 ${x0} ${y}Z`;
}

/** SVG elements drawing `figure` at `placement` in an image `size` pixels wide. */
export function figureSvg(figure: Figure, placement: Placement, size: number, rgbOf: (c: ColorName) => string): string {
  const s = placement.scale * size;
  const px = (x: number) => placement.x * size + x * s;
  const py = (y: number) => placement.y * size + y * s;
  return figure
    .map((layer) => {
      const fill = rgbOf(layer.color);
      // nonzero unions are drawn one path per primitive, so two overlapping subpaths never cancel
      if (layer.evenOdd)
        return `<path fill="${fill}" fill-rule="evenodd" d="${layer.primitives.map((p) => pathOf(p, px, py, s)).join('')}"/>`;
      return layer.primitives.map((p) => `<path fill="${fill}" d="${pathOf(p, px, py, s)}"/>`).join('');
    })
    .join('');
}
