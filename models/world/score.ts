/**
 * The world's scorers, plain functions of pixels: what an image shows (background, object color,
 * kind, size), whether it shows what a caption says, and the analogs of the paper's quality
 * metrics: subject fidelity (DINO), prompt fidelity (CLIP-T) and diversity.
 */
import { HollowcError } from '../../compiler/errors';
import { COLOR_NAMES, type ColorName } from './palette';
import { SHAPE_KINDS, type ShapeKind, shapeFigure } from './shapes';
import { type Expected, type SizeName, SMALL_LARGE_CUT } from './scene';
import type { Subject } from './subjects';
import { checkPixels, matchTemplate, objectGrids, type Perception, perceive, templateOf } from './perceive';

/** Below this fraction of the image an object is noise, not an object. */
export const MIN_OBJECT_AREA = 0.005;

export interface Description {
  readonly background: ColorName;
  /** undefined when nothing stands out of the background */
  readonly color?: ColorName;
  readonly kind?: ShapeKind;
  readonly size?: SizeName;
  /** silhouette IoU against each kind, best shift and scale */
  readonly kindScores: Readonly<Record<ShapeKind, number>>;
  /** the object's extent (larger side of its bounding box) as a fraction of the image side */
  readonly extent: number;
}

// Kinds are matched in one color (white): only the silhouette counts.
const KIND_TEMPLATES = SHAPE_KINDS.map((k) => templateOf(shapeFigure(k, 'white')));

function hasObject(seen: Perception): boolean {
  return seen.area >= MIN_OBJECT_AREA * seen.size * seen.size;
}

export function describeFrom(seen: Perception): Description {
  const kindScores = Object.fromEntries(SHAPE_KINDS.map((k) => [k, 0])) as Record<ShapeKind, number>;
  if (!hasObject(seen) || !seen.box) return { background: seen.background, kindScores, extent: 0 };
  const grids = objectGrids(seen);
  SHAPE_KINDS.forEach((k, i) => (kindScores[k] = matchTemplate(grids, KIND_TEMPLATES[i]).silhouette));
  const kind = SHAPE_KINDS.reduce((a, b) => (kindScores[b] > kindScores[a] ? b : a));
  const { x0, y0, x1, y1 } = seen.box;
  const extent = Math.max(x1 - x0, y1 - y0) / seen.size;
  return {
    background: seen.background,
    color: seen.objectColor,
    kind,
    size: extent < SMALL_LARGE_CUT ? 'small' : 'large',
    kindScores,
    extent,
  };
}

/** What `pixels` (`size` x `size` RGB, HWC) show. */
export function describeImage(pixels: Uint8Array, size: number): Description {
  return describeFrom(perceive(pixels, size));
}

/** Each stated attribute of a caption, true where the image shows it; an attribute the caption does not state is absent. */
export interface ScoreCard {
  readonly background: boolean;
  readonly size?: boolean;
  readonly objectColor?: boolean;
  readonly objectKind?: boolean;
  /** for a subject caption: something stands out of the background (which thing is subjectFidelity's question) */
  readonly objectPresent?: boolean;
}

export function scoreImage(pixels: Uint8Array, size: number, expected: Expected): ScoreCard {
  const d = describeImage(pixels, size);
  return {
    background: d.background === expected.background,
    ...(expected.size && { size: d.size === expected.size }),
    ...(expected.color && { objectColor: d.color === expected.color }),
    ...(expected.kind && { objectKind: d.kind === expected.kind }),
    ...(expected.subject && { objectPresent: d.color !== undefined }),
  };
}

/** The CLIP-T analog: the fraction of a caption's stated attributes the image shows, in [0, 1]. */
export function promptFidelity(pixels: Uint8Array, size: number, expected: Expected): number {
  const values = Object.values(scoreImage(pixels, size, expected)).filter((v): v is boolean => v !== undefined);
  return values.filter(Boolean).length / values.length;
}

/**
 * The DINO analog, in [0, 1]: the fraction of the union of the image's object and the subject's
 * silhouette (framed on their bounding squares, best of a few shifts and scales) where both are
 * there and show the same palette color.
 */
export function subjectFidelity(pixels: Uint8Array, size: number, subject: Subject): number {
  const seen = perceive(pixels, size);
  if (!hasObject(seen)) return 0;
  return matchTemplate(objectGrids(seen), templateOf(subject.figure)).colored;
}

/** Side of the coarse images diversity compares: layout and color more than pixel noise. */
const DIVERSITY_SIDE = 16;

function coarse(pixels: Uint8Array, size: number): Float32Array {
  const out = new Float32Array(DIVERSITY_SIDE * DIVERSITY_SIDE * 3);
  const count = new Float32Array(DIVERSITY_SIDE * DIVERSITY_SIDE);
  for (let y = 0; y < size; y++)
    for (let x = 0; x < size; x++) {
      const c = (((y * DIVERSITY_SIDE) / size) | 0) * DIVERSITY_SIDE + (((x * DIVERSITY_SIDE) / size) | 0);
      count[c]++;
      for (let k = 0; k < 3; k++) out[3 * c + k] += pixels[3 * (y * size + x) + k];
    }
  for (let c = 0; c < count.length; c++) for (let k = 0; k < 3; k++) out[3 * c + k] /= 255 * count[c];
  return out;
}

/**
 * The diversity analog (the paper's LPIPS between samples of one prompt): the mean over pairs of
 * the mean absolute difference of the images at 16 x 16 (area-averaged), in [0, 1].
 */
export function diversity(images: readonly Uint8Array[], size: number): number {
  if (images.length < 2) throw new HollowcError(`diversity needs at least 2 images, got ${images.length}`);
  images.forEach((p) => checkPixels(p, size));
  const small = images.map((p) => coarse(p, size));
  let sum = 0;
  let pairs = 0;
  for (let i = 0; i < small.length; i++)
    for (let j = i + 1; j < small.length; j++) {
      let d = 0;
      for (let k = 0; k < small[i].length; k++) {
        const e = small[i][k] - small[j][k];
        d += e < 0 ? -e : e;
      }
      sum += d / small[i].length;
      pairs++;
    }
  return sum / pairs;
}
