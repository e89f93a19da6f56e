/**
 * `hollowc precompute`: the first stage of Hollowed-Net training (paper 4.3). For every sample:
 * t ~ U{0..T-1} and eps ~ N(0, 1) (seeded per record), z_t = sqrt(abar_t) z + sqrt(1-abar_t) eps,
 * then precompute.onnx — the base UNet, no LoRA, up to the hollow activation — on
 * (z_t, t, class-prompt conditioning); the record (z_t, t, eps or v, conditioning id, activation,
 * sample id, class flag) is appended to the store (store.ts).
 *
 * Which sample record i holds depends on i and the data only: without class latents every record
 * is an instance sample (sample i mod N); with them, even records are instance samples and odd
 * ones class samples (DreamBooth's instance/class pairs), each list cycled. Its t and eps come from
 * the stream `precompute/<i>` of the seed. So a rerun after a crash, or with a larger --count,
 * appends exactly what one uninterrupted run would have written.
 */
import * as crypto from 'crypto';
import * as path from 'path';
import type * as ort from 'onnxruntime-node';
import { HollowcError } from '../../compiler/errors';
import { withFolderLockAsync } from '../../compiler/folder-lock';
import { Rng, fillNormal, uniformOpen } from '../../models/random';
import { CompileManifest, HOLLOW_ACTIVATION, TIME_IDS, TensorDescription } from '../../compiler/manifest';
import { float32Data, loadManifest, requireArtifact, tensorFor, timestepFor } from '../ort/artifacts';
import { NoiseSchedule, Prediction } from '../sampling/noise-schedule';
import { defaultTimeIds } from '../sampling/conditioning';
import { ExecutionProvider, SessionTuning, createSession, withArtifactConfig } from '../ort/session';
import { Store } from './store';
import type { Conditioning } from '../sampling/conditioning';
import { STORE_DIR } from './store-format';
import type { TrainingData } from './training-data';

export const INSTANCE_COND = 0;
export const CLASS_COND = 1;

export interface PrecomputeOptions {
  /** The compiled folder. */
  out: string;
  data: TrainingData;
  /** Records the store should hold when done (instance and class samples together). */
  count: number;
  /** Default: the spec's seed. */
  seed?: number;
  /** Default `<out>/store`. */
  storeDir?: string;
  ep?: ExecutionProvider;
  fallbackToCpu?: boolean;
  session?: SessionTuning;
  /** Called after each appended record. */
  onRecord?: (done: number, total: number) => void;
}

export interface PrecomputeResult {
  storeDir: string;
  /** Records there before this run (after repair) and written by it. */
  existing: number;
  added: number;
  records: number;
  repaired: { bytes: number; records: number };
  recordBytes: number;
  totalBytes: number;
  seconds: number;
}

export interface PlannedSample {
  isClass: boolean;
  sampleId: number;
  condId: number;
}

export function planRecord(i: number, instanceCount: number, classCount: number): PlannedSample {
  if (classCount > 0 && i % 2 === 1) return { isClass: true, sampleId: (i >> 1) % classCount, condId: CLASS_COND };
  return { isClass: false, sampleId: (classCount > 0 ? i >> 1 : i) % instanceCount, condId: INSTANCE_COND };
}

/** t and eps of record i: the stream `precompute/<i>` of the seed. */
export function drawNoise(seed: number, i: number, timesteps: number, latentSize: number): { t: number; eps: Float32Array } {
  const rng = new Rng(seed, `precompute/${i}`);
  const t = Math.min(timesteps - 1, Math.floor(uniformOpen(rng) * timesteps));
  const eps = new Float32Array(latentSize);
  fillNormal(rng, eps, 1);
  return { t, eps };
}

/** SDXL's time_ids when none are given: original size = target size = the image size, no crop. */
/** What a store remembers of the compile it was precomputed for; training checks it. */
/** The class prompt's conditioning in the store of compiled folder `out` (the default store), if it has one. */
export function storedClassConditioning(out: string): Conditioning | undefined {
  const where = path.join(out, STORE_DIR);
  if (!Store.exists(where)) return undefined;
  const { store } = Store.open(where, { readOnly: true });
  try {
    return store.conditioning(CLASS_COND);
  } finally {
    store.close();
  }
}

