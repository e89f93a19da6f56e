/**
 * `hollowc train`: runs train.onnx — one AdamW step of the hollowed net with LoRA per
 * `session.run` — over the precompute store.
 *
 * train.onnx's interface (issue 5): inputs = the hollowed net's inputs (`sample`, `timestep`,
 * `encoder_hidden_states` [+ SDXL `text_embeds`, `time_ids`], `hollow_activation`) + `target` +
 * `loss_weight` [B] + every LoRA tensor `<module>.lora_A.weight` / `.lora_B.weight` + `lr` + `step`
 * (1-based) + `<param>.exp_avg` + `<param>.exp_avg_sq`; outputs `loss`, `<param>.updated`,
 * `<param>.exp_avg.updated`, `<param>.exp_avg_sq.updated`. Its static input shapes fix the batch.
 *
 * Order of samples: epoch e is a permutation of the store's records drawn from the stream
 * `train/epoch/<e>` of the seed (Fisher-Yates); step s takes positions (s-1)·B .. s·B-1 of the
 * epochs laid end to end. The data a step sees is therefore a function of (seed, step, store),
 * and the checkpoint — LoRA, AdamW moments, step, that position — is all a resume needs to
 * continue bit for bit. Class (prior-preservation) records get loss_weight = prior_weight.
 *
 * Files in `<out>/train/`:
 *   checkpoint.safetensors  `<param>`, `<param>.exp_avg`, `<param>.exp_avg_sq` (F32) and the state
 *                           (step, seed, lr, batch, position, store fingerprint) as JSON in the
 *                           metadata key `hollowc_checkpoint`: one file, streamed to a temporary
 *                           sibling, fsynced and renamed, so a kill leaves either the old
 *                           checkpoint or the new one
 *   checkpoint.json         the same state for people and scripts, plus the checkpoint's sha256
 *                           (written after it; the safetensors is what --resume reads)
 *   loss.jsonl              one line per step: {"step", "loss", "lr", "elapsed_s"}; a resume first
 *                           drops lines after the checkpoint's step
 * and `<out>/lora.safetensors` (peft keys) when the run reaches its last step.
 */
import * as fs from 'fs';
import * as path from 'path';
import * as ort from 'onnxruntime-node';
import { HollowcError } from '../compiler/errors';
import { writeFileAtomic } from '../compiler/serde';
import { Rng } from '../models/random';
import type { CompileManifest, TensorDescription } from '../passes/compile';
import { float32Data, loadManifest, requireArtifact, scalarFor, staticShape, tensorFor, trainingSettings } from './artifacts';
import { LoraModuleValues, readLoraForManifest, writeLoraFile } from './lora-file';
import { LORA_INIT_FILE } from './lora-init';
import { float32Tensor, readSafetensors, SafeTensor, toFloat32, writeSafetensors } from './safetensors';
import { ExecutionProvider, SessionTuning, createSession } from './session';
import { Store, StoreRecord } from './store';

export const TRAIN_DIR = 'train';
export const CHECKPOINT_FILE = 'checkpoint.safetensors';
export const CHECKPOINT_STATE_FILE = 'checkpoint.json';
export const LOSS_LOG_FILE = 'loss.jsonl';
export const LORA_FILE = 'lora.safetensors';
const STATE_KEY = 'hollowc_checkpoint';

export interface TrainOptions {
  out: string;
  /** Total steps the run should reach (default: the spec's `train steps`). */
  steps?: number;
  /** Continue from `<out>/train/checkpoint.safetensors`. */
  resume?: boolean;
  /** Discard an existing checkpoint and start over. */
  restart?: boolean;
  /** Default: the spec's `train checkpoint_every` (= steps: only at the end). */
  checkpointEvery?: number;
  /** Default: the spec's optimizer lr (on resume: the checkpoint's). */
  lr?: number;
  /** Default: the spec's seed (on resume: the checkpoint's). */
  seed?: number;
  storeDir?: string;
  ep?: ExecutionProvider;
  fallbackToCpu?: boolean;
  session?: SessionTuning;
  /** After every step; throwing from it stops the run right there (tests simulate a kill so). */
  onStep?: (info: StepInfo) => void;
  /** After every checkpoint write. */
  onCheckpoint?: (step: number, file: string) => void;
  /**
   * Also measure the loss over the first `batches` batches of the store (in store order, lr = 0)
   * before the first step and after the last, on the training session itself.
   */
  evaluate?: { batches: number };
}

