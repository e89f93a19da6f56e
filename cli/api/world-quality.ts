/**
 * Personalization quality on the world pipeline (issue 32, the paper's Table 1 analog): a subject's
 * photos in, a personalized model out by one of the methods the paper compares, then images of the
 * subject in contexts its photos never had, each scored from its pixels by the world: subject
 * fidelity (DINO analog), prompt fidelity (CLIP-T analog) and diversity across seeds.
 */
import * as fs from 'fs';
import * as path from 'path';
import { writeFileAtomic } from '../../compiler/atomic-files';
import { HollowcError } from '../../compiler/errors';
import {
  COLOR_NAMES,
  type ColorName,
  type Expected,
  type SizeName,
  type Subject,
  colorsOf,
  diversity,
  drawSubject,
  pixelsOfTensor,
  pngOf,
  promptFidelity,
  subjectCaption,
  subjectFidelity,
  subjectPhotos,
} from '../../models/world';
import { ExecutionProvider } from '../../runtime/ort/session';
import { SessionPool } from '../../runtime/ort/session-pool';
import { openPipelineFolder } from '../../runtime/text-to-image/pipeline-folder';
import { TextToImageOptions, defaultImageSize, textToImage } from '../../runtime/text-to-image/text-to-image';
import { TRAINED_LORA_FILE } from '../../runtime/formats/lora-format';
import { runFolder } from '../../runtime/personalize/run-folder';
import { PersonalizeOptions, PersonalizeResult, personalize } from './personalize';

/** The identifier word prompts put before a subject's class noun. */
export const SUBJECT_TOKEN = 'sks';

/** How a row of the table trains: a preset ('none': plain LoRA on the whole UNet), LoRA targets, base weights. */
export interface QualityMethod {
  readonly name: string;
  /** hollow preset, or 'none' for no hollowing */
  readonly preset: string;
  /** LoRA targets (default: the paper's attention projections); undefined rank with trainBase: no LoRA */
  readonly rank?: number;
  readonly loraTargets?: readonly string[];
  readonly trainBase?: readonly string[];
  /** learning rate, when it differs from the run's (full fine-tuning moves every weight) */
  readonly lr?: number;
}

/** The subject's photos, written as PNGs into `dir` (the folder personalize reads). */
export async function writeSubjectPhotos(
  subject: Subject,
  dir: string,
  o: { seed: number; size: number; count?: number },
): Promise<string[]> {
  fs.mkdirSync(dir, { recursive: true });
  const files: string[] = [];
  const photos = subjectPhotos(subject, o.seed, o.count ?? 5);
  for (let i = 0; i < photos.length; i++) {
    const p = photos[i];
    const file = path.join(dir, `${i}-${p.background}.png`);
    fs.writeFileSync(file, await pngOf(await drawSubject(subject, p.background, p.placement, o.size), o.size));
    files.push(file);
  }
  return files;
}

export interface SubjectContext {
  readonly prompt: string;
  readonly expected: Expected;
}

/**
 * Prompts that put the subject where its photos never were: every background that is neither one
 * of its colors nor a photo's, large and small (the photos are all large).
 */
export function subjectContexts(
  subject: Subject,
  photoSeed: number,
  o: { sizes?: readonly SizeName[]; backgrounds?: number } = {},
): SubjectContext[] {
  const seen = new Set<ColorName>([...colorsOf(subject), ...subjectPhotos(subject, photoSeed).map((p) => p.background)]);
  const backgrounds = COLOR_NAMES.filter((c) => !seen.has(c)).slice(0, o.backgrounds ?? Infinity);
  if (!backgrounds.length) throw new HollowcError(`subject ${subject.id}: every background is one of its colors or a photo's`);
  return (o.sizes ?? (['large', 'small'] as const)).flatMap((size) =>
    backgrounds.map((background) => ({
      prompt: subjectCaption(SUBJECT_TOKEN, subject.noun, background, size),
      expected: { background, size, subject: { token: SUBJECT_TOKEN, noun: subject.noun } },
    })),
  );
}

/** What samples a personalized model: the pipeline folder, maybe with a compiled run's two-path infer.onnx and LoRA. */
export type Sampler = Pick<TextToImageOptions, 'folder' | 'run'>;

/** The sampler of a finished personalize run folder: its fine-tuned pipeline, or the two-path graph with the trained LoRA. */
export function samplerOfRun(base: string, out: string, classPrompt: string): Sampler {
  const dirs = runFolder(out);
  if (fs.existsSync(path.join(dirs.pipeline, 'model_index.json'))) return { folder: openPipelineFolder(dirs.pipeline) };
  return { folder: openPipelineFolder(base), run: { out: dirs.compiled, lora: path.join(dirs.compiled, TRAINED_LORA_FILE), classPrompt } };
}

export interface ScoredImage {
  readonly prompt: string;
  readonly seed: number;
  readonly file: string;
  readonly subjectFidelity: number;
  readonly promptFidelity: number;
}

export interface SampleSettings {
  seeds: readonly number[];
  size: number;
  steps: number;
  guidance: number;
  threads?: number;
  ep?: ExecutionProvider;
  fallbackToCpu?: boolean;
}

