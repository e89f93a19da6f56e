/**
 * `hollowc personalize`: photos and a prompt in, a personalized LoRA, images and a report out —
 * the paper's workflow (4.3, 5.1) as one command on a pipeline folder. Stages, in order:
 *
 *   compile     the UNet and a spec (a preset, or --spec) -> run/compiled/
 *   prompts     text encoders on the prompt and the class prompt -> run/data/*_prompt.safetensors
 *   photos      photos decoded, centre-cropped, optionally mirrored, VAE-encoded -> run/data/latents/
 *   class       prior-preservation images: generated with the base pipeline (cached in
 *               run/class-images/) or read from --class-dir, VAE-encoded -> run/data/class_latents/
 *   store       precompute.onnx over instance and class samples -> run/compiled/store/
 *   train       grads.onnx steps (AdamW on the host) with checkpoints -> run/compiled/lora.safetensors
 *   export      run/lora.safetensors (diffusers) and run/lora-kohya.safetensors
 *   validation  the two-path infer.onnx on each validation prompt (and the base model, B = 0,
 *               on the first) -> run/images/*.png
 *   report      run/loss.svg and run/report.html
 *
 * Each stage has a key: a hash of its own inputs and the keys of the stages it reads from, kept in
 * run/personalize.json with whether it finished. A finished stage with the same key and its
 * outputs in place is reused; an unfinished one with the same key continues (the store appends
 * from its count, training resumes from its checkpoint, generated class images already on disk
 * are kept); a stage whose key changed starts over after removing its old outputs. Everything
 * each stage writes is deterministic in its inputs, so a killed run, rerun, ends with the same
 * files as one that was never interrupted. All inputs are checked before anything in run/ is
 * touched. Each stage opens its models, uses them and releases them before the next one starts;
 * its time and peak RSS (sampled during the stage) are printed and go in the report.
 */
import * as crypto from 'crypto';
import * as fs from 'fs';
import * as path from 'path';
import { Command, Option } from 'commander';
import sharp from 'sharp';
import { HollowcError } from '../compiler/errors';
import { lockFolder } from '../compiler/folder-lock';
import { CompileManifest, readManifest } from '../compiler/manifest';
import { writeFileAtomic } from '../compiler/serde';
import { FamilyName } from '../models/families';
import { Rng, fillNormal } from '../models/random';
import { CHECKPOINT_FILE, LOSS_LOG_FILE, TRAIN_DIR } from '../runtime/train/checkpoint';
import { exportLora } from '../runtime/train/export-lora';
import { ImageTensor, listImages, loadImage, savePng } from '../runtime/formats/images';
import { LORA_INIT_FILE } from '../runtime/train/lora-init';
import { readNpy, writeNpy } from '../runtime/formats/npy';
import { ModelComponent, PipelineFolder, openPipelineFolder } from '../runtime/text-to-image/pipeline-folder';
import { precompute } from '../runtime/store/precompute';
import { ProgressLine, ProgressStream, formatBytes } from '../runtime/progress';
import { LossPoint, ReportImage, ReportStage, writeLossSvg, writeReport } from '../runtime/personalize/report';
import { RssSampler } from '../runtime/rss';
import { float32Tensor, writeSafetensors } from '../runtime/formats/safetensors';
import { ExecutionProvider, SessionOptions } from '../runtime/ort/session';
import { Conditioning, Store } from '../runtime/store/store';
import { defaultImageSize, encodePrompts, textToImage, vaeScaleFactor } from '../runtime/text-to-image/text-to-image';
import { LORA_FILE, evaluateLoss, train } from '../runtime/train/train';
import { loadTrainingData, readConditioning } from '../runtime/store/training-data';
import { encodeImages } from '../runtime/text-to-image/vae';
import { checkSpecFile, compileSpec, loadUNet } from './compile';
import { epOption, fallbackOption, parseCount, parseNumber, parseSeed, reportProvider, threadsOption } from './options';

export const STATE_FILE = 'personalize.json';
export const DIFFUSERS_LORA = 'lora.safetensors';
export const KOHYA_LORA = 'lora-kohya.safetensors';
export const REPORT_FILE = 'report.html';
export const LOSS_SVG = 'loss.svg';
export const IMAGES_DIR = 'images';
const COMPILED = 'compiled';
const DATA = 'data';
const CLASS_IMAGES = 'class-images';
const SPEC_FILE = 'spec.hollow';
/** Class images generated per text-to-image call: bounds the UNet batch (2 rows per image with guidance). */
const CLASS_CHUNK = 4;

export interface PersonalizeOptions {
  model: string;
  photos: string;
  prompt: string;
  classPrompt: string;
  out: string;
  preset?: string;
  spec?: string;
  rank?: number;
  alpha?: number;
  steps?: number;
  lr?: number;
  samples?: number;
  classImages?: number;
  classDir?: string;
  priorWeight?: number;
  resolution?: number;
  flip?: boolean;
  validationPrompts?: string[];
  validationSteps?: number;
  classSteps?: number;
  guidance?: number;
  seed?: number;
  ep?: ExecutionProvider;
  fallbackToCpu?: boolean;
  threads?: number;
  /** Hears once per session, after its first run, which provider ran it (SessionTuning.report). */
  reportProvider?: (line: string) => void;
  /** stage lines (default stdout) */
  log?: (line: string) => void;
  /** warnings (default stderr) */
  warn?: (line: string) => void;
  /** progress bars (default stderr) */
  progress?: ProgressStream;
}

export interface StageResult {
  name: string;
  status: 'ran' | 'resumed' | 'reused';
  summary: string;
  seconds: number;
  peakRssBytes: number;
}