export interface StepInfo {
  step: number;
  steps: number;
  loss: number;
  /** Steps done by this run and seconds it has spent on them. */
  runSteps: number;
  runSeconds: number;
}

export interface TrainState {
  version: 1;
  step: number;
  seed: number;
  lr: number;
  batch: number;
  storeRecords: number;
  storeFingerprint: string;
  /** Where the next step starts in the sample order: epoch and offset in its permutation. */
  position: { epoch: number; offset: number };
  params: string[];
}

export interface TrainResult {
  startStep: number;
  step: number;
  losses: { step: number; loss: number }[];
  checkpointFile: string;
  loraFile: string;
  seconds: number;
  /** Seconds spent in the steps themselves (no session start, no evaluation). */
  stepSeconds: number;
  batch: number;
  evaluation?: { before: number; after: number; batches: number };
}

/** Records of epoch `epoch`, shuffled by the stream `train/epoch/<epoch>` of the seed. */
export function epochPermutation(seed: number, epoch: number, records: number): Uint32Array {
  const perm = new Uint32Array(records);
  for (let i = 0; i < records; i++) perm[i] = i;
  const rng = new Rng(seed, `train/epoch/${epoch}`);
  for (let i = records - 1; i > 0; i--) {
    const j = rng.next() % (i + 1);
    const x = perm[i];
    perm[i] = perm[j];
    perm[j] = x;
  }
  return perm;
}

/** The record indices step `step` (1-based) trains on. */
export class SampleOrder {
  private cachedEpoch = -1;
  private perm: Uint32Array = new Uint32Array(0);

  constructor(
    readonly seed: number,
    readonly records: number,
    readonly batch: number,
  ) {
    if (records <= 0) throw new HollowcError('the store is empty: run hollowc precompute first');
  }

  private at(position: number): number {
    const epoch = Math.floor(position / this.records);
    if (epoch !== this.cachedEpoch) {
      this.perm = epochPermutation(this.seed, epoch, this.records);
      this.cachedEpoch = epoch;
    }
    return this.perm[position % this.records];
  }

  batchFor(step: number): number[] {
    const start = (step - 1) * this.batch;
    return Array.from({ length: this.batch }, (_, k) => this.at(start + k));
  }

  positionAfter(step: number): { epoch: number; offset: number } {
    const p = step * this.batch;
    return { epoch: Math.floor(p / this.records), offset: p % this.records };
  }
}

/** A LoRA tensor of train.onnx with its AdamW moments. */
interface Param {
  name: string;
  shape: number[];
  value: Float32Array;
  expAvg: Float32Array;
  expAvgSq: Float32Array;
}

const DATA_INPUTS = new Set(['sample', 'timestep', 'encoder_hidden_states', 'text_embeds', 'time_ids', 'hollow_activation', 'target', 'loss_weight']);
const isLoraName = (n: string) => /\.lora_[AB]\.weight$/.test(n);

/** train.onnx's interface, checked against the store. */
export interface TrainGraph {
  file: string;
  batch: number;
  inputs: Map<string, TensorDescription>;
  params: { name: string; shape: number[] }[];
  outputs: string[];
}

