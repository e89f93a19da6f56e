/**
 * The inputs of `hollowc precompute`: latents (VAE output times the scaling factor) and text
 * embeddings, as files. A data folder looks like this:
 *
 *   samples/
 *     latents/*.npy                  one latent per file, [4, h, w] or [1, 4, h, w]   (or:
 *     latents.npy | latents.safetensors   one batch [N, 4, h, w]; safetensors key `latents`)
 *     instance_prompt.npy            encoder_hidden_states of the personalized prompt, [T, D] or [1, T, D]
 *     class_prompt.npy               the same for the class prompt ("a photo of a dog")
 *     class_latents/*.npy            optional: prior-preservation samples of the class
 *                                    (or class_latents.npy / .safetensors, a batch)
 *     time_ids.npy                   SDXL only, optional: [6] (default: 8h, 8w, 0, 0, 8h, 8w)
 *
 * SDXL prompts also need the pooled embedding: give `<name>.text_embeds.npy` [P] next to
 * `<name>.npy`, or one `<name>.safetensors` with keys `encoder_hidden_states` and `text_embeds`.
 * `--data` may also be a single latents batch file; the prompts then come from the command line.
 * Files are taken in natural name order (`2.npy` before `10.npy`); a sample's id is its position.
 */
import * as crypto from 'crypto';
import * as fs from 'fs';
import * as path from 'path';
import { HollowcError } from '../../compiler/errors';
import { NpyArray, readNpy, writeNpy } from '../formats/npy';
import { float32Tensor, readSafetensors, toFloat32, writeSafetensors } from '../formats/safetensors';
import type { Conditioning } from '../sampling/conditioning';

export interface Latent {
  name: string;
  /** The file it was read from (a batch file holds several). */
  file: string;
  shape: number[];
  data: Float32Array;
}

/**
 * A captioned set (training a model from scratch): every instance latent with its own caption.
 * The store keeps each caption's conditioning once and each record names its caption.
 */
export interface Captions {
  /** One conditioning per distinct caption. */
  table: Conditioning[];
  /** The caption texts, in table order (the store header lists them). */
  texts: string[];
  /** `ofSample[i]`: the table index of instance latent i's caption. */
  ofSample: number[];
  /**
   * The unconditional caption (the empty prompt) and the share of records that train on it
   * instead of their own caption, so the model also learns the unconditional prediction that
   * classifier-free guidance needs.
   */
  dropout?: { index: number; rate: number };
}

export interface TrainingData {
  instanceLatents: Latent[];
  classLatents: Latent[];
  instance: Conditioning;
  class: Conditioning;
  timeIds?: Float32Array;
  /** A captioned set: then `instance` and `class` are the first caption's conditioning, unused by records. */
  captions?: Captions;
  /** Where each piece came from, for messages and the store header. */
  sources: { instance: string; class: string; latents: string; classLatents?: string; timeIds?: string };
  /** sha256 over every array read (names, shapes, values). */
  fingerprint: string;
}

export interface DataOptions {
  instancePrompt?: string;
  classPrompt?: string;
  classLatents?: string;
  timeIds?: string;
}

const naturalOrder = (a: string, b: string) => a.localeCompare(b, 'en', { numeric: true });

function toF32(a: NpyArray, label: string): Float32Array {
  if (a.data instanceof Float32Array) return finite(a.data, label);
  if (a.data instanceof Float64Array) return finite(Float32Array.from(a.data), label);
  throw new HollowcError(`expected float32 or float64 values, found ${a.dtype}`, label);
}

/** A NaN or an infinity in the data would turn every loss it reaches into NaN, many steps later. */
function finite(values: Float32Array, label: string): Float32Array {
  const i = values.findIndex((v) => !Number.isFinite(v));
  if (i >= 0) throw new HollowcError(`value ${i} is ${values[i]}: expected finite numbers`, label);
  return values;
}

const IMAGE_FILE = /\.(jpe?g|png|webp)$/i;

/** A file where latents were expected, with what to do about it (images: `hollowc encode`). */
function notLatents(file: string, inFolder: boolean): HollowcError {
  if (IMAGE_FILE.test(file))
    return new HollowcError('is an image, not a latent: turn images into latents with hollowc encode --model <pipeline folder>', file);
  return new HollowcError(
    inFolder
      ? 'is not a .npy latent (a latents folder holds .npy files only)'
      : 'expected a .npy or .safetensors latents batch (or a data folder)',
    file,
  );
}