export interface PersonalizeResult {
  out: string;
  report: string;
  lora: { diffusers: string; kohya: string };
  images: string[];
  stages: StageResult[];
  peakRssBytes: number;
  loss?: { before: number; after: number; records: number };
  /** distance of the first validation prompt's latents to the subject (mean photo latent), personalized vs base */
  subject?: { base: number; personalized: number };
  manifest: CompileManifest;
}

interface StageRecord {
  key: string;
  done: boolean;
  summary?: string;
  seconds?: number;
  peakRssBytes?: number;
  data?: Record<string, unknown>;
}

interface RunState {
  version: 1;
  stages: Record<string, StageRecord>;
}

const sha = (x: unknown) =>
  crypto
    .createHash('sha256')
    .update(typeof x === 'string' ? x : JSON.stringify(x))
    .digest('hex');
const fileSha = (file: string) => crypto.createHash('sha256').update(fs.readFileSync(file)).digest('hex');

/** A model component's identity: its graph's bytes, and the size and time of its external weights (hashing GBs of weights would take longer than the stage). */
function componentId(c: ModelComponent): string {
  const data = c.data ? fs.statSync(c.data) : undefined;
  return sha({ graph: fileSha(c.model), data: data ? [data.size, data.mtimeMs] : null, config: c.config });
}

function dirId(dir: string): string {
  return sha(
    fs
      .readdirSync(dir)
      .sort()
      .filter((f) => fs.statSync(path.join(dir, f)).isFile())
      .map((f) => [f, fileSha(path.join(dir, f))]),
  );
}

function readState(out: string): RunState {
  const file = path.join(out, STATE_FILE);
  if (!fs.existsSync(file)) return { version: 1, stages: {} };
  try {
    const s = JSON.parse(fs.readFileSync(file, 'utf8')) as RunState;
    if (s.version === 1 && typeof s.stages === 'object' && s.stages) return s;
  } catch {
    // unreadable: start from scratch (every stage checks its own outputs)
  }
  return { version: 1, stages: {} };
}

function words(text: string): string[] {
  return text.toLowerCase().match(/[\p{L}\p{N}_]+/gu) ?? [];
}

/** The words of the prompt the class prompt lacks: the identifier ("sks"). */
export function identifierWords(prompt: string, classPrompt: string): string[] {
  const cls = new Set(words(classPrompt));
  return words(prompt).filter((w) => !cls.has(w));
}

function slug(text: string): string {
  return (
    text
      .toLowerCase()
      .replace(/[^a-z0-9]+/g, '-')
      .replace(/^-+|-+$/g, '')
      .slice(0, 48) || 'prompt'
  );
}

function mirror(img: ImageTensor): ImageTensor {
  const [, c, h, w] = img.dims;
  const out = new Float32Array(img.data.length);
  for (let k = 0; k < c; k++)
    for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) out[(k * h + y) * w + x] = img.data[(k * h + y) * w + (w - 1 - x)];
  return { data: out, dims: img.dims };
}

function stack(images: readonly ImageTensor[]): { data: Float32Array; dims: number[] } {
  const [, c, h, w] = images[0].dims;
  const plane = c * h * w;
  const data = new Float32Array(images.length * plane);
  images.forEach((im, i) => data.set(im.data, i * plane));
  return { data, dims: [images.length, c, h, w] };
}

function writeConditioning(file: string, c: Conditioning): void {
  const tensors = new Map([['encoder_hidden_states', float32Tensor(c.encoderHiddenStates.shape, c.encoderHiddenStates.data)]]);
  if (c.textEmbeds) tensors.set('text_embeds', float32Tensor(c.textEmbeds.shape, c.textEmbeds.data));
  writeSafetensors(file, tensors);
}

/** Latents [N, C, h, w] as one .npy per sample, named by index (natural order = sample order). */
function writeLatents(dir: string, latents: { data: Float32Array; shape: number[] }, start = 0): void {
  fs.mkdirSync(dir, { recursive: true });
  const [n, ...rest] = latents.shape;
  const size = rest.reduce((a, b) => a * b, 1);
  for (let i = 0; i < n; i++)
    writeNpy(path.join(dir, `${start + i}.npy`), { dtype: 'float32', shape: rest, data: latents.data.slice(i * size, (i + 1) * size) });
}

function countFiles(dir: string, ext: string): number {
  return fs.existsSync(dir) ? fs.readdirSync(dir).filter((f) => f.endsWith(ext)).length : 0;
}

/** The spec personalize compiles when no --spec is given. */
export function personalizeSpec(
  folder: PipelineFolder,
  o: { preset: string; rank: number; alpha: number; seed: number; latent: number[] },
): string {
  const T = folder.tokenizers[0].maxLength;
  const D = folder.unet.config.cross_attention_dim;
  if (typeof D !== 'number') throw new HollowcError('unet/config.json: cross_attention_dim is not a number', folder.dir);
  const lines = [
    '# written by hollowc personalize',
    `model ${folder.family}`,
    `hollow preset "${o.preset}"`,
    `shape sample [1, ${o.latent.join(', ')}]`,
    'shape timestep [1]',
    `shape encoder_hidden_states [1, ${T}, ${D}]`,
  ];
  if (folder.family === 'sdxl') {
    const cfg = folder.unet.config;
    const pooled = Number(cfg.projection_class_embeddings_input_dim) - 6 * Number(cfg.addition_time_embed_dim);
    if (!(pooled > 0))
      throw new HollowcError(
        'unet/config.json: cannot tell the pooled text embedding size (projection_class_embeddings_input_dim, addition_time_embed_dim)',
        folder.dir,
      );
    lines.push(`shape text_embeds [1, ${pooled}]`, 'shape time_ids [1, 6]');
  }
  lines.push(
    `lora rank ${o.rank} alpha ${o.alpha}`,
    `seed ${o.seed}`,
    // hollowc train runs grads.onnx with AdamW on the host (less memory); train.onnx (AdamW in the
    // graph, one session.run per step) is there for the browser page (hollowc web run/compiled)
    'emit precompute train grads infer',
    '',
  );
  return lines.join('\n');
}