export function describeTrainGraph(out: string, manifest: CompileManifest, store?: Store): TrainGraph {
  const artifact = requireArtifact(out, manifest, 'train', 'training');
  const inputs = new Map(artifact.inputs.map((i) => [i.name, i]));
  const params = artifact.inputs.filter((i) => isLoraName(i.name)).map((i) => ({ name: i.name, shape: staticShape(i, artifact.path) }));
  const paramNames = new Set(params.map((p) => p.name));
  for (const i of artifact.inputs) {
    const known =
      DATA_INPUTS.has(i.name) ||
      i.name === 'lr' ||
      i.name === 'step' ||
      paramNames.has(i.name) ||
      (i.name.endsWith('.exp_avg') && paramNames.has(i.name.slice(0, -'.exp_avg'.length))) ||
      (i.name.endsWith('.exp_avg_sq') && paramNames.has(i.name.slice(0, -'.exp_avg_sq'.length)));
    if (!known) throw new HollowcError(`train.onnx input ${i.name} is not one the trainer knows how to feed`, artifact.path);
  }
  for (const required of ['sample', 'hollow_activation', 'target', 'loss_weight', 'lr', 'step']) {
    if (!inputs.has(required)) throw new HollowcError(`train.onnx has no input ${required}`, artifact.path);
  }
  if (!params.length) throw new HollowcError('train.onnx has no LoRA inputs', artifact.path);
  const outputs = ['loss', ...params.flatMap((p) => [`${p.name}.updated`, `${p.name}.exp_avg.updated`, `${p.name}.exp_avg_sq.updated`])];
  const declared = new Set(artifact.outputs.map((o) => o.name));
  const missing = outputs.filter((o) => !declared.has(o));
  if (missing.length) throw new HollowcError(`train.onnx lacks output${missing.length > 1 ? 's' : ''} ${missing.slice(0, 3).join(', ')}`, artifact.path);
  const sample = staticShape(inputs.get('sample')!, artifact.path);
  const batch = sample[0];
  if (store) {
    const expect = (name: string, shape: readonly number[], what: string) => {
      const d = inputs.get(name);
      if (!d) return;
      const s = staticShape(d, artifact.path);
      if (s.join() !== [batch, ...shape].join()) throw new HollowcError(`train.onnx takes ${name} [${s}] but the store holds ${what} [${shape}] per sample: precompute with data of the compiled shapes`, store.dir);
    };
    expect('sample', store.header.latentShape, 'latents');
    expect('target', store.header.latentShape, 'targets');
    expect('hollow_activation', store.header.activationShape, 'hollow activations');
    const c = store.conditioning(0);
    expect('encoder_hidden_states', c.encoderHiddenStates.shape, 'encoder_hidden_states');
    if (c.textEmbeds) expect('text_embeds', c.textEmbeds.shape, 'text_embeds');
  }
  return { file: artifact.path, batch, inputs, params, outputs };
}

/** Feeds for one step's data inputs (everything but parameters, moments, lr and step). */
function dataFeeds(graph: TrainGraph, store: Store, records: StoreRecord[], priorWeight: number): Record<string, ort.Tensor> {
  const B = records.length;
  const h = store.header;
  const feeds: Record<string, ort.Tensor> = {};
  const stack = (name: string, per: number, get: (r: StoreRecord) => Float32Array, shape: readonly number[]) => {
    const d = graph.inputs.get(name);
    if (!d) return;
    const data = new Float32Array(B * per);
    records.forEach((r, b) => data.set(get(r), b * per));
    feeds[name] = tensorFor(d, data, [B, ...shape]);
  };
  const latentSize = h.latentShape.reduce((a, b) => a * b, 1);
  stack('sample', latentSize, (r) => r.zt, h.latentShape);
  stack('target', latentSize, (r) => r.target, h.latentShape);
  stack('hollow_activation', h.activationShape.reduce((a, b) => a * b, 1), (r) => r.activation, h.activationShape);
  const c0 = store.conditioning(0);
  stack('encoder_hidden_states', c0.encoderHiddenStates.data.length, (r) => store.conditioning(r.condId).encoderHiddenStates.data, c0.encoderHiddenStates.shape);
  if (graph.inputs.has('text_embeds')) {
    if (!c0.textEmbeds) throw new HollowcError('train.onnx takes text_embeds but the store has none (SDXL prompts need pooled embeddings)', store.dir);
    stack('text_embeds', c0.textEmbeds.data.length, (r) => store.conditioning(r.condId).textEmbeds!.data, c0.textEmbeds.shape);
  }
  if (graph.inputs.has('time_ids')) {
    const ids = Float32Array.from(h.timeIds ?? []);
    if (ids.length === 0) throw new HollowcError('train.onnx takes time_ids but the store has none', store.dir);
    stack('time_ids', ids.length, () => ids, [ids.length]);
  }
  const ts = graph.inputs.get('timestep');
  if (ts) feeds.timestep = tensorFor(ts, records.map((r) => r.timestep), [B]);
  feeds.loss_weight = tensorFor(graph.inputs.get('loss_weight'), records.map((r) => (r.isClass ? priorWeight : 1)), [B]);
  return feeds;
}