/**
 * A captioned set as training data: `latents[i]` shows `captions.texts[captions.ofSample[i]]`.
 * Checked here: one latent shape, one conditioning shape, every index in the table.
 */
export function captionedTrainingData(latents: Latent[], captions: Captions, source: string): TrainingData {
  if (!latents.length) throw new HollowcError('a captioned set needs at least one latent', source);
  if (captions.ofSample.length !== latents.length)
    throw new HollowcError(`${latents.length} latents but ${captions.ofSample.length} caption indices`, source);
  if (captions.texts.length !== captions.table.length)
    throw new HollowcError(`${captions.table.length} caption conditionings but ${captions.texts.length} texts`, source);
  const shape = latents[0].shape.join();
  const odd = latents.find((l) => l.shape.join() !== shape);
  if (odd)
    throw new HollowcError(
      `latent ${odd.name} is [${odd.shape}], ${latents[0].name} [${latents[0].shape}]: all samples need one shape`,
      source,
    );
  const ehs = captions.table[0].encoderHiddenStates.shape.join();
  const te = captions.table[0].textEmbeds?.shape.join();
  const badCaption = captions.table.findIndex((c) => c.encoderHiddenStates.shape.join() !== ehs || c.textEmbeds?.shape.join() !== te);
  if (badCaption >= 0)
    throw new HollowcError(`caption ${JSON.stringify(captions.texts[badCaption])} has another conditioning shape than the first`, source);
  const badIndex = [...captions.ofSample, ...(captions.dropout ? [captions.dropout.index] : [])].find(
    (k) => !(Number.isInteger(k) && k >= 0 && k < captions.table.length),
  );
  if (badIndex !== undefined) throw new HollowcError(`caption index ${badIndex} is outside the ${captions.table.length} captions`, source);
  if (captions.dropout && !(captions.dropout.rate >= 0 && captions.dropout.rate < 1))
    throw new HollowcError(`the caption dropout rate must be in [0, 1), got ${captions.dropout.rate}`, source);
  const hash = crypto.createHash('sha256');
  const add = (label: string, values: Float32Array) => {
    hash.update(label);
    hash.update(new Uint8Array(values.buffer, values.byteOffset, values.byteLength));
  };
  latents.forEach((l, i) => add(`latent:${l.name}[${l.shape}]:caption ${captions.ofSample[i]}`, l.data));
  captions.table.forEach((c, k) => {
    add(`caption ${k} ${JSON.stringify(captions.texts[k])}[${c.encoderHiddenStates.shape}]`, c.encoderHiddenStates.data);
    if (c.textEmbeds) add(`caption ${k} te`, c.textEmbeds.data);
  });
  hash.update(JSON.stringify(captions.dropout ?? null));
  return {
    instanceLatents: latents,
    classLatents: [],
    instance: captions.table[0],
    class: captions.table[0],
    captions,
    sources: { instance: source, class: source, latents: source },
    fingerprint: hash.digest('hex'),
  };
}

/** Latents from a folder of .npy files (nothing else) or one batch file (.npy or .safetensors). */
export function readLatents(source: string): Latent[] {
  const stat = statOrThrow(source);
  if (stat.isDirectory()) {
    const entries = fs.readdirSync(source).filter((f) => !f.startsWith('.'));
    // another file here was meant as a sample too: skipping it would train on less data, silently
    const stray = entries.find((f) => !f.endsWith('.npy'));
    if (stray) throw notLatents(path.join(source, stray), true);
    const files = entries.sort(naturalOrder);
    if (!files.length) throw new HollowcError('no .npy latents in this folder', source);
    return files.map((f) => {
      const file = path.join(source, f);
      const a = readNpy(file);
      const shape = a.shape.length === 4 && a.shape[0] === 1 ? a.shape.slice(1) : a.shape;
      if (shape.length !== 3) throw new HollowcError(`a latent must be [C, h, w] or [1, C, h, w], found [${a.shape}]`, file);
      return { name: f, file, shape, data: toF32(a, file) };
    });
  }
  let shape: number[];
  let data: Float32Array;
  if (source.endsWith('.safetensors')) {
    const { tensors } = readSafetensors(source);
    const t = tensors.get('latents') ?? (tensors.size === 1 ? [...tensors.values()][0] : undefined);
    if (!t) throw new HollowcError(`expected a tensor named "latents" (found ${[...tensors.keys()].slice(0, 4).join(', ')})`, source);
    shape = t.shape;
    data = finite(toFloat32(t, 'latents'), source);
  } else if (source.endsWith('.npy')) {
    const a = readNpy(source);
    shape = a.shape;
    data = toF32(a, source);
  } else throw notLatents(source, false);
  if (shape.length === 3) shape = [1, ...shape];
  if (shape.length !== 4) throw new HollowcError(`a latents batch must be [N, C, h, w], found [${shape}]`, source);
  const per = shape[1] * shape[2] * shape[3];
  return Array.from({ length: shape[0] }, (_, i) => ({
    name: `${path.basename(source)}[${i}]`,
    file: source,
    shape: shape.slice(1),
    data: data.slice(i * per, (i + 1) * per),
  }));
}