/**
 * Fault injection for the kill tests: HOLLOWC_KILL_IN=<stage> SIGKILLs this process in the middle
 * of that stage (after some of its work is on disk, before it is recorded as done).
 */
function killPoint(stage: string): void {
  if (process.env.HOLLOWC_KILL_IN === stage) process.kill(process.pid, 'SIGKILL');
}

interface Stage {
  name: string;
  key: string;
  /** outputs in place for a reuse */
  valid(): boolean;
  /** removes what a fresh run of the stage replaces */
  clean(): void;
  /**
   * Whether a finished record under another key can be carried on instead of starting over
   * (training to more steps than last time continues from its last checkpoint).
   */
  continues?(record: StageRecord): boolean;
  /** `resumed` in the result: whether it continued earlier work (default: whether it was resuming) */
  run(resuming: boolean, record: StageRecord): Promise<{ summary: string; data?: Record<string, unknown>; resumed?: boolean }>;
}

export async function personalize(options: PersonalizeOptions): Promise<PersonalizeResult> {
  const log = options.log ?? ((l: string) => process.stdout.write(`${l}\n`));
  const warn = options.warn ?? ((l: string) => process.stderr.write(`${l}\n`));
  const progress = options.progress ?? process.stderr;
  const out = path.resolve(options.out);
  const runStarted = Date.now();

  // ---- every input checked before run/ is touched ----
  const folder = openPipelineFolder(options.model);
  const family: FamilyName = folder.family;
  if (!options.prompt.trim()) throw new HollowcError('--prompt is empty');
  if (!options.classPrompt.trim()) throw new HollowcError('--class-prompt is empty (the base path of Hollowed Net runs on it)');
  const steps = options.steps ?? 400;
  const lr = options.lr ?? 1e-4;
  const samples = options.samples ?? 200;
  const seed = options.seed ?? 0;
  const rank = options.rank ?? 4;
  const alpha = options.alpha ?? rank;
  // The class samples' loss weight is a per-sample input of the step graphs, so it is given to
  // training and changing it needs no new compile; without the flag, the spec's (default 1).
  const priorWeight = options.priorWeight;
  const flip = options.flip ?? false;
  const classSteps = options.classSteps ?? 25;
  const validationSteps = options.validationSteps ?? 25;
  const guidance = options.guidance ?? 7.5;
  const resolution = options.resolution ?? defaultImageSize(folder);
  const factor = vaeScaleFactor(folder);
  if (!(Number.isInteger(resolution) && resolution >= factor && resolution % factor === 0))
    throw new HollowcError(`--resolution must be a positive multiple of ${factor} (the VAE's factor), got ${resolution}`);
  for (const [flag, v] of [
    ['--steps', steps],
    ['--samples', samples],
    ['--rank', rank],
    ['--class-steps', classSteps],
    ['--validation-steps', validationSteps],
  ] as const) {
    if (!(Number.isInteger(v) && v > 0)) throw new HollowcError(`${flag} must be a positive integer, got ${v}`);
  }
  if (!(lr > 0 && Number.isFinite(lr))) throw new HollowcError(`--lr must be a finite number > 0, got ${lr}`);
  if (priorWeight !== undefined && !(priorWeight >= 0 && Number.isFinite(priorWeight)))
    throw new HollowcError(`--prior-weight must be a finite number >= 0, got ${priorWeight}`);
  if (options.classImages !== undefined && options.classDir !== undefined)
    throw new HollowcError('give --class-images or --class-dir, not both');
  if (options.spec && (options.preset || options.rank !== undefined || options.alpha !== undefined))
    throw new HollowcError('--spec sets the cut and the LoRA: --preset, --rank and --alpha go with the generated spec only');
  const validationPrompts = options.validationPrompts?.length ? options.validationPrompts : [options.prompt];
  const trainTuning = { intraOpThreads: options.threads, report: options.reportProvider };
  const session: SessionOptions = { ...trainTuning, ep: options.ep, fallbackToCpu: options.fallbackToCpu };

  const photoFiles = listImages(options.photos);
  const size = { width: resolution, height: resolution };
  const photos: ImageTensor[] = [];
  for (const f of photoFiles) photos.push(await loadImage(f, size)); // a corrupt photo fails here, naming its file
  const classFiles = options.classDir ? listImages(options.classDir) : [];
  const classDirImages: ImageTensor[] = [];
  for (const f of classFiles) classDirImages.push(await loadImage(f, size));
  const latent = [Number(folder.unet.config.in_channels ?? 4), resolution / factor, resolution / factor];
  const preset = options.preset ?? (family === 'sdxl' ? 'sdxl-mid' : '39.2%');
  const specText = options.spec ? fs.readFileSync(options.spec, 'utf8') : personalizeSpec(folder, { preset, rank, alpha, seed, latent });
  if (identifierWords(options.prompt, options.classPrompt).length === 0) {
    warn(
      `hollowc: warning: the prompt "${options.prompt}" has no word that the class prompt "${options.classPrompt}" lacks: without an identifier (such as "sks") the LoRA is trained onto the class itself`,
    );
  }

  const release = lockFolder(out, 'hollowc personalize', { create: true });
  const compiled = path.join(out, COMPILED);
  const dataDir = path.join(out, DATA);
  const classDir = path.join(out, CLASS_IMAGES);
  const imagesDir = path.join(out, IMAGES_DIR);
  const storeDir = path.join(compiled, 'store');
  const state = readState(out);
  const saveState = () => writeFileAtomic(path.join(out, STATE_FILE), JSON.stringify(state, null, 1));
  const results: StageResult[] = [];
  let processPeak = 0;
  try {
    // ---- keys ----
    const unetId = componentId(folder.unet);
    const textId = sha({ encoders: folder.textEncoders.map(componentId), tokenizers: folder.tokenizers.map((t) => dirId(t.dir)) });
    const vaeEncId = componentId(folder.vaeEncoder);
    const vaeDecId = componentId(folder.vaeDecoder);
    const keys: Record<string, string> = {};
    keys.compile = sha({ stage: 'compile', specText, unetId });
    keys.prompts = sha({ stage: 'prompts', textId, prompt: options.prompt, classPrompt: options.classPrompt });
    keys.photos = sha({ stage: 'photos', photos: photoFiles.map((f) => [path.basename(f), fileSha(f)]), resolution, flip, vaeEncId, seed });
    const classMode = options.classImages ? 'generate' : classFiles.length ? 'dir' : 'none';
    keys.class = sha({
      stage: 'class',
      classMode,
      ...(classMode === 'generate'
        ? {
            n: options.classImages,
            classPrompt: options.classPrompt,
            classSteps,
            guidance,
            unetId,
            textId,
            vaeDecId,
            scheduler: folder.scheduler,
          }
        : {}),
      ...(classMode === 'dir' ? { files: classFiles.map((f) => [path.basename(f), fileSha(f)]) } : {}),
      resolution,
      vaeEncId,
      seed,
    });
    keys.store = sha({
      stage: 'store',
      compile: keys.compile,
      prompts: keys.prompts,
      photos: keys.photos,
      class: keys.class,
      samples,
      seed,
    });
    // without the steps: a run that trained fewer steps under the same line continues from its checkpoint
    const trainLine = sha({ stage: 'train', store: keys.store, lr, seed, priorWeight: priorWeight ?? 'spec' });
    keys.train = sha({ line: trainLine, steps });
    keys.export = sha({ stage: 'export', train: keys.train });
    keys.validation = sha({
      stage: 'validation',
      export: keys.export,
      validationPrompts,
      validationSteps,
      guidance,
      seed,
      resolution,
      textId,
      vaeDecId,
      classPrompt: options.classPrompt,
    });

    let manifest: CompileManifest | undefined;
    const manifestNow = () => (manifest ??= readManifest(compiled));
    const rmAll = (...p: string[]) => p.forEach((f) => fs.rmSync(f, { recursive: true, force: true }));
    const instanceCount = photos.length * (flip ? 2 : 1);
    const classCount = classMode === 'generate' ? options.classImages! : classFiles.length;
    let lossInfo: PersonalizeResult['loss'];
    let subject: PersonalizeResult['subject'];
    const images: string[] = [];

    const stages: Stage[] = [
      {
        name: 'compile',
        key: keys.compile,
        valid: () => fs.existsSync(path.join(compiled, 'manifest.json')) && fs.existsSync(path.join(compiled, LORA_INIT_FILE)),
        clean: () => rmAll(compiled),
        run: async () => {
          const specFile = path.join(out, SPEC_FILE);
          writeFileAtomic(specFile, specText);
          const unet = loadUNet(folder.unet.model);
          const m = compileSpec(unet, checkSpecFile(unet, specFile), { out: compiled });
          manifest = m;
          killPoint('compile');
          const cut = m.cut ? `hollowed ${m.cut.hollowed.join(' ')} (${(100 * m.cut.fraction).toFixed(1)}% of the UNet)` : 'no hollow';
          return {
            summary: `${cut}; training holds ${m.parameters.heldDuringTraining.toLocaleString('en-US')} of ${m.parameters.full.toLocaleString('en-US')} parameters + ${m.parameters.lora.toLocaleString('en-US')} LoRA (rank ${m.lora.rank}, alpha ${m.lora.alpha})`,
          };
        },
      },
      {
        name: 'prompts',
        key: keys.prompts,
        valid: () => ['instance_prompt', 'class_prompt'].every((n) => fs.existsSync(path.join(dataDir, `${n}.safetensors`))),
        clean: () => ['instance_prompt', 'class_prompt'].forEach((n) => rmAll(path.join(dataDir, `${n}.safetensors`))),
        run: async () => {
          const [inst, cls] = await encodePrompts(folder, [options.prompt, options.classPrompt], session);
          fs.mkdirSync(dataDir, { recursive: true });
          writeConditioning(path.join(dataDir, 'instance_prompt.safetensors'), inst);
          killPoint('prompts');
          writeConditioning(path.join(dataDir, 'class_prompt.safetensors'), cls);
          return {
            summary: `encoded the prompt and the class prompt with ${folder.textEncoders.length} text encoder(s): [${inst.encoderHiddenStates.shape.join(', ')}]${inst.textEmbeds ? ` + pooled [${inst.textEmbeds.shape}]` : ''}`,
          };
        },
      },
      {
        name: 'photos',
        key: keys.photos,
        valid: () => countFiles(path.join(dataDir, 'latents'), '.npy') === instanceCount,
        clean: () => rmAll(path.join(dataDir, 'latents')),
        run: async () => {
          const batch = stack(flip ? photos.flatMap((p) => [p, mirror(p)]) : photos);
          const z = await encodeImages(folder, batch, { session, seed });
          writeLatents(path.join(dataDir, 'latents'), z);
          killPoint('photos');
          return {
            summary: `VAE-encoded ${photos.length} photo(s)${flip ? ' and their mirror images' : ''} at ${resolution}x${resolution} into ${z.shape[0]} latents [${z.shape.slice(1).join(', ')}]`,
          };
        },
      },
      {
        name: 'class images',
        key: keys.class,
        valid: () =>
          countFiles(path.join(dataDir, 'class_latents'), '.npy') === classCount &&
          (classMode !== 'generate' || countFiles(classDir, '.png') === classCount),
        clean: () => rmAll(path.join(dataDir, 'class_latents'), classDir),
        run: async (resuming) => {
          rmAll(path.join(dataDir, 'class_latents'));
          if (classMode === 'none') return { summary: 'none (no --class-images or --class-dir): the store holds instance samples only' };
          let tensors: ImageTensor[];
          let made = 0;
          if (classMode === 'generate') {
            const n = options.classImages!;
            const files = Array.from({ length: n }, (_, i) => path.join(classDir, `${String(i).padStart(4, '0')}.png`));
            if (!resuming) rmAll(classDir);
            fs.mkdirSync(classDir, { recursive: true });
            // fixed chunks of CLASS_CHUNK images: a chunk is made whole (its batch decides its values), and kept once all its images are on disk
            const per = latent.reduce((a, b) => a * b, 1);
            const chunks = Array.from({ length: Math.ceil(n / CLASS_CHUNK) }, (_, c) =>
              files.slice(c * CLASS_CHUNK, (c + 1) * CLASS_CHUNK).map((_, k) => c * CLASS_CHUNK + k),
            );
            const todo = chunks.filter((chunk) => chunk.some((i) => !fs.existsSync(files[i])));
            const already = n - todo.reduce((a, c) => a + c.length, 0);
            const bar = todo.length ? new ProgressLine('class images', n, progress, undefined, already) : undefined;
            for (const chunk of todo) {
              const init = new Float32Array(chunk.length * per);
              chunk.forEach((i, k) => {
                const noise = new Float32Array(per);
                fillNormal(new Rng(seed, `personalize/class/${i}`), noise, 1);
                init.set(noise, k * per);
              });
              const r = await textToImage({
                folder,
                prompt: options.classPrompt,
                width: resolution,
                height: resolution,
                steps: classSteps,
                guidance,
                seed,
                numImages: chunk.length,
                initLatents: init,
                session,
              });
              for (let k = 0; k < chunk.length; k++) await savePng(files[chunk[k]], r.images!.data, r.images!.dims, k);
              made += chunk.length;
              bar?.update(already + made);
              killPoint('class images');
            }
            bar?.finish();
            tensors = [];
            for (const f of files) tensors.push(await loadImage(f, size));
          } else tensors = classDirImages;
          const z = await encodeImages(folder, stack(tensors), { session, seed: seed + 1 });
          writeLatents(path.join(dataDir, 'class_latents'), z);
          const what =
            classMode === 'generate'
              ? `generated ${made} class image(s) with the base pipeline on "${options.classPrompt}" (${tensors.length - made} already there, ${classSteps} steps)`
              : `read ${tensors.length} class image(s) from ${options.classDir}`;
          return { summary: `${what}; VAE-encoded them into ${z.shape[0]} class latents` };
        },
      },
      {
        name: 'store',
        key: keys.store,
        valid: () => {
          if (!Store.exists(storeDir)) return false;
          const { store } = Store.open(storeDir, { readOnly: true });
          try {
            return store.count === samples;
          } finally {
            store.close();
          }
        },
        clean: () => rmAll(storeDir, path.join(compiled, TRAIN_DIR), path.join(compiled, LORA_FILE)),
        run: async () => {
          const data = loadTrainingData(dataDir);
          const bar = new ProgressLine('precompute', samples, progress);
          const r = await precompute({
            out: compiled,
            data,
            count: samples,
            seed,
            ep: options.ep,
            fallbackToCpu: options.fallbackToCpu,
            session: trainTuning,
            onRecord: (done) => {
              bar.update(done);
              if (done === Math.ceil(samples / 2)) killPoint('store');
            },
          });
          bar.finish();
          const kinds = data.classLatents.length
            ? `${data.instanceLatents.length} instance and ${data.classLatents.length} class latents, alternating`
            : `${data.instanceLatents.length} instance latents`;
          return {
            summary: `precomputed ${r.added} sample(s) (${r.existing} already there; ${kinds}): ${formatBytes(r.recordBytes)} each, ${formatBytes(r.totalBytes)} in all`,
          };
        },
      },
      {
        name: 'train',
        key: keys.train,
        valid: () => fs.existsSync(path.join(compiled, LORA_FILE)),
        clean: () => rmAll(path.join(compiled, TRAIN_DIR), path.join(compiled, LORA_FILE)),
        continues: (record) =>
          record.done &&
          record.data?.trainLine === trainLine &&
          typeof record.data?.stepsDone === 'number' &&
          record.data.stepsDone < steps &&
          fs.existsSync(path.join(compiled, TRAIN_DIR, CHECKPOINT_FILE)),
        run: async (resuming, record) => {
          const resume = resuming && fs.existsSync(path.join(compiled, TRAIN_DIR, CHECKPOINT_FILE));
          const { store } = Store.open(storeDir, { readOnly: true });
          const records = store.count;
          store.close();
          // the evaluation costs a training step per batch, twice: about a quarter of the run, at most 16;
          // a run carried on to more steps keeps the batches its loss before was measured on
          const batches =
            typeof record.data?.evalBatches === 'number'
              ? record.data.evalBatches
              : Math.min(records, Math.max(2, Math.min(16, Math.floor(steps / 4))));
          // the loss before: on the training session when starting fresh; once more on a resume
          let before = typeof record.data?.lossBefore === 'number' ? (record.data.lossBefore as number) : undefined;
          if (resume && before === undefined)
            before = await evaluateLoss({ out: compiled, batches, ep: options.ep, session: trainTuning, instanceOnly: true, priorWeight });
          const bar = new ProgressLine('step', steps, progress, undefined, 0);
          const r = await train({
            out: compiled,
            steps,
            lr,
            resume,
            restart: !resume,
            checkpointEvery: Math.max(1, Math.ceil(steps / 10)),
            ep: options.ep,
            fallbackToCpu: options.fallbackToCpu,
            session: trainTuning,
            priorWeight,
            evaluate: { batches, instanceOnly: true },
            onStep: (s) => {
              bar.update(s.step, { loss: s.loss.toFixed(4) });
              if (s.step === Math.ceil(steps / 2) + 1) killPoint('train');
            },
          });
          bar.finish();
          before = resume ? before! : r.evaluation!.before;
          lossInfo = { before, after: r.evaluation!.after, records: r.evaluation!.batches };
          return {
            summary: `${resume ? `resumed at step ${r.startStep}, ` : ''}trained to step ${r.step} at lr ${lr} (${r.stepSeconds > 0 ? ((r.step - r.startStep) / r.stepSeconds).toFixed(2) : '-'} it/s); loss on ${lossInfo.records} instance samples ${before.toFixed(5)} -> ${lossInfo.after.toFixed(5)}`,
            data: {
              lossBefore: before,
              lossAfter: lossInfo.after,
              lossRecords: lossInfo.records,
              evalBatches: batches,
              trainLine,
              stepsDone: r.step,
            },
            resumed: resume,
          };
        },
      },
      {
        name: 'export',
        key: keys.export,
        valid: () => [DIFFUSERS_LORA, KOHYA_LORA].every((f) => fs.existsSync(path.join(out, f))),
        clean: () => rmAll(path.join(out, DIFFUSERS_LORA), path.join(out, KOHYA_LORA)),
        run: async () => {
          const d = exportLora({ out: compiled, format: 'diffusers', output: path.join(out, DIFFUSERS_LORA) });
          killPoint('export');
          exportLora({ out: compiled, format: 'kohya', output: path.join(out, KOHYA_LORA) });
          const m = manifestNow();
          return {
            summary: `${DIFFUSERS_LORA} (diffusers, scale ${m.lora.alpha}/${m.lora.rank} folded in) and ${KOHYA_LORA} (kohya): ${d.modules} modules, ${d.parameters.toLocaleString('en-US')} parameters`,
          };
        },
      },
      {
        name: 'validation',
        key: keys.validation,
        valid: () =>
          validationPrompts.every((p, i) => fs.existsSync(path.join(imagesDir, `${i}-${slug(p)}.png`))) &&
          fs.existsSync(path.join(imagesDir, `0-${slug(validationPrompts[0])}-base.png`)),
        clean: () => rmAll(imagesDir),
        run: async () => {
          fs.mkdirSync(imagesDir, { recursive: true });
          const classConditioning = readConditioning(path.join(dataDir, 'class_prompt.safetensors'));
          const one = async (prompt: string, lora: string, file: string) => {
            const bar = new ProgressLine('denoise', validationSteps, progress);
            const r = await textToImage({
              folder,
              prompt,
              width: resolution,
              height: resolution,
              steps: validationSteps,
              guidance,
              seed,
              numImages: 1,
              run: { out: compiled, lora, classConditioning },
              session,
              onStep: (i) => bar.update(i),
            });
            bar.finish();
            await savePng(file, r.images!.data, r.images!.dims, 0);
            images.push(file);
            killPoint('validation');
            return r.latents.data;
          };
          const personalized: Float32Array[] = [];
          for (let i = 0; i < validationPrompts.length; i++)
            personalized.push(
              await one(
                validationPrompts[i],
                path.join(compiled, LORA_FILE),
                path.join(imagesDir, `${i}-${slug(validationPrompts[i])}.png`),
              ),
            );
          const base = await one(
            validationPrompts[0],
            path.join(compiled, LORA_INIT_FILE),
            path.join(imagesDir, `0-${slug(validationPrompts[0])}-base.png`),
          );
          // the subject: the mean of the photos' latents
          const latentFiles = fs.readdirSync(path.join(dataDir, 'latents')).filter((f) => f.endsWith('.npy'));
          const mean = new Float32Array(base.length);
          for (const f of latentFiles) {
            const a = readNpy(path.join(dataDir, 'latents', f)).data as Float32Array;
            for (let k = 0; k < mean.length; k++) mean[k] += a[k] / latentFiles.length;
          }
          const dist = (z: Float32Array) => Math.sqrt(z.reduce((acc, v, k) => acc + (v - mean[k]) ** 2, 0) / z.length);
          subject = { base: dist(base), personalized: dist(personalized[0]) };
          return {
            summary: `${validationPrompts.length} personalized image(s) and 1 base image (B = 0), ${validationSteps} steps, guidance ${guidance}; RMS distance of the latents to the subject: base ${subject.base.toFixed(4)}, personalized ${subject.personalized.toFixed(4)}`,
            data: { subject },
          };
        },
      },
    ];

    for (let i = 0; i < stages.length; i++) {
      const s = stages[i];
      const rec = state.stages[s.name];
      const label = `[${i + 1}/${stages.length + 1}] ${s.name}`;
      if (rec && rec.key === s.key && rec.done && s.valid()) {
        results.push({
          name: s.name,
          status: 'reused',
          summary: rec.summary ?? '',
          seconds: rec.seconds ?? 0,
          peakRssBytes: rec.peakRssBytes ?? 0,
        });
        log(`${label}: reused (inputs unchanged): ${rec.summary ?? ''}`);
        if (s.name === 'train' && typeof rec.data?.lossBefore === 'number')
          lossInfo = {
            before: rec.data.lossBefore as number,
            after: rec.data.lossAfter as number,
            records: rec.data.lossRecords as number,
          };
        if (s.name === 'validation' && rec.data?.subject) subject = rec.data.subject as PersonalizeResult['subject'];
        continue;
      }
      const resuming = !!rec && rec.key === s.key && !rec.done;
      const continuing = !resuming && !!rec && !!s.continues?.(rec);
      if (!resuming && !continuing) s.clean();
      const record: StageRecord = resuming ? rec : continuing ? { key: s.key, done: false, data: rec.data } : { key: s.key, done: false };
      state.stages[s.name] = record;
      saveState();
      const sampler = new RssSampler();
      const started = Date.now();
      let r: Awaited<ReturnType<Stage['run']>>;
      try {
        r = await s.run(resuming || continuing, record);
      } finally {
        processPeak = Math.max(processPeak, sampler.stop());
      }
      const seconds = (Date.now() - started) / 1000;
      const peak = sampler.peak;
      state.stages[s.name] = {
        key: s.key,
        done: true,
        summary: r.summary,
        seconds,
        peakRssBytes: peak,
        data: { ...record.data, ...r.data },
      };
      saveState();
      results.push({ name: s.name, status: (r.resumed ?? resuming) ? 'resumed' : 'ran', summary: r.summary, seconds, peakRssBytes: peak });
      log(`${label}: ${r.summary}  (${seconds.toFixed(1)} s, peak RSS ${formatBytes(peak)})`);
    }

    // ---- report (always rewritten: it is cheap) ----
    const reportSampler = new RssSampler();
    const reportStarted = Date.now();
    const m = manifestNow();
    const lossPoints: LossPoint[] = fs
      .readFileSync(path.join(compiled, TRAIN_DIR, LOSS_LOG_FILE), 'utf8')
      .split('\n')
      .filter((l) => l.trim())
      .map((l) => JSON.parse(l) as LossPoint);
    writeLossSvg(path.join(out, LOSS_SVG), lossPoints, `training loss, ${lossPoints.length} steps`);
    const thumb = async (file: string) =>
      `data:image/png;base64,${(await sharp(file).resize(256, 256, { fit: 'inside' }).png().toBuffer()).toString('base64')}`;
    const photoImages: ReportImage[] = [];
    for (const f of photoFiles) photoImages.push({ src: await thumb(f), caption: path.basename(f) });
    const rel = (f: string) => path.relative(out, f).split(path.sep).join('/');
    const validation = validationPrompts.map((p, i) => ({
      prompt: p,
      images: [
        { src: rel(path.join(imagesDir, `${i}-${slug(p)}.png`)), caption: 'personalized' },
        ...(i === 0 ? [{ src: rel(path.join(imagesDir, `0-${slug(p)}-base.png`)), caption: 'base model (LoRA B = 0), same seed' }] : []),
      ],
    }));
    images.splice(0, images.length, ...validation.flatMap((v) => v.images.map((im) => path.join(out, im.src))));
    const classImages: ReportImage[] =
      classMode === 'generate'
        ? fs
            .readdirSync(classDir)
            .filter((f) => f.endsWith('.png'))
            .sort()
            .slice(0, 8)
            .map((f) => ({ src: rel(path.join(classDir, f)), caption: f }))
        : [];
    const notes: string[] = [];
    if (lossInfo)
      notes.push(
        `Loss on ${lossInfo.records} precomputed instance samples (the photos), same noise and timesteps: ${lossInfo.before.toFixed(5)} with the initial LoRA (B = 0, the base model), ${lossInfo.after.toFixed(5)} after training (${(100 * (1 - lossInfo.after / lossInfo.before)).toFixed(1)}% lower).`,
      );
    if (subject)
      notes.push(
        `RMS distance of the first validation prompt's final latents to the subject (the mean latent of the photos), same seed: base model ${subject.base.toFixed(4)}, personalized ${subject.personalized.toFixed(4)} (${(100 * (1 - subject.personalized / subject.base)).toFixed(1)}% closer).`,
      );
    const reportStage: ReportStage = { name: 'report', status: 'ran', summary: `${LOSS_SVG} and ${REPORT_FILE}` };
    const allStages: ReportStage[] = [...results, reportStage];
    const writeIt = () =>
      writeReport(path.join(out, REPORT_FILE), {
        title: `hollowc personalize: "${options.prompt}"`,
        settings: [
          ['model', `${folder.dir} (${family}, ${m.parameters.full.toLocaleString('en-US')} UNet parameters)`],
          ['photos', `${photoFiles.length} in ${path.resolve(options.photos)}${flip ? ', and their mirror images' : ''}`],
          ['prompt', options.prompt],
          ['class prompt', options.classPrompt],
          ['cut', options.spec ? `--spec ${options.spec}` : `preset ${preset}`],
          ['hollowed', m.cut ? `${m.cut.hollowed.join(' ')} (${(100 * m.cut.fraction).toFixed(1)}%)` : 'none'],
          [
            'held during training',
            `${m.parameters.heldDuringTraining.toLocaleString('en-US')} base + ${m.parameters.lora.toLocaleString('en-US')} LoRA parameters`,
          ],
          ['LoRA', `rank ${m.lora.rank}, alpha ${m.lora.alpha}, ${m.lora.targets.filter((t) => t.trained).length} trained layers`],
          ['steps / lr', `${steps} / ${lr}`],
          ['samples', String(samples)],
          [
            'class images',
            classMode === 'generate'
              ? `${classCount} generated (${classSteps} steps)`
              : classMode === 'dir'
                ? `${classCount} from ${options.classDir}`
                : 'none',
          ],
          ['prior weight', String(priorWeight ?? m.training.priorWeight)],
          ['resolution', `${resolution}x${resolution} (latents ${latent.slice(1).join('x')})`],
          ['validation', `${validationPrompts.length} prompt(s), ${validationSteps} steps, guidance ${guidance}`],
          ['seed / ep', `${seed} / ${options.ep ?? 'cpu'}`],
        ],
        stages: allStages,
        lossSvgFile: LOSS_SVG,
        notes,
        photos: photoImages,
        validation,
        classImages,
        files: [
          [DIFFUSERS_LORA, 'diffusers: pipe.load_lora_weights (0.21 and current)'],
          [KOHYA_LORA, 'kohya: A1111, ComfyUI'],
          [LOSS_SVG, 'loss per step'],
          [`${COMPILED}/`, 'the compiled artifacts, the store, the checkpoints'],
        ],
        peakRssBytes: Math.max(processPeak, reportSampler.peak),
      });
    writeIt();
    reportStage.seconds = (Date.now() - reportStarted) / 1000;
    reportStage.peakRssBytes = reportSampler.stop();
    writeIt();
    results.push({
      name: 'report',
      status: 'ran',
      summary: reportStage.summary,
      seconds: reportStage.seconds,
      peakRssBytes: reportStage.peakRssBytes,
    });
    log(`[${stages.length + 1}/${stages.length + 1}] report: ${path.join(out, REPORT_FILE)}  (${reportStage.seconds.toFixed(1)} s)`);
    const peak = Math.max(processPeak, reportStage.peakRssBytes);
    const top = results
      .filter((r) => r.status !== 'reused')
      .reduce<StageResult | undefined>((a, r) => (!a || r.peakRssBytes > a.peakRssBytes ? r : a), undefined);
    log(
      `done in ${((Date.now() - runStarted) / 1000).toFixed(1)} s, peak RSS ${formatBytes(peak)}${top ? ` (in ${top.name})` : ''}; open ${path.join(out, REPORT_FILE)}`,
    );
    return {
      out,
      report: path.join(out, REPORT_FILE),
      lora: { diffusers: path.join(out, DIFFUSERS_LORA), kohya: path.join(out, KOHYA_LORA) },
      images,
      stages: results,
      peakRssBytes: peak,
      loss: lossInfo,
      subject,
      manifest: m,
    };
  } finally {
    release();
  }
}