function paramFeeds(graph: TrainGraph, params: Param[], lr: number, step: number): Record<string, ort.Tensor> {
  const feeds: Record<string, ort.Tensor> = {};
  for (const p of params) {
    feeds[p.name] = new ort.Tensor('float32', p.value, p.shape);
    feeds[`${p.name}.exp_avg`] = new ort.Tensor('float32', p.expAvg, p.shape);
    feeds[`${p.name}.exp_avg_sq`] = new ort.Tensor('float32', p.expAvgSq, p.shape);
  }
  feeds.lr = scalarFor(graph.inputs.get('lr'), lr);
  feeds.step = scalarFor(graph.inputs.get('step'), step);
  return feeds;
}

function readLoss(t: ort.Tensor | undefined): number {
  if (!t) throw new HollowcError('train.onnx returned no loss');
  return Number((t.data as Float32Array | Float64Array)[0]);
}

/** Mean loss over the first `batches` batches in store order, at lr = 0 (AdamW then changes nothing). */
async function lossAtRest(session: ort.InferenceSession, graph: TrainGraph, store: Store, params: Param[], batches: number, priorWeight: number): Promise<number> {
  const n = Math.max(1, Math.min(batches, Math.ceil(store.count / graph.batch)));
  let sum = 0;
  for (let b = 0; b < n; b++) {
    const records = Array.from({ length: graph.batch }, (_, k) => store.read((b * graph.batch + k) % store.count));
    const result = await session.run({ ...dataFeeds(graph, store, records, priorWeight), ...paramFeeds(graph, params, 0, 1) }, ['loss']);
    sum += readLoss(result.loss);
  }
  return sum / n;
}

/** The LoRA a fresh run starts from: `<out>/lora-init.safetensors` (written by compile). */
export function initialParams(out: string, manifest: CompileManifest, graph: TrainGraph): Param[] {
  const file = path.join(out, LORA_INIT_FILE);
  if (!fs.existsSync(file)) throw new HollowcError(`no ${LORA_INIT_FILE}: compile with hollowc compile (it writes the initial LoRA)`, out);
  const byName = readLoraForManifest(file, manifest);
  return graph.params.map((p) => {
    const v = byName.get(p.name);
    if (!v) throw new HollowcError(`${LORA_INIT_FILE} has no values for ${p.name}`, file);
    const n = p.shape.reduce((a, b) => a * b, 1);
    if (v.length !== n) throw new HollowcError(`${p.name}: ${v.length} values, train.onnx expects [${p.shape}]`, file);
    return { name: p.name, shape: p.shape, value: Float32Array.from(v), expAvg: new Float32Array(n), expAvgSq: new Float32Array(n) };
  });
}

export function writeCheckpoint(dir: string, state: TrainState, params: Param[]): string {
  fs.mkdirSync(dir, { recursive: true });
  const file = path.join(dir, CHECKPOINT_FILE);
  const tensors = new Map<string, SafeTensor>();
  for (const p of params) {
    tensors.set(p.name, float32Tensor(p.shape, p.value));
    tensors.set(`${p.name}.exp_avg`, float32Tensor(p.shape, p.expAvg));
    tensors.set(`${p.name}.exp_avg_sq`, float32Tensor(p.shape, p.expAvgSq));
  }
  const digest = writeSafetensors(file, tensors, { [STATE_KEY]: JSON.stringify(state), format: 'pt' });
  writeFileAtomic(path.join(dir, CHECKPOINT_STATE_FILE), JSON.stringify({ ...state, checkpoint: CHECKPOINT_FILE, sha256: digest }, null, 2) + '\n');
  return file;
}