/** One image per context and seed (DDIM, CFG), saved as PNG under `dir`, each scored against the subject and its prompt. */
export async function scoreSubjectImages(
  sampler: Sampler,
  subject: Subject,
  contexts: readonly SubjectContext[],
  s: SampleSettings,
  dir: string,
): Promise<{ images: ScoredImage[]; diversity: number }> {
  fs.mkdirSync(dir, { recursive: true });
  const images: ScoredImage[] = [];
  const perPrompt: Uint8Array[][] = [];
  // every image runs the same few tiny graphs: open each once, not once per image
  const pool = new SessionPool();
  try {
    for (const c of contexts) {
      const group: Uint8Array[] = [];
      for (const seed of s.seeds) {
        const r = await textToImage({
          ...sampler,
          prompt: c.prompt,
          width: s.size,
          height: s.size,
          steps: s.steps,
          guidance: s.guidance,
          scheduler: 'ddim',
          seed,
          numImages: 1,
          session: { ...(s.threads && { intraOpThreads: s.threads }), ep: s.ep, fallbackToCpu: s.fallbackToCpu, pool },
        });
        const pixels = pixelsOfTensor(r.images!.data, r.images!.dims, 0);
        const file = path.join(dir, `${c.prompt.replace(/ /g, '_')}-seed${seed}.png`);
        fs.writeFileSync(file, await pngOf(pixels, s.size));
        group.push(pixels);
        images.push({
          prompt: c.prompt,
          seed,
          file: path.relative(dir, file),
          subjectFidelity: subjectFidelity(pixels, s.size, subject),
          promptFidelity: promptFidelity(pixels, s.size, c.expected),
        });
      }
      perPrompt.push(group);
    }
  } finally {
    await pool.close();
  }
  const div = perPrompt.length && s.seeds.length > 1 ? perPrompt.reduce((a, g) => a + diversity(g, s.size), 0) / perPrompt.length : 0;
  return { images, diversity: div };
}

export interface PersonalizeWorldOptions {
  pipeline: string;
  subject: Subject;
  method: QualityMethod;
  out: string;
  photoSeed: number;
  steps: number;
  lr: number;
  classImages: number;
  seed?: number;
  threads?: number;
  log?: (line: string) => void;
  /** any other personalize option (validation prompts, sampling steps, execution provider) */
  extra?: Partial<PersonalizeOptions>;
}

export interface WorldPersonalized {
  /** the run folder personalize wrote */
  run: string;
  prompt: string;
  classPrompt: string;
  /** the photo files, and their side (the pipeline's default size) */
  photos: string[];
  size: number;
  result: PersonalizeResult;
  /** the train stage's peak RSS, and the whole run's */
  trainPeakRssBytes: number;
  peakRssBytes: number;
  trainSeconds: number;
  loss: { before: number; after: number };
  /**
   * Float32 bytes of the model state training holds, from the compiled manifest: the base weights
   * held, plus a gradient and two AdamW moments per trained base weight, plus each LoRA weight with
   * its three. At the world pipeline's 1.4 M parameters the process's RSS is mostly onnxruntime's
   * own, so this is where the cut shows.
   */
  modelStateBytes: number;
}

/** Personalizes the world pipeline on one subject by one method (photos drawn into `<out>/photos`, the run in `<out>/run`). */
export async function personalizeWorldSubject(o: PersonalizeWorldOptions): Promise<WorldPersonalized> {
  const folder = openPipelineFolder(o.pipeline);
  const size = defaultImageSize(folder);
  const photos = path.join(o.out, 'photos');
  const photoFiles = await writeSubjectPhotos(o.subject, photos, { seed: o.photoSeed, size });
  const m = o.method;
  const options: PersonalizeOptions = {
    model: o.pipeline,
    photos,
    prompt: `a large ${SUBJECT_TOKEN} ${o.subject.noun}`,
    classPrompt: `a large ${o.subject.noun}`,
    out: path.join(o.out, 'run'),
    steps: o.steps,
    lr: m.lr ?? o.lr,
    classImages: o.classImages,
    seed: o.seed ?? 0,
    threads: o.threads,
    preset: m.preset,
    ...(m.rank !== undefined && { rank: m.rank }),
    ...(m.loraTargets && { loraTargets: [...m.loraTargets] }),
    ...(m.trainBase && { trainBase: [...m.trainBase] }),
    log: o.log ?? (() => {}),
    warn: o.log ?? (() => {}),
    progress: { write: () => true },
    ...o.extra,
  };
  const r = await personalize(options);
  const trainStage = r.stages.find((st) => st.name === 'train');
  if (!trainStage || !r.loss) throw new HollowcError('personalize ran no train stage', options.out);
  const p = r.manifest.parameters;
  return {
    run: options.out,
    prompt: options.prompt,
    classPrompt: options.classPrompt,
    photos: photoFiles,
    size,
    result: r,
    trainPeakRssBytes: trainStage.peakRssBytes,
    peakRssBytes: r.peakRssBytes,
    trainSeconds: trainStage.seconds,
    loss: { before: r.loss.before, after: r.loss.after },
    modelStateBytes: 4 * (p.heldDuringTraining + 3 * (p.trainedBase ?? 0) + 4 * p.lora),
  };
}

/** The manifest written beside a row's images, so anyone can score them again. */
export function writeImageManifest(file: string, record: object): void {
  writeFileAtomic(file, JSON.stringify(record, null, 2) + '\n');
}