const collect = (value: string, previous: string[] = []) => [...previous, value];

export function registerPersonalize(program: Command): void {
  program
    .command('personalize')
    .description('photos and a prompt in, a personalized LoRA (diffusers + kohya), validation images and report.html out')
    .requiredOption('--model <folder>', 'pipeline folder (optimum ONNX layout, or hollowc model build --pipeline)')
    .requiredOption('--photos <dir>', 'folder of photos of the subject (JPEG, PNG, WebP)')
    .requiredOption('--prompt <text>', 'the personalized prompt, with an identifier (e.g. "a photo of sks dog")')
    .requiredOption('--class-prompt <text>', 'the class prompt (e.g. "a photo of a dog"): the base path runs on it')
    .requiredOption('-o, --out <dir>', 'run folder (reruns reuse what is done there)')
    .option('--preset <name>', 'hollow preset (default "39.2%"; SDXL: "sdxl-mid")')
    .option('--spec <file>', '.hollow spec instead of a preset')
    .option('--rank <n>', 'LoRA rank', parseCount)
    .option('--alpha <n>', 'LoRA alpha (default: the rank)', parseNumber)
    .option('--steps <n>', 'training steps', parseCount, 400)
    .option('--lr <x>', 'learning rate', parseNumber, 1e-4)
    .option('--samples <n>', 'precomputed samples (paper: 200)', parseCount, 200)
    .option('--class-images <n>', 'prior-preservation images to generate with the base pipeline (cached in the run folder)', parseCount)
    .option('--class-dir <dir>', 'prior-preservation images to use instead')
    .option('--prior-weight <x>', "weight of the class samples' loss (default: the spec's loss prior_weight, 1)", parseNumber)
    .option('--resolution <px>', 'training and image size (default: the UNet sample_size times the VAE factor)', parseCount)
    .option('--flip', 'also train on the mirror image of each photo')
    .option('--validation-prompt <text>', 'a prompt for the validation images (repeatable; default: --prompt)', collect)
    .option('--validation-steps <n>', 'denoising steps of the validation images', parseCount, 25)
    .option('--class-steps <n>', 'denoising steps of generated class images', parseCount, 25)
    .option('--guidance <x>', 'classifier-free guidance of generated images', parseNumber, 7.5)
    .option('--seed <n>', 'seed of everything random', parseSeed, 0)
    .addOption(epOption())
    .addOption(fallbackOption())
    .addOption(threadsOption())
    .addOption(new Option('--quiet', 'no progress bars'))
    .action(async (o: Record<string, unknown>) => {
      await personalize({
        model: o.model as string,
        photos: o.photos as string,
        prompt: o.prompt as string,
        classPrompt: o.classPrompt as string,
        out: o.out as string,
        preset: o.preset as string | undefined,
        spec: o.spec as string | undefined,
        rank: o.rank as number | undefined,
        alpha: o.alpha as number | undefined,
        steps: o.steps as number,
        lr: o.lr as number,
        samples: o.samples as number,
        classImages: o.classImages as number | undefined,
        classDir: o.classDir as string | undefined,
        priorWeight: o.priorWeight as number | undefined,
        resolution: o.resolution as number | undefined,
        flip: !!o.flip,
        validationPrompts: o.validationPrompt as string[] | undefined,
        validationSteps: o.validationSteps as number,
        classSteps: o.classSteps as number,
        guidance: o.guidance as number,
        seed: o.seed as number,
        ep: o.ep as ExecutionProvider,
        fallbackToCpu: !!o.cpuFallback,
        threads: o.threads as number | undefined,
        reportProvider,
        progress: o.quiet ? { write: () => true } : undefined,
      });
    });
}
