/**
 * The base set: one object on a plain background per image, sampled from a seed, and its caption
 * from a small grammar:
 *
 *   caption := "a" [size] object "on a" color "background"
 *   object  := color kind            (a base-set object: "a small red star on a green background")
 *            | token noun            (a subject: "a sks toy on a blue background")
 *
 * The base set always says the size; a prompt may leave it out.
 */
import { HollowcError } from '../../compiler/errors';
import { Rng } from '../random';
import { COLOR_NAMES, type ColorName, isColorName } from './palette';
import { isShapeKind, SHAPE_KINDS, type ShapeKind, shapeFigure } from './shapes';
import type { Placement } from './figures';
import { drawFigures } from './draw';

export const SIZE_NAMES = ['small', 'large'] as const;
export type SizeName = (typeof SIZE_NAMES)[number];

/** The range of placement scales (an object's extent as a fraction of the image side) each size draws from. */
export const SIZE_RANGES: Readonly<Record<SizeName, readonly [number, number]>> = {
  small: [0.35, 0.45],
  large: [0.6, 0.75],
};
/** Where a measured extent stops being small: midway between the ranges. */
export const SMALL_LARGE_CUT = (SIZE_RANGES.small[1] + SIZE_RANGES.large[0]) / 2;

/** Clear space between an object and the image edge, as a fraction of the side (the scorers read the border as background). */
export const EDGE_MARGIN = 0.08;

export interface Scene {
  readonly background: ColorName;
  readonly color: ColorName;
  readonly kind: ShapeKind;
  readonly size: SizeName;
  readonly placement: Placement;
}

/** What a caption says an image shows: a base-set object (color and kind) or a subject (token and noun). */
export interface Expected {
  readonly background: ColorName;
  readonly size?: SizeName;
  readonly color?: ColorName;
  readonly kind?: ShapeKind;
  readonly subject?: { readonly token: string; readonly noun: string };
}

export function uniform(rng: Rng): number {
  return rng.next() / 2 ** 32;
}

export function pick<T>(rng: Rng, items: readonly T[]): T {
  return items[Math.floor(uniform(rng) * items.length)];
}

/** A placement of the given size, at a uniform position that keeps EDGE_MARGIN clear. */
export function samplePlacement(rng: Rng, size: SizeName): Placement {
  const [lo, hi] = SIZE_RANGES[size];
  const scale = lo + (hi - lo) * uniform(rng);
  const free = 1 - 2 * EDGE_MARGIN - scale;
  const x = EDGE_MARGIN + scale / 2 + free * uniform(rng);
  const y = EDGE_MARGIN + scale / 2 + free * uniform(rng);
  return { x, y, scale };
}

/** Scene `seed` of the base set: every field is a function of the seed alone. */
export function sampleScene(seed: number): Scene {
  const rng = new Rng(seed, 'world/scene');
  const background = pick(rng, COLOR_NAMES);
  const color = pick(
    rng,
    COLOR_NAMES.filter((c) => c !== background),
  );
  const kind = pick(rng, SHAPE_KINDS);
  const size = pick(rng, SIZE_NAMES);
  return { background, color, kind, size, placement: samplePlacement(rng, size) };
}

export function drawScene(scene: Scene, size: number): Promise<Uint8Array> {
  return drawFigures(scene.background, [{ figure: shapeFigure(scene.kind, scene.color), placement: scene.placement }], size);
}

export function captionOf(scene: Scene): string {
  return `a ${scene.size} ${scene.color} ${scene.kind} on a ${scene.background} background`;
}

export function expectedOf(scene: Scene): Expected {
  return { background: scene.background, size: scene.size, color: scene.color, kind: scene.kind };
}

/** The caption of a subject prompt, e.g. "a small sks toy on a blue background". */
export function subjectCaption(token: string, noun: string, background: ColorName, size?: SizeName): string {
  return `a ${size ? `${size} ` : ''}${token} ${noun} on a ${background} background`;
}

const GRAMMAR = '"a [small|large] <color> <kind> on a <color> background" or "a [small|large] <token> <noun> on a <color> background"';

/** Parses a caption of the grammar above; `nouns` are the subject class nouns it accepts. */
export function parseCaption(text: string, nouns: readonly string[] = []): Expected {
  const fail = (why: string): never => {
    throw new HollowcError(`caption "${text}": ${why}; expected ${GRAMMAR}`);
  };
  const m = /^an? (?:(small|large) )?(\S+) (\S+) on an? (\S+) background$/.exec(text.trim().toLowerCase().replace(/\s+/g, ' '));
  if (!m) return fail('does not follow the grammar');
  const [, sizeWord, first, second, bg] = m;
  if (!isColorName(bg)) return fail(`"${bg}" is not a color (${COLOR_NAMES.join(', ')})`);
  const size = sizeWord as SizeName | undefined;
  if (isShapeKind(second)) {
    if (!isColorName(first)) return fail(`"${first}" is not a color (${COLOR_NAMES.join(', ')})`);
    return { background: bg, ...(size && { size }), color: first, kind: second };
  }
  if (nouns.includes(second)) return { background: bg, ...(size && { size }), subject: { token: first, noun: second } };
  return fail(`"${second}" is neither a kind (${SHAPE_KINDS.join(', ')}) nor a subject noun (${nouns.join(', ') || 'none given'})`);
}