export function storeCompileStamp(manifest: CompileManifest): { precompute?: string; cut: string | null; model: string } {
  return { precompute: manifest.artifacts.precompute?.file, cut: manifest.cut?.lastKeptDown ?? null, model: manifest.model.sha256 };
}

function storeFingerprint(manifest: CompileManifest, data: TrainingData, seed: number, prediction: Prediction): string {
  return crypto
    .createHash('sha256')
    .update(
      JSON.stringify({
        data: data.fingerprint,
        seed,
        prediction,
        model: manifest.model.sha256,
        cut: manifest.cut?.lastKeptDown ?? null,
        family: manifest.family,
      }),
    )
    .digest('hex');
}

/** Checks the data against the shapes train.onnx was specialized to, when the folder has it. */
function checkAgainstTraining(manifest: CompileManifest, data: TrainingData): void {
  const inputs = manifest.artifacts.train?.inputs;
  if (!inputs) return;
  const latent = data.instanceLatents[0].shape;
  const sample = inputs.find((i) => i.name === 'sample');
  if (sample && sample.shape.slice(1).every((d) => typeof d === 'number') && sample.shape.slice(1).join() !== latent.join()) {
    throw new HollowcError(
      `latents are [${latent}] but train.onnx was compiled for samples [${sample.shape.slice(1)}] (the spec's \`shape sample\` line)`,
      data.sources.latents,
    );
  }
  const ehs = inputs.find((i) => i.name === 'encoder_hidden_states');
  const cond = data.instance.encoderHiddenStates.shape;
  if (ehs && ehs.shape.slice(1).every((d) => typeof d === 'number') && ehs.shape.slice(1).join() !== cond.join()) {
    throw new HollowcError(
      `prompt embeddings are [${cond}] but train.onnx was compiled for encoder_hidden_states [${ehs.shape.slice(1)}]`,
      data.sources.instance,
    );
  }
}

/** precompute.onnx's conditioning inputs (batch 1) for one prompt. */
function conditioningFeeds(
  family: string,
  inputs: readonly TensorDescription[],
  c: Conditioning,
  timeIds: Float32Array | undefined,
): Record<string, ort.Tensor> {
  const feeds: Record<string, ort.Tensor> = {};
  for (const input of inputs) {
    if (input.name === 'encoder_hidden_states')
      feeds[input.name] = tensorFor(input, c.encoderHiddenStates.data, [1, ...c.encoderHiddenStates.shape]);
    else if (input.name === 'text_embeds') {
      if (!c.textEmbeds)
        throw new HollowcError(
          `this ${family} UNet needs text_embeds (pooled prompt embeddings): give <prompt>.text_embeds.npy or a .safetensors prompt`,
        );
      feeds[input.name] = tensorFor(input, c.textEmbeds.data, [1, ...c.textEmbeds.shape]);
    } else if (input.name === TIME_IDS) feeds[input.name] = tensorFor(input, timeIds!, [1, timeIds!.length]);
  }
  return feeds;
}

/** A `hollow none` record's activation: no values (shape [0]). */
const NO_ACTIVATION = { activation: new Float32Array(0), activationShape: [0] };

/** One precompute.onnx run: the hollow activation of one sample, without its batch dimension. */
async function hollowActivation(
  session: ort.InferenceSession,
  file: string,
  feeds: Record<string, ort.Tensor>,
): Promise<{ activation: Float32Array; activationShape: number[] }> {
  const result = await session.run(feeds);
  const tensor = result[HOLLOW_ACTIVATION];
  if (!tensor) throw new HollowcError(`precompute.onnx has no output named ${HOLLOW_ACTIVATION}`, file);
  return { activation: float32Data(tensor, HOLLOW_ACTIVATION), activationShape: tensor.dims.slice(1) as number[] };
}

/** Holds the folder's writer lock (compiler/folder-lock.ts) for the whole run. */
export function precompute(options: PrecomputeOptions): Promise<PrecomputeResult> {
  return withFolderLockAsync(options.out, 'hollowc precompute', () => precomputeUnlocked(options));
}

