/**
 * What an image shows, read from its pixels alone: the border is the background; pixels far from
 * it, whose neighbourhood is far from it too (so lone noisy pixels drop out), are the object; each
 * object pixel has the nearest palette color. The object is then resampled into a G x G grid
 * framed on its bounding square, where it is compared with a figure's template over a few shifts
 * and scales.
 */
import { HollowcError } from '../../compiler/errors';
import { COLOR_NAMES, type ColorName, nearestColorIndex, type Rgb, separationOf } from './palette';
import { boundsOf, colorAt, type Figure } from './figures';

// Module-level aliases: inside a vm context (jest) each `Math.x` in a per-pixel loop is a slow
// global lookup (see models/random.ts).
const { floor, min, max } = Math;

export interface Perception {
  readonly size: number;
  /** median of the border pixels */
  readonly backgroundRgb: Rgb;
  readonly background: ColorName;
  /** 1 where the object is (components of at least a tenth of the largest) */
  readonly mask: Uint8Array;
  /** per object pixel: index into COLOR_NAMES of its nearest color, -1 where it is nearer the background (an edge) */
  readonly classes: Int8Array;
  readonly area: number;
  /** the object's bounding box in pixel units, [x0, x1) x [y0, y1); undefined when nothing stands out */
  readonly box?: { readonly x0: number; readonly y0: number; readonly x1: number; readonly y1: number };
  /** the most frequent color among object pixels */
  readonly objectColor?: ColorName;
}

export function checkPixels(pixels: Uint8Array, size: number): void {
  if (!(Number.isInteger(size) && size >= 8) || pixels.length !== size * size * 3)
    throw new HollowcError(`expected ${size}x${size} RGB pixels (${size * size * 3} bytes), got ${pixels.length} bytes`);
}

function median(values: number[]): number {
  const s = [...values].sort((a, b) => a - b);
  return s[s.length >> 1];
}

/** Box blur of radius r (separable, edges clamped), float RGB. */
function boxBlur(pixels: Uint8Array, size: number, r: number): Float32Array {
  const tmp = new Float32Array(pixels.length);
  const out = new Float32Array(pixels.length);
  const clamp = (v: number) => (v < 0 ? 0 : v >= size ? size - 1 : v);
  const n = 2 * r + 1;
  for (let y = 0; y < size; y++)
    for (let x = 0; x < size; x++)
      for (let k = 0; k < 3; k++) {
        let s = 0;
        for (let d = -r; d <= r; d++) s += pixels[3 * (y * size + clamp(x + d)) + k];
        tmp[3 * (y * size + x) + k] = s / n;
      }
  for (let y = 0; y < size; y++)
    for (let x = 0; x < size; x++)
      for (let k = 0; k < 3; k++) {
        let s = 0;
        for (let d = -r; d <= r; d++) s += tmp[3 * (clamp(y + d) * size + x) + k];
        out[3 * (y * size + x) + k] = s / n;
      }
  return out;
}

/** The 4-connected components of the pixels where `mask` equals `value`: a label per pixel (-1 elsewhere), areas, and whether each touches the image edge. */
function components(mask: Uint8Array, size: number, value: number): { label: Int32Array; areas: number[]; touchesEdge: boolean[] } {
  const label = new Int32Array(mask.length).fill(-1);
  const areas: number[] = [];
  const touchesEdge: boolean[] = [];
  const stack: number[] = [];
  for (let start = 0; start < mask.length; start++) {
    if (mask[start] !== value || label[start] >= 0) continue;
    const id = areas.length;
    let area = 0;
    let edge = false;
    label[start] = id;
    stack.push(start);
    while (stack.length) {
      const p = stack.pop()!;
      area++;
      const x = p % size;
      const y = (p - x) / size;
      if (x === 0 || y === 0 || x === size - 1 || y === size - 1) edge = true;
      const visit = (q: number) => {
        if (mask[q] === value && label[q] < 0) {
          label[q] = id;
          stack.push(q);
        }
      };
      if (x > 0) visit(p - 1);
      if (x < size - 1) visit(p + 1);
      if (y > 0) visit(p - size);
      if (y < size - 1) visit(p + size);
    }
    areas.push(area);
    touchesEdge.push(edge);
  }
  return { label, areas, touchesEdge };
}

