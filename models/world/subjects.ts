/**
 * Subjects: objects the base set never contains, each with its own silhouette, two or three colors
 * and a class noun, and a few "photos" of it (moved, scaled, on a few backgrounds) to personalize
 * on. A subject's photos are all large, on backgrounds that none of its colors equals, so small
 * sizes and the other backgrounds stay new contexts for prompts.
 */
import { HollowcError } from '../../compiler/errors';
import { Rng } from '../random';
import { COLOR_NAMES, type ColorName } from './palette';
import { band, circle, type Figure, type Placement, type Point, polygon, rect } from './figures';
import { drawFigures } from './draw';
import { pick, samplePlacement } from './scene';

export interface Subject {
  readonly id: string;
  /** the class noun prompts use for it ("a sks toy ...") */
  readonly noun: string;
  readonly figure: Figure;
}

const SHIELD: Point[] = [
  [-0.4, -0.5],
  [0.4, -0.5],
  [0.4, 0.1],
  [0, 0.5],
  [-0.4, 0.1],
];

function halfDisc(r: number, cy: number, steps = 24): Point[] {
  return Array.from({ length: steps + 1 }, (_, i) => {
    const a = Math.PI + (Math.PI * i) / steps;
    return [r * Math.cos(a), cy + r * Math.sin(a)] as Point;
  });
}

export const SUBJECTS: readonly Subject[] = [
  {
    id: 'arrow',
    noun: 'sign',
    figure: [
      { color: 'yellow', primitives: [rect(-0.5, -0.1, 0.05, 0.1)] },
      {
        color: 'red',
        primitives: [
          polygon([
            [0, -0.35],
            [0.5, 0],
            [0, 0.35],
          ]),
        ],
      },
    ],
  },
  {
    id: 'striped-shield',
    noun: 'badge',
    figure: [
      { color: 'blue', primitives: [polygon(SHIELD)] },
      { color: 'white', primitives: [polygon(band(SHIELD, -0.3, -0.1)), polygon(band(SHIELD, 0.1, 0.3))] },
    ],
  },
  {
    id: 'mushroom',
    noun: 'toy',
    figure: [
      { color: 'white', primitives: [rect(-0.15, -0.05, 0.15, 0.475)] },
      { color: 'red', primitives: [polygon(halfDisc(0.5, 0.025))] },
      { color: 'white', primitives: [circle(-0.22, -0.18, 0.08), circle(0.12, -0.3, 0.08), circle(0.27, -0.1, 0.06)] },
    ],
  },
  {
    id: 'house',
    noun: 'house',
    figure: [
      { color: 'yellow', primitives: [rect(-0.35, -0.05, 0.35, 0.5)] },
      {
        color: 'red',
        primitives: [
          polygon([
            [-0.5, 0],
            [0, -0.5],
            [0.5, 0],
          ]),
        ],
      },
      { color: 'blue', primitives: [rect(-0.1, 0.2, 0.1, 0.5)] },
    ],
  },
  {
    id: 'kite',
    noun: 'kite',
    figure: [
      {
        color: 'magenta',
        primitives: [
          polygon([
            [0, -0.5],
            [0, 0.5],
            [-0.35, -0.1],
          ]),
        ],
      },
      {
        color: 'cyan',
        primitives: [
          polygon([
            [0, -0.5],
            [0.35, -0.1],
            [0, 0.5],
          ]),
        ],
      },
    ],
  },
];

export const SUBJECT_NOUNS: readonly string[] = [...new Set(SUBJECTS.map((s) => s.noun))];

export function subjectById(id: string): Subject {
  const s = SUBJECTS.find((x) => x.id === id);
  if (!s) throw new HollowcError(`no subject "${id}" (known: ${SUBJECTS.map((x) => x.id).join(', ')})`);
  return s;
}

export function colorsOf(subject: Subject): ColorName[] {
  return [...new Set(subject.figure.map((l) => l.color))];
}

/** One photo of a subject: its background and where it sits (always large). */
export interface SubjectPhoto {
  readonly background: ColorName;
  readonly placement: Placement;
}

/** `count` photos of `subject` from `seed`: on `backgrounds` of the colors it does not use, cycled. */
export function subjectPhotos(subject: Subject, seed: number, count = 5, backgrounds = 3): SubjectPhoto[] {
  const rng = new Rng(seed, `world/subject/${subject.id}`);
  const free = COLOR_NAMES.filter((c) => !colorsOf(subject).includes(c));
  const chosen: ColorName[] = [];
  while (chosen.length < Math.min(backgrounds, free.length)) {
    const c = pick(rng, free);
    if (!chosen.includes(c)) chosen.push(c);
  }
  return Array.from({ length: count }, (_, i) => ({ background: chosen[i % chosen.length], placement: samplePlacement(rng, 'large') }));
}

export function drawSubject(subject: Subject, background: ColorName, placement: Placement, size: number): Promise<Uint8Array> {
  return drawFigures(background, [{ figure: subject.figure, placement }], size);
}