async function precomputeUnlocked(options: PrecomputeOptions): Promise<PrecomputeResult> {
  const started = Date.now();
  const manifest = loadManifest(options.out);
  // `hollow none` (plain LoRA fine-tuning) has no hollow activation: its store holds z_t, t, the
  // targets and the conditioning, and precompute runs no model.
  const artifact = manifest.cut ? requireArtifact(options.out, manifest, 'precompute', 'precompute') : undefined;
  const settings = manifest.training;
  const seed = options.seed ?? settings.seed;
  const data = options.data;
  if (!(Number.isInteger(options.count) && options.count > 0))
    throw new HollowcError(`--count must be a positive integer, got ${options.count}`);
  checkAgainstTraining(manifest, data);
  const schedule = NoiseSchedule.forFamily(manifest.family);
  const latentShape = data.instanceLatents[0].shape;
  const latentSize = latentShape.reduce((a, b) => a * b, 1);
  const sdxl = Object.values(manifest.artifacts).some((a) => a?.inputs.some((i) => i.name === TIME_IDS));
  const timeIds = sdxl ? (data.timeIds ?? defaultTimeIds(latentShape)) : undefined;
  const fingerprint = storeFingerprint(manifest, data, seed, settings.prediction);
  const storeDir = options.storeDir ?? path.join(options.out, STORE_DIR);

  let store: Store | undefined;
  let repaired = { bytes: 0, records: 0 };
  if (Store.exists(storeDir)) {
    const opened = Store.open(storeDir);
    store = opened.store;
    repaired = opened.repaired;
    if (store.header.fingerprint !== fingerprint) {
      store.close();
      throw new HollowcError(
        `this store was made from other data, seed, prediction type or model (store seed ${store.header.seed}, now ${seed}); delete it or pass --store <dir> to start another`,
        storeDir,
      );
    }
  }
  const existing = store?.count ?? 0;
  const session =
    existing < options.count && artifact
      ? await createSession(
          artifact.path,
          withArtifactConfig({ ...options.session, ep: options.ep, fallbackToCpu: options.fallbackToCpu }, artifact),
        )
      : undefined;
  const classFeeds = artifact ? conditioningFeeds(manifest.family, artifact.inputs, data.class, timeIds) : {};
  const sampleDesc = artifact?.inputs.find((i) => i.name === 'sample');
  const timestepDesc = artifact?.inputs.find((i) => i.name === 'timestep');
  let added = 0;
  try {
    for (let i = existing; i < options.count; i++) {
      const plan = planRecord(i, data.instanceLatents.length, data.classLatents.length);
      const z = (plan.isClass ? data.classLatents : data.instanceLatents)[plan.sampleId].data;
      const { t, eps } = drawNoise(seed, i, schedule.numTrainTimesteps, latentSize);
      const zt = schedule.addNoise(z, eps, t);
      const target = schedule.target(settings.prediction, z, eps, t);
      const { activation, activationShape } = artifact
        ? await hollowActivation(session!, artifact.path, {
            ...classFeeds,
            sample: tensorFor(sampleDesc, zt, [1, ...latentShape]),
            timestep: timestepFor(timestepDesc, [t]),
          })
        : NO_ACTIVATION;
      if (!store) {
        store = Store.create(
          storeDir,
          {
            latentShape,
            activationShape,
            family: manifest.family,
            prediction: settings.prediction,
            seed,
            fingerprint,
            conditionings: [
              { id: INSTANCE_COND, role: 'instance', source: data.sources.instance },
              { id: CLASS_COND, role: 'class', source: data.sources.class },
            ],
            instanceSamples: data.instanceLatents.map((l) => l.name),
            classSamples: data.classLatents.map((l) => l.name),
            ...(timeIds ? { timeIds: [...timeIds] } : {}),
            extra: storeCompileStamp(manifest),
          },
          new Map([
            [INSTANCE_COND, data.instance],
            [CLASS_COND, data.class],
          ]),
        );
      }
      store.append({ sampleId: plan.sampleId, condId: plan.condId, isClass: plan.isClass, timestep: t, zt, target, activation });
      added++;
      options.onRecord?.(i + 1, options.count);
    }
    const size = store!.sizeBytes();
    return {
      storeDir,
      existing,
      added,
      records: store!.count,
      repaired,
      recordBytes: size.perRecord,
      totalBytes: size.total,
      seconds: (Date.now() - started) / 1000,
    };
  } finally {
    store?.close();
    await session?.release();
  }
}
