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
 *
 * Before anything is written the data are checked against the folder's compiled shapes
 * (data-checks.ts) and an existing store against the data (its fingerprint); the store's
 * progress.json says how many records the run aims at until it has them all.
 */
import * as crypto from 'crypto';
import * as path from 'path';
import type * as ort from 'onnxruntime-node';
import { HollowcError } from '../../compiler/errors';
import { withFolderLockAsync } from '../../compiler/folder-lock';
import { Rng, fillNormal, uniformOpen } from '../../models/random';
import {
  CompileManifest,
  ENCODER_HIDDEN_STATES,
  HOLLOW_ACTIVATION,
  SAMPLE,
  TEXT_EMBEDS,
  TIMESTEP,
  TIME_IDS,
  TensorDescription,
} from '../../compiler/manifest';
import { float32Data, loadManifest, requireArtifact, tensorFor, timestepFor } from '../ort/artifacts';
import { NoiseSchedule, Prediction } from '../sampling/noise-schedule';
import { defaultTimeIds } from '../sampling/conditioning';
import { ExecutionProvider, SessionTuning, createSession, withArtifactConfig } from '../ort/session';
import { Store } from './store';
import type { Conditioning } from '../sampling/conditioning';
import { STORE_DIR } from './store-format';
import { checkDataFitsFolder } from './data-checks';
import type { TrainingData } from './training-data';

export const INSTANCE_COND = 0;
export const CLASS_COND = 1;
/** A captioned set's caption k is conditioning FIRST_CAPTION_COND + k. */
export const FIRST_CAPTION_COND = 2;

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

/**
 * The caption record i trains on in a captioned set: its sample's own, or the unconditional one
 * at the dropout rate (the stream `precompute/<i>/caption` of the seed).
 */
export function captionCond(seed: number, i: number, sampleId: number, captions: NonNullable<TrainingData['captions']>): number {
  const drop = captions.dropout && uniformOpen(new Rng(seed, `precompute/${i}/caption`)) < captions.dropout.rate;
  return FIRST_CAPTION_COND + (drop ? captions.dropout!.index : captions.ofSample[sampleId]);
}

/** t and eps of record i: the stream `precompute/<i>` of the seed. */
export function drawNoise(seed: number, i: number, timesteps: number, latentSize: number): { t: number; eps: Float32Array } {
  const rng = new Rng(seed, `precompute/${i}`);
  const t = Math.min(timesteps - 1, Math.floor(uniformOpen(rng) * timesteps));
  const eps = new Float32Array(latentSize);
  fillNormal(rng, eps, 1);
  return { t, eps };
}

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

/**
 * What a store remembers of the compile it was precomputed for; training checks it. `identity` (the
 * graph and its weights, compiler/model-identity.ts) tells apart UNets whose graph files are the
 * same bytes with other weights; folders compiled before it was recorded have only `model`.
 */
export function storeCompileStamp(manifest: CompileManifest): { precompute?: string; cut: string | null; model: string; identity?: string } {
  return {
    precompute: manifest.artifacts.precompute?.file,
    cut: manifest.cut?.lastKeptDown ?? null,
    model: manifest.model.sha256,
    identity: manifest.model.identity,
  };
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
        // undefined (left out of the JSON) for folders compiled before identities: their fingerprints stay as they were
        identity: manifest.model.identity,
        cut: manifest.cut?.lastKeptDown ?? null,
        family: manifest.family,
      }),
    )
    .digest('hex');
}