/** Keeps the components of `mask` of at least `fraction` of the largest one. */
function keepMainComponents(mask: Uint8Array, size: number, fraction: number): void {
  const { label, areas } = components(mask, size, 1);
  const cut = fraction * Math.max(0, ...areas);
  for (let p = 0; p < mask.length; p++) if (mask[p] && areas[label[p]] < cut) mask[p] = 0;
}

/** Sets enclosed background regions of at most `maxArea` pixels (noise inside an object) to object. */
function fillSmallHoles(mask: Uint8Array, size: number, maxArea: number): void {
  const { label, areas, touchesEdge } = components(mask, size, 0);
  for (let p = 0; p < mask.length; p++) if (!mask[p] && !touchesEdge[label[p]] && areas[label[p]] <= maxArea) mask[p] = 1;
}

export function perceive(pixels: Uint8Array, size: number): Perception {
  checkPixels(pixels, size);
  const border = Math.max(1, Math.round(size / 32));
  const ring: number[][] = [[], [], []];
  for (let y = 0; y < size; y++)
    for (let x = 0; x < size; x++) {
      if (x >= border && x < size - border && y >= border && y < size - border) continue;
      for (let k = 0; k < 3; k++) ring[k].push(pixels[3 * (y * size + x) + k]);
    }
  const backgroundRgb: Rgb = [median(ring[0]), median(ring[1]), median(ring[2])];
  const bgIndex = nearestColorIndex(...backgroundRgb);
  const background = COLOR_NAMES[bgIndex];

  // A pixel is object when it is far from the background and so is its neighbourhood's mean: the
  // first keeps corners and notches sharp, the second drops lone noisy pixels.
  const blurred = boxBlur(pixels, size, Math.max(1, Math.round(size / 64)));
  const cut = separationOf(background) / 2;
  const far = (img: ArrayLike<number>, p: number, d: number) =>
    (img[3 * p] - backgroundRgb[0]) ** 2 + (img[3 * p + 1] - backgroundRgb[1]) ** 2 + (img[3 * p + 2] - backgroundRgb[2]) ** 2 > d * d;
  const mask = new Uint8Array(size * size);
  for (let p = 0; p < mask.length; p++) mask[p] = far(pixels, p, cut) && far(blurred, p, cut / 2) ? 1 : 0;
  fillSmallHoles(mask, size, Math.max(2, Math.round((size / 64) ** 2 * 4)));
  keepMainComponents(mask, size, 0.1);

  const classes = new Int8Array(size * size).fill(-1);
  const votes = new Array<number>(COLOR_NAMES.length).fill(0);
  let area = 0;
  let x0 = size;
  let y0 = size;
  let x1 = 0;
  let y1 = 0;
  for (let p = 0; p < mask.length; p++) {
    if (!mask[p]) continue;
    area++;
    const x = p % size;
    const y = (p - x) / size;
    x0 = min(x0, x);
    y0 = min(y0, y);
    x1 = max(x1, x + 1);
    y1 = max(y1, y + 1);
    const c = nearestColorIndex(pixels[3 * p], pixels[3 * p + 1], pixels[3 * p + 2]);
    if (c === bgIndex) continue;
    classes[p] = c;
    votes[c]++;
  }
  const top = votes.indexOf(Math.max(...votes));
  return {
    size,
    backgroundRgb,
    background,
    mask,
    classes,
    area,
    ...(area > 0 && { box: { x0, y0, x1, y1 } }),
    ...(votes[top] > 0 && { objectColor: COLOR_NAMES[top] }),
  };
}

/** The side of the grids objects and templates are compared on. */
export const GRID = 32;