/** A prompt's conditioning: `.npy` (encoder_hidden_states, + sibling `.text_embeds.npy`) or `.safetensors`. */
export function readConditioning(file: string): Conditioning {
  statOrThrow(file);
  const squeeze = (shape: number[], rank: number) => (shape.length === rank + 1 && shape[0] === 1 ? shape.slice(1) : shape);
  if (file.endsWith('.safetensors')) {
    const { tensors } = readSafetensors(file);
    const ehs = tensors.get('encoder_hidden_states');
    if (!ehs)
      throw new HollowcError(`expected a tensor named "encoder_hidden_states" (found ${[...tensors.keys()].slice(0, 4).join(', ')})`, file);
    const te = tensors.get('text_embeds');
    const c: Conditioning = { encoderHiddenStates: { shape: squeeze(ehs.shape, 2), data: finite(toFloat32(ehs), file) } };
    if (te) c.textEmbeds = { shape: squeeze(te.shape, 1), data: finite(toFloat32(te), file) };
    return checkConditioning(c, file);
  }
  const a = readNpy(file);
  const c: Conditioning = { encoderHiddenStates: { shape: squeeze(a.shape, 2), data: toF32(a, file) } };
  const sibling = file.replace(/\.npy$/, '.text_embeds.npy');
  if (sibling !== file && fs.existsSync(sibling)) {
    const t = readNpy(sibling);
    c.textEmbeds = { shape: squeeze(t.shape, 1), data: toF32(t, sibling) };
  }
  return checkConditioning(c, file);
}

/** A prompt's conditioning as the `.safetensors` readConditioning reads. */
export function writeConditioning(file: string, c: Conditioning): void {
  const tensors = new Map([['encoder_hidden_states', float32Tensor(c.encoderHiddenStates.shape, c.encoderHiddenStates.data)]]);
  if (c.textEmbeds) tensors.set('text_embeds', float32Tensor(c.textEmbeds.shape, c.textEmbeds.data));
  writeSafetensors(file, tensors);
}

/** Latents [N, C, h, w] as one .npy per sample in `dir`, named by index from `start` (natural order = sample order). */
export function writeLatents(dir: string, latents: { data: Float32Array; shape: number[] }, start = 0): void {
  fs.mkdirSync(dir, { recursive: true });
  const [n, ...rest] = latents.shape;
  const size = rest.reduce((a, b) => a * b, 1);
  for (let i = 0; i < n; i++)
    writeNpy(path.join(dir, `${start + i}.npy`), { dtype: 'float32', shape: rest, data: latents.data.slice(i * size, (i + 1) * size) });
}

function checkConditioning(c: Conditioning, file: string): Conditioning {
  if (c.encoderHiddenStates.shape.length !== 2)
    throw new HollowcError(`encoder_hidden_states must be [T, D] or [1, T, D], found [${c.encoderHiddenStates.shape}]`, file);
  if (c.textEmbeds && c.textEmbeds.shape.length !== 1)
    throw new HollowcError(`text_embeds must be [P] or [1, P], found [${c.textEmbeds.shape}]`, file);
  return c;
}

function statOrThrow(file: string): fs.Stats {
  try {
    return fs.statSync(file);
  } catch (e) {
    throw new HollowcError(`cannot read: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`, file);
  }
}