export interface Checkpoint {
  state: TrainState;
  params: Map<string, { shape: number[]; value: Float32Array; expAvg: Float32Array; expAvgSq: Float32Array }>;
}

export function readCheckpoint(file: string): Checkpoint {
  const { tensors, metadata } = readSafetensors(file);
  const text = metadata[STATE_KEY];
  if (!text) throw new HollowcError(`not a hollowc training checkpoint (no ${STATE_KEY} metadata)`, file);
  const state = JSON.parse(text) as TrainState;
  const params: Checkpoint['params'] = new Map();
  for (const name of state.params) {
    const get = (key: string) => {
      const t = tensors.get(key);
      if (!t) throw new HollowcError(`checkpoint lacks ${key}`, file);
      return t;
    };
    const v = get(name);
    params.set(name, { shape: v.shape, value: toFloat32(v, name), expAvg: toFloat32(get(`${name}.exp_avg`)), expAvgSq: toFloat32(get(`${name}.exp_avg_sq`)) });
  }
  return { state, params };
}

/** LoRA values by module, as lora-file.ts writes them, from train.onnx parameter values. */
export function loraModules(manifest: CompileManifest, values: Map<string, Float32Array>): LoraModuleValues[] {
  return manifest.lora.targets
    .filter((t) => t.trained && values.has(t.lora_A.name))
    .map((t) => ({ module: t.module, a: { shape: t.lora_A.shape, data: values.get(t.lora_A.name)! }, b: { shape: t.lora_B.shape, data: values.get(t.lora_B.name)! } }));
}

function truncateLossLog(file: string, lastStep: number): void {
  if (!fs.existsSync(file)) return;
  const kept = fs
    .readFileSync(file, 'utf8')
    .split('\n')
    .filter((line) => {
      if (!line.trim()) return false;
      try {
        return (JSON.parse(line) as { step: number }).step <= lastStep;
      } catch {
        return false; // a line cut short by the kill
      }
    });
  writeFileAtomic(file, kept.map((l) => `${l}\n`).join(''));
}

/**
 * Session options for train.onnx. Graph optimization defaults to 'basic': at 'all' onnxruntime
 * also rewrites convolutions to its blocked NCHWc layout, which keeps reordered copies of the
 * frozen conv weights for the forward and the backward convolutions; on full SD 2.1 that cost
 * 1.2 GiB of peak RSS (5078 vs 3843 MiB) and made steps slower. The memory pattern is off too
 * (see SessionOptions.memPattern).
 */
function trainingSession(options: { session?: SessionTuning; ep?: ExecutionProvider; fallbackToCpu?: boolean }) {
  return { ...options.session, optimization: options.session?.optimization ?? 'basic', memPattern: false, ep: options.ep, fallbackToCpu: options.fallbackToCpu };
}