/** A figure on the grid, framed on its bounding square: coverage in [0, 1] and the color index at each cell. */
export interface Template {
  readonly coverage: Float32Array;
  readonly colors: Int8Array;
}

const templates = new WeakMap<Figure, Template>();

/** The figure's template (3 x 3 samples a cell), cached per figure object. */
export function templateOf(figure: Figure): Template {
  const cached = templates.get(figure);
  if (cached) return cached;
  const b = boundsOf(figure);
  const side = Math.max(b.x1 - b.x0, b.y1 - b.y0);
  const cx = (b.x0 + b.x1) / 2;
  const cy = (b.y0 + b.y1) / 2;
  const coverage = new Float32Array(GRID * GRID);
  const colors = new Int8Array(GRID * GRID).fill(-1);
  for (let i = 0; i < GRID; i++)
    for (let j = 0; j < GRID; j++) {
      const counts = new Map<ColorName, number>();
      for (let si = 0; si < 3; si++)
        for (let sj = 0; sj < 3; sj++) {
          const u = cx + ((j + (sj + 0.5) / 3) / GRID - 0.5) * side;
          const v = cy + ((i + (si + 0.5) / 3) / GRID - 0.5) * side;
          const c = colorAt(figure, u, v);
          if (c) counts.set(c, (counts.get(c) ?? 0) + 1);
        }
      let total = 0;
      let best: ColorName | undefined;
      for (const [c, n] of counts) {
        total += n;
        if (!best || n > counts.get(best)!) best = c;
      }
      coverage[i * GRID + j] = total / 9;
      if (best) colors[i * GRID + j] = COLOR_NAMES.indexOf(best);
    }
  const t = { coverage, colors };
  templates.set(figure, t);
  return t;
}

/** The object resampled onto the grid (nearest pixel), for each of the shifts and scales searched. */
export function objectGrids(seen: Perception): { mask: Uint8Array; colors: Int8Array }[] {
  if (!seen.box) return [];
  const { x0, y0, x1, y1 } = seen.box;
  const side = Math.max(x1 - x0, y1 - y0);
  const grids: { mask: Uint8Array; colors: Int8Array }[] = [];
  for (const scale of [0.94, 1, 1.06])
    for (const dy of [-1, 0, 1])
      for (const dx of [-1, 0, 1]) {
        const s = side * scale;
        const cx = (x0 + x1) / 2 + (dx * side) / GRID;
        const cy = (y0 + y1) / 2 + (dy * side) / GRID;
        const mask = new Uint8Array(GRID * GRID);
        const colors = new Int8Array(GRID * GRID).fill(-1);
        for (let i = 0; i < GRID; i++)
          for (let j = 0; j < GRID; j++) {
            const px = floor(cx + ((j + 0.5) / GRID - 0.5) * s);
            const py = floor(cy + ((i + 0.5) / GRID - 0.5) * s);
            if (px < 0 || py < 0 || px >= seen.size || py >= seen.size) continue;
            const p = py * seen.size + px;
            mask[i * GRID + j] = seen.mask[p];
            colors[i * GRID + j] = seen.classes[p];
          }
        grids.push({ mask, colors });
      }
  return grids;
}

/**
 * How well the object matches a template at the best of the searched shifts and scales: the
 * silhouette's IoU, and the colored IoU (overlap counted only where the colors agree too).
 */
export function matchTemplate(
  grids: readonly { mask: Uint8Array; colors: Int8Array }[],
  t: Template,
): { silhouette: number; colored: number } {
  let silhouette = 0;
  let colored = 0;
  for (const g of grids) {
    let inter = 0;
    let interColored = 0;
    let union = 0;
    for (let k = 0; k < GRID * GRID; k++) {
      const m = g.mask[k];
      const c = t.coverage[k];
      inter += m < c ? m : c;
      union += m > c ? m : c;
      if (m && g.colors[k] === t.colors[k]) interColored += c;
    }
    if (union > 0) {
      silhouette = Math.max(silhouette, inter / union);
      colored = Math.max(colored, interColored / union);
    }
  }
  return { silhouette, colored };
}