/** The first of `<dir>/<stem>.npy`, `<dir>/<stem>.safetensors`, `<dir>/<stem>/` that exists. */
function findIn(dir: string | undefined, stem: string, folder = false): string | undefined {
  if (!dir) return undefined;
  const candidates = [...(folder ? [path.join(dir, stem)] : []), path.join(dir, `${stem}.npy`), path.join(dir, `${stem}.safetensors`)];
  return candidates.find((c) => fs.existsSync(c));
}

export function loadTrainingData(data: string, options: DataOptions = {}): TrainingData {
  const isDir = statOrThrow(data).isDirectory();
  const dir = isDir ? data : undefined;
  const latentsSource = isDir ? findIn(dir, 'latents', true) : data;
  if (!latentsSource)
    throw new HollowcError('no latents: expected latents/*.npy, latents.npy or latents.safetensors in the data folder', data);
  const instanceFile = options.instancePrompt ?? findIn(dir, 'instance_prompt');
  if (!instanceFile)
    throw new HollowcError('no instance prompt embedding: put instance_prompt.npy in the data folder or pass --instance-prompt', data);
  const classFile = options.classPrompt ?? findIn(dir, 'class_prompt');
  if (!classFile)
    throw new HollowcError(
      'no class prompt embedding (precompute runs the base UNet on the class prompt): put class_prompt.npy in the data folder or pass --class-prompt',
      data,
    );
  const classLatentsSource = options.classLatents ?? findIn(dir, 'class_latents', true);
  const timeIdsFile = options.timeIds ?? findIn(dir, 'time_ids');

  const instanceLatents = readLatents(latentsSource);
  const classLatents = classLatentsSource ? readLatents(classLatentsSource) : [];
  const all = [...instanceLatents, ...classLatents];
  const shape = instanceLatents[0].shape;
  const odd = all.find((l) => l.shape.join() !== shape.join());
  if (odd)
    throw new HollowcError(
      `latent is [${odd.shape.join(', ')}], ${instanceLatents[0].name} [${shape.join(', ')}]: all samples need one shape`,
      odd.file,
    );

  const instance = readConditioning(instanceFile);
  const klass = readConditioning(classFile);
  if (instance.encoderHiddenStates.shape.join() !== klass.encoderHiddenStates.shape.join()) {
    throw new HollowcError(
      `instance prompt is [${instance.encoderHiddenStates.shape}], class prompt [${klass.encoderHiddenStates.shape}]: they must match`,
      classFile,
    );
  }
  if (!!instance.textEmbeds !== !!klass.textEmbeds)
    throw new HollowcError('only one of the instance and class prompts has text_embeds (SDXL needs both)', classFile);
  let timeIds: Float32Array | undefined;
  if (timeIdsFile) {
    const a = readNpy(timeIdsFile);
    timeIds = toF32(a, timeIdsFile);
    if (timeIds.length !== 6) throw new HollowcError(`time_ids must hold 6 values, found ${timeIds.length}`, timeIdsFile);
  }

  const hash = crypto.createHash('sha256');
  const add = (label: string, shape: readonly number[], values: Float32Array) => {
    hash.update(`${label}[${shape.join(',')}]`);
    hash.update(new Uint8Array(values.buffer, values.byteOffset, values.byteLength));
  };
  instanceLatents.forEach((l) => add(`instance:${l.name}`, l.shape, l.data));
  classLatents.forEach((l) => add(`class:${l.name}`, l.shape, l.data));
  for (const [role, c] of [
    ['instance', instance],
    ['class', klass],
  ] as const) {
    add(`${role}.ehs`, c.encoderHiddenStates.shape, c.encoderHiddenStates.data);
    if (c.textEmbeds) add(`${role}.te`, c.textEmbeds.shape, c.textEmbeds.data);
  }
  if (timeIds) add('time_ids', [6], timeIds);
  return {
    instanceLatents,
    classLatents,
    instance,
    class: klass,
    timeIds,
    sources: {
      instance: instanceFile,
      class: classFile,
      latents: latentsSource,
      ...(classLatentsSource ? { classLatents: classLatentsSource } : {}),
      ...(timeIdsFile ? { timeIds: timeIdsFile } : {}),
    },
    fingerprint: hash.digest('hex'),
  };
}