/** precompute.onnx's conditioning inputs (batch 1) for one prompt. */
function conditioningFeeds(
  inputs: readonly TensorDescription[],
  c: Conditioning,
  timeIds: Float32Array | undefined,
): Record<string, ort.Tensor> {
  const feeds: Record<string, ort.Tensor> = {};
  for (const input of inputs) {
    if (input.name === ENCODER_HIDDEN_STATES)
      feeds[input.name] = tensorFor(input, c.encoderHiddenStates.data, [1, ...c.encoderHiddenStates.shape]);
    // checkDataFitsFolder made sure the prompt has text_embeds when the UNet takes them
    else if (input.name === TEXT_EMBEDS) feeds[input.name] = tensorFor(input, c.textEmbeds!.data, [1, ...c.textEmbeds!.shape]);
    else if (input.name === TIME_IDS) feeds[input.name] = tensorFor(input, timeIds!, [1, timeIds!.length]);
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

/** Everything a precompute run needs, read and checked before anything is written. */
interface PrecomputeJob {
  manifest: CompileManifest;
  /** precompute.onnx; none for `hollow none` (plain LoRA fine-tuning), whose store holds no activation */
  artifact?: ReturnType<typeof requireArtifact>;
  data: TrainingData;
  count: number;
  seed: number;
  prediction: Prediction;
  schedule: NoiseSchedule;
  latentShape: number[];
  timeIds?: Float32Array;
  fingerprint: string;
  storeDir: string;
}

function preparePrecompute(options: PrecomputeOptions): PrecomputeJob {
  const manifest = loadManifest(options.out);
  const artifact = manifest.cut ? requireArtifact(options.out, manifest, 'precompute', 'precompute') : undefined;
  const seed = options.seed ?? manifest.training.seed;
  const data = options.data;
  if (!(Number.isInteger(options.count) && options.count > 0))
    throw new HollowcError(`--count must be a positive integer, got ${options.count}`);
  checkDataFitsFolder(manifest, data);
  const latentShape = data.instanceLatents[0].shape;
  const sdxl = Object.values(manifest.artifacts).some((a) => a?.inputs.some((i) => i.name === TIME_IDS));
  const storeDir = options.storeDir ?? path.join(options.out, STORE_DIR);
  const fingerprint = storeFingerprint(manifest, data, seed, manifest.training.prediction);
  // an existing store is checked on its header alone: opening it for writing may repair its end
  if (Store.exists(storeDir)) {
    const header = Store.readHeader(storeDir);
    if (header.fingerprint !== fingerprint)
      throw new HollowcError(
        `this store was made from other data, seed, prediction type or model (store seed ${header.seed}, now ${seed}); delete it or pass --store <dir> to start another`,
        storeDir,
      );
  }
  return {
    manifest,
    artifact,
    data,
    count: options.count,
    seed,
    prediction: manifest.training.prediction,
    schedule: NoiseSchedule.forFamily(manifest.family),
    latentShape,
    timeIds: sdxl ? (data.timeIds ?? defaultTimeIds(latentShape)) : undefined,
    fingerprint,
    storeDir,
  };
}

/** A new store for the job, sized by the first record's activation. */
function createStore(job: PrecomputeJob, activationShape: number[]): Store {
  const { data, timeIds } = job;
  return Store.create(
    job.storeDir,
    {
      latentShape: job.latentShape,
      activationShape,
      family: job.manifest.family,
      prediction: job.prediction,
      seed: job.seed,
      fingerprint: job.fingerprint,
      conditionings: [
        { id: INSTANCE_COND, role: 'instance', source: data.sources.instance },
        { id: CLASS_COND, role: 'class', source: data.sources.class },
        ...(data.captions?.texts ?? []).map((text, k) => ({ id: FIRST_CAPTION_COND + k, role: 'caption' as const, source: text })),
      ],
      instanceSamples: data.instanceLatents.map((l) => l.name),
      classSamples: data.classLatents.map((l) => l.name),
      ...(timeIds ? { timeIds: [...timeIds] } : {}),
      extra: storeCompileStamp(job.manifest),
    },
    new Map([
      [INSTANCE_COND, data.instance],
      [CLASS_COND, data.class],
      ...(data.captions?.table ?? []).map((c, k) => [FIRST_CAPTION_COND + k, c] as const),
    ]),
    job.count,
  );
}

/** Appends records `held.store.count` (0 without a store) .. job.count - 1; the store is created on the first record. */
async function appendRecords(
  job: PrecomputeJob,
  held: { store?: Store },
  session: ort.InferenceSession | undefined,
  onRecord: PrecomputeOptions['onRecord'],
): Promise<void> {
  const { artifact, data, schedule, latentShape } = job;
  const latentSize = latentShape.reduce((a, b) => a * b, 1);
  const classFeeds = artifact ? conditioningFeeds(artifact.inputs, data.class, job.timeIds) : {};
  const sampleDesc = artifact?.inputs.find((i) => i.name === SAMPLE);
  const timestepDesc = artifact?.inputs.find((i) => i.name === TIMESTEP);
  for (let i = held.store?.count ?? 0; i < job.count; i++) {
    const plan = planRecord(i, data.instanceLatents.length, data.classLatents.length);
    const z = (plan.isClass ? data.classLatents : data.instanceLatents)[plan.sampleId].data;
    const { t, eps } = drawNoise(job.seed, i, schedule.numTrainTimesteps, latentSize);
    const zt = schedule.addNoise(z, eps, t);
    const target = schedule.target(job.prediction, z, eps, t);
    const { activation, activationShape } = artifact
      ? await hollowActivation(session!, artifact.path, {
          ...classFeeds,
          sample: tensorFor(sampleDesc, zt, [1, ...latentShape]),
          timestep: timestepFor(timestepDesc, [t]),
        })
      : NO_ACTIVATION;
    held.store ??= createStore(job, activationShape);
    const condId = data.captions ? captionCond(job.seed, i, plan.sampleId, data.captions) : plan.condId;
    held.store.append({ sampleId: plan.sampleId, condId, isClass: plan.isClass, timestep: t, zt, target, activation });
    onRecord?.(i + 1, job.count);
  }
}

async function precomputeUnlocked(options: PrecomputeOptions): Promise<PrecomputeResult> {
  const started = Date.now();
  const job = preparePrecompute(options);
  const opened = Store.exists(job.storeDir) ? Store.open(job.storeDir) : undefined;
  const held = { store: opened?.store };
  const existing = held.store?.count ?? 0;
  let session: ort.InferenceSession | undefined;
  try {
    if (existing < job.count) {
      if (job.artifact)
        session = await createSession(
          job.artifact.path,
          withArtifactConfig({ ...options.session, ep: options.ep, fallbackToCpu: options.fallbackToCpu }, job.artifact),
        );
      held.store?.fillTowards(job.count);
      await appendRecords(job, held, session, options.onRecord);
    }
    const store = held.store!;
    store.finish();
    const size = store.sizeBytes();
    return {
      storeDir: job.storeDir,
      existing,
      added: store.count - existing,
      records: store.count,
      repaired: opened?.repaired ?? { bytes: 0, records: 0 },
      recordBytes: size.perRecord,
      totalBytes: size.total,
      seconds: (Date.now() - started) / 1000,
    };
  } finally {
    held.store?.close();
    await session?.release();
  }
}