export async function train(options: TrainOptions): Promise<TrainResult> {
  const started = Date.now();
  const out = options.out;
  const manifest = loadManifest(out);
  const settings = trainingSettings(manifest);
  const { store } = Store.open(options.storeDir ?? path.join(out, 'store'), { readOnly: true });
  const trainDir = path.join(out, TRAIN_DIR);
  const checkpointFile = path.join(trainDir, CHECKPOINT_FILE);
  const lossFile = path.join(trainDir, LOSS_LOG_FILE);
  let session: ort.InferenceSession | undefined;
  let lossFd: number | undefined;
  try {
    const graph = describeTrainGraph(out, manifest, store);
    const steps = options.steps ?? settings.steps;
    if (!(Number.isInteger(steps) && steps > 0)) throw new HollowcError(`--steps must be a positive integer, got ${steps}`);
    const every = options.checkpointEvery ?? settings.checkpointEvery;
    if (!(Number.isInteger(every) && every > 0)) throw new HollowcError(`--checkpoint-every must be a positive integer, got ${every}`);

    let params: Param[];
    let startStep = 0;
    let seed = options.seed ?? settings.seed;
    let lr = options.lr ?? settings.lr;
    const haveCheckpoint = fs.existsSync(checkpointFile);
    if (options.resume) {
      if (!haveCheckpoint) throw new HollowcError(`nothing to resume: no ${CHECKPOINT_FILE} (a run writes one every --checkpoint-every steps)`, trainDir);
      const cp = readCheckpoint(checkpointFile);
      const s = cp.state;
      if (options.seed !== undefined && options.seed !== s.seed) throw new HollowcError(`--seed ${options.seed} differs from the checkpoint's seed ${s.seed}: a resumed run keeps its seed`, checkpointFile);
      if (s.storeRecords !== store.count || s.storeFingerprint !== store.header.fingerprint) {
        throw new HollowcError(`the store changed since this checkpoint (${s.storeRecords} records then, ${store.count} now): resume needs the same store, or start over with --restart`, checkpointFile);
      }
      if (s.batch !== graph.batch) throw new HollowcError(`the checkpoint was trained with batch ${s.batch}, train.onnx now takes ${graph.batch}`, checkpointFile);
      seed = s.seed;
      lr = options.lr ?? s.lr;
      startStep = s.step;
      params = graph.params.map((p) => {
        const v = cp.params.get(p.name);
        if (!v || v.shape.join() !== p.shape.join()) throw new HollowcError(`the checkpoint has no ${p.name} of shape [${p.shape}]: it belongs to another compile`, checkpointFile);
        return { name: p.name, shape: p.shape, value: v.value, expAvg: v.expAvg, expAvgSq: v.expAvgSq };
      });
      truncateLossLog(lossFile, startStep);
    } else {
      if (haveCheckpoint && !options.restart) {
        const s = readCheckpoint(checkpointFile).state;
        throw new HollowcError(`a training run is checkpointed here at step ${s.step}: pass --resume to continue it or --restart to discard it`, trainDir);
      }
      for (const f of [CHECKPOINT_FILE, CHECKPOINT_STATE_FILE, LOSS_LOG_FILE]) fs.rmSync(path.join(trainDir, f), { force: true });
      params = initialParams(out, manifest, graph);
    }
    if (!(lr >= 0 && Number.isFinite(lr))) throw new HollowcError(`--lr must be a finite number >= 0, got ${lr}`);

    const order = new SampleOrder(seed, store.count, graph.batch);
    const stateAt = (step: number): TrainState => ({
      version: 1,
      step,
      seed,
      lr,
      batch: graph.batch,
      storeRecords: store.count,
      storeFingerprint: store.header.fingerprint,
      position: order.positionAfter(step),
      params: params.map((p) => p.name),
    });
    const checkpoint = (step: number) => {
      if (lossFd !== undefined) fs.fsyncSync(lossFd);
      const file = writeCheckpoint(trainDir, stateAt(step), params);
      options.onCheckpoint?.(step, file);
    };

    fs.mkdirSync(trainDir, { recursive: true });
    const losses: TrainResult['losses'] = [];
    let lastCheckpoint = options.resume ? startStep : -1;
    let evaluation: TrainResult['evaluation'];
    let stepSeconds = 0;
    if (startStep < steps || options.evaluate) session = await createSession(graph.file, trainingSession(options));
    const evalBatches = options.evaluate?.batches;
    const before = evalBatches !== undefined ? await lossAtRest(session!, graph, store, params, evalBatches, settings.priorWeight) : undefined;
    if (startStep < steps) {
      const active = session!;
      lossFd = fs.openSync(lossFile, 'a');
      const runStart = Date.now();
      for (let step = startStep + 1; step <= steps; step++) {
        const records = order.batchFor(step).map((i) => store.read(i));
        const feeds = { ...dataFeeds(graph, store, records, settings.priorWeight), ...paramFeeds(graph, params, lr, step) };
        const result = await active.run(feeds, graph.outputs);
        const loss = readLoss(result.loss);
        if (!Number.isFinite(loss)) {
          const kept = lastCheckpoint > 0 ? `the last good checkpoint (step ${lastCheckpoint}) is kept in ${checkpointFile}` : 'no checkpoint was written yet';
          throw new HollowcError(`step ${step}: the loss is ${loss} (records ${records.map((r) => r.index).join(', ')}); training stopped and ${kept}. Lower --lr or check the data`);
        }
        for (const p of params) {
          p.value = float32Data(result[`${p.name}.updated`], `${p.name}.updated`);
          p.expAvg = float32Data(result[`${p.name}.exp_avg.updated`], `${p.name}.exp_avg.updated`);
          p.expAvgSq = float32Data(result[`${p.name}.exp_avg_sq.updated`], `${p.name}.exp_avg_sq.updated`);
        }
        losses.push({ step, loss });
        const runSeconds = (Date.now() - runStart) / 1000;
        fs.writeSync(lossFd, JSON.stringify({ step, loss, lr, elapsed_s: Number(runSeconds.toFixed(3)) }) + '\n');
        if (step % every === 0 || step === steps) {
          checkpoint(step);
          lastCheckpoint = step;
        }
        options.onStep?.({ step, steps, loss, runSteps: step - startStep, runSeconds });
      }
      stepSeconds = (Date.now() - runStart) / 1000;
    }
    if (before !== undefined) {
      const after = await lossAtRest(session!, graph, store, params, evalBatches!, settings.priorWeight);
      evaluation = { before, after, batches: Math.max(1, Math.min(evalBatches!, Math.ceil(store.count / graph.batch))) };
    }
    // The LoRA of where the run stands: its last step, or the checkpoint's when it was there already.
    const loraFile = path.join(out, LORA_FILE);
    const values = new Map(params.map((p) => [p.name, p.value]));
    writeLoraFile(loraFile, 'peft', { rank: manifest.lora.rank, alpha: manifest.lora.alpha, modules: loraModules(manifest, values) }, { hollowc_steps: String(Math.max(steps, startStep)), hollowc_seed: String(seed) });
    return { startStep, step: Math.max(steps, startStep), losses, checkpointFile, loraFile, seconds: (Date.now() - started) / 1000, stepSeconds, batch: graph.batch, evaluation };
  } finally {
    if (lossFd !== undefined) fs.closeSync(lossFd);
    store.close();
    await session?.release();
  }
}

export interface EvaluateOptions {
  out: string;
  /** LoRA values by train.onnx parameter name; default: lora-init. */
  params?: Map<string, Float32Array>;
  /** How many batches (records in store order, from the first) to average over. */
  batches?: number;
  storeDir?: string;
  ep?: ExecutionProvider;
  session?: SessionTuning;
}

/**
 * The loss of a LoRA on the store without training: train.onnx with lr = 0 (AdamW then leaves
 * every parameter as it is), over the first `batches` batches in store order.
 */
export async function evaluateLoss(options: EvaluateOptions): Promise<number> {
  const manifest = loadManifest(options.out);
  const settings = trainingSettings(manifest);
  const { store } = Store.open(options.storeDir ?? path.join(options.out, 'store'), { readOnly: true });
  let session: ort.InferenceSession | undefined;
  try {
    const graph = describeTrainGraph(options.out, manifest, store);
    const params = initialParams(options.out, manifest, graph);
    if (options.params) for (const p of params) p.value = Float32Array.from(options.params.get(p.name) ?? p.value);
    session = await createSession(graph.file, trainingSession(options));
    return await lossAtRest(session, graph, store, params, options.batches ?? Math.ceil(store.count / graph.batch), settings.priorWeight);
  } finally {
    store.close();
    await session?.release();
  }
}

/** LoRA tensors (train.onnx names) of a checkpoint or a LoRA file, for evaluation and export. */
export function paramsFromCheckpoint(file: string): Map<string, Float32Array> {
  const cp = readCheckpoint(file);
  return new Map([...cp.params].map(([name, v]) => [name, v.value]));
}
