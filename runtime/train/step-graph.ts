/**
 * The training step as the trainer sees it, in one of two optimizer modes:
 *
 * - graph: train.onnx. Inputs = the hollowed net's (`sample`, `timestep`, `encoder_hidden_states`
 *   [+ SDXL `text_embeds`, `time_ids`], `hollow_activation`) + `target` + `loss_weight` [B] + every
 *   LoRA tensor + `lr` + `step` (1-based) + each LoRA tensor's AdamW moments; outputs `loss` and the
 *   `.updated` value of every LoRA tensor and moment. One `session.run` per step, nothing else.
 * - host: grads.onnx. The same data inputs and LoRA tensors; outputs `loss` and `<param>.grad`,
 *   written into gradient buffers the runtime allocates once; AdamW then updates the LoRA tensors
 *   and moments in place on the host (host-adamw.ts). No new parameter or moment tensors per step.
 *
 * Static input shapes fix the batch. Names come from the artifact contract (compiler/manifest).
 */
import * as ort from 'onnxruntime-node';
import * as fs from 'fs';
import * as path from 'path';
import * as v8 from 'v8';
import * as vm from 'vm';
import { HollowcError } from '../../compiler/errors';
import {
  CompileManifest,
  ENCODER_HIDDEN_STATES,
  HOLLOW_ACTIVATION,
  LEARNING_RATE,
  LOSS,
  LOSS_WEIGHT,
  SAMPLE,
  STEP,
  TARGET,
  TensorDescription,
  TEXT_EMBEDS,
  TIMESTEP,
  TIME_IDS,
  expAvgName,
  expAvgSqName,
  gradientName,
  isLoraParam,
  optimizerStateOwner,
  updatedName,
} from '../../compiler/manifest';
import { float32Data, requireArtifact, scalarFor, staticShape, tensorFor, timestepFor } from '../ort/artifacts';
import type { ParamState } from './checkpoint';
import { stepDataValues } from './step-feeds';
import { HostAdamW } from './host-adamw';
import { readLoraForManifest } from '../formats/lora-file';
import { LORA_INIT_FILE } from '../formats/lora-format';
import { storeCompileStamp } from '../store/precompute';
import { ExecutionProvider, SessionOptions, SessionTuning } from '../ort/session';
import { Store, StoreRecord } from '../store/store';

const DATA_INPUTS = new Set([SAMPLE, TIMESTEP, ENCODER_HIDDEN_STATES, TEXT_EMBEDS, TIME_IDS, HOLLOW_ACTIVATION, TARGET, LOSS_WEIGHT]);

/** Where the AdamW step runs: in train.onnx, or on the host after grads.onnx. */
export type OptimizerMode = 'graph' | 'host';
export const OPTIMIZER_MODES: readonly OptimizerMode[] = ['graph', 'host'];

export interface TrainGraph {
  mode: OptimizerMode;
  file: string;
  batch: number;
  inputs: Map<string, TensorDescription>;
  params: { name: string; shape: number[] }[];
  outputs: string[];
  /** The artifact's session config entries (manifest), e.g. for float16 weights. */
  sessionConfig?: Record<string, string>;
  /** The artifact's sessions need onnxruntime's CPU arena (manifest; passes/memory/release-dead-buffers.ts). */
  cpuArena?: boolean;
}

/** The outputs one step reads back for a parameter: its value and both moments, updated. */
function updatedOutputs(param: string): [string, string, string] {
  return [updatedName(param), updatedName(expAvgName(param)), updatedName(expAvgSqName(param))];
}

/**
 * The optimizer mode a run uses: the one asked for, else host when the folder has grads.onnx (it
 * needs less memory per step), else graph.
 */
export function chooseOptimizer(out: string, manifest: CompileManifest, asked?: OptimizerMode): OptimizerMode {
  if (asked === 'host') requireArtifact(out, manifest, 'grads', 'the host-side optimizer (--optimizer host)');
  if (asked === 'graph') requireArtifact(out, manifest, 'train', 'the in-graph optimizer (--optimizer graph)');
  if (asked) return asked;
  if (manifest.artifacts.grads) return 'host';
  requireArtifact(out, manifest, 'train', 'training');
  return 'graph';
}

/** The step graph's interface from the manifest (train.onnx or grads.onnx), checked against the store when one is given. */
export function describeTrainGraph(out: string, manifest: CompileManifest, store?: Store, mode: OptimizerMode = 'graph'): TrainGraph {
  const artifact = requireArtifact(out, manifest, mode === 'host' ? 'grads' : 'train', 'training');
  const label = path.basename(artifact.path);
  const inputs = new Map(artifact.inputs.map((i) => [i.name, i]));
  const params = artifact.inputs.filter((i) => isLoraParam(i.name)).map((i) => ({ name: i.name, shape: staticShape(i, artifact.path) }));
  const paramNames = new Set(params.map((p) => p.name));
  const optimizerInput = (name: string) =>
    mode === 'graph' && (name === LEARNING_RATE || name === STEP || optimizerStateOwner(name, paramNames) !== undefined);
  for (const i of artifact.inputs) {
    const known = DATA_INPUTS.has(i.name) || paramNames.has(i.name) || optimizerInput(i.name);
    if (!known) throw new HollowcError(`${label} input ${i.name} is not one the trainer knows how to feed`, artifact.path);
  }
  // `hollow none` (plain LoRA fine-tuning, no precompute) has no hollow activation.
  for (const required of [
    SAMPLE,
    ...(manifest.cut ? [HOLLOW_ACTIVATION] : []),
    TARGET,
    LOSS_WEIGHT,
    ...(mode === 'graph' ? [LEARNING_RATE, STEP] : []),
  ]) {
    if (!inputs.has(required)) throw new HollowcError(`${label} has no input ${required}`, artifact.path);
  }
  if (!params.length) throw new HollowcError(`${label} has no LoRA inputs`, artifact.path);
  const outputs = [LOSS, ...params.flatMap((p) => (mode === 'graph' ? updatedOutputs(p.name) : [gradientName(p.name)]))];
  const declared = new Set(artifact.outputs.map((o) => o.name));
  const missing = outputs.filter((o) => !declared.has(o));
  if (missing.length)
    throw new HollowcError(`${label} lacks output${missing.length > 1 ? 's' : ''} ${missing.slice(0, 3).join(', ')}`, artifact.path);
  const batch = staticShape(inputs.get(SAMPLE)!, artifact.path)[0];
  if (store) {
    checkStoreCompile(manifest, store);
    checkStoreShapes(inputs, batch, store, artifact.path);
  }
  return { mode, file: artifact.path, batch, inputs, params, outputs, sessionConfig: artifact.sessionConfig, cpuArena: artifact.cpuArena };
}

/** A store precomputed for another compile (model or cut) would train on the wrong activations. */
function checkStoreCompile(manifest: CompileManifest, store: Store): void {
  const stamp = store.header.extra as Partial<ReturnType<typeof storeCompileStamp>> | undefined;
  const want = storeCompileStamp(manifest);
  if (stamp?.model !== undefined && (stamp.model !== want.model || stamp.cut !== want.cut)) {
    throw new HollowcError(
      `the store was precomputed for another compile (model ${stamp.model.slice(0, 12)}, cut after ${stamp.cut}; this folder: model ${want.model.slice(0, 12)}, cut after ${want.cut}): precompute a new store`,
      store.dir,
    );
  }
}

function checkStoreShapes(inputs: Map<string, TensorDescription>, batch: number, store: Store, label: string): void {
  const expect = (name: string, shape: readonly number[], what: string) => {
    const d = inputs.get(name);
    if (!d) return;
    const s = staticShape(d, label);
    if (s.join() !== [batch, ...shape].join())
      throw new HollowcError(
        `train.onnx takes ${name} [${s}] but the store holds ${what} [${shape}] per sample: precompute with data of the compiled shapes`,
        store.dir,
      );
  };
  expect(SAMPLE, store.header.latentShape, 'latents');
  expect(TARGET, store.header.latentShape, 'targets');
  expect(HOLLOW_ACTIVATION, store.header.activationShape, 'hollow activations');
  const c = store.conditioning(0);
  expect(ENCODER_HIDDEN_STATES, c.encoderHiddenStates.shape, ENCODER_HIDDEN_STATES);
  if (c.textEmbeds) expect(TEXT_EMBEDS, c.textEmbeds.shape, TEXT_EMBEDS);
}

/** Feeds for one step's data inputs (everything but parameters, moments, lr and step). */
export function dataFeeds(graph: TrainGraph, store: Store, records: StoreRecord[], priorWeight: number): Record<string, ort.Tensor> {
  const feeds: Record<string, ort.Tensor> = {};
  for (const [name, f] of stepDataValues((n) => graph.inputs.has(n), store, records, priorWeight, store.dir))
    feeds[name] =
      name === TIMESTEP ? timestepFor(graph.inputs.get(name), f.values as number[]) : tensorFor(graph.inputs.get(name), f.values, f.dims);
  return feeds;
}

export function paramFeeds(graph: TrainGraph, params: readonly ParamState[], lr: number, step: number): Record<string, ort.Tensor> {
  const feeds: Record<string, ort.Tensor> = {};
  for (const p of params) {
    feeds[p.name] = new ort.Tensor('float32', p.value, p.shape);
    if (graph.mode === 'host') continue;
    feeds[expAvgName(p.name)] = new ort.Tensor('float32', p.expAvg, p.shape);
    feeds[expAvgSqName(p.name)] = new ort.Tensor('float32', p.expAvgSq, p.shape);
  }
  if (graph.mode === 'host') return feeds;
  feeds[LEARNING_RATE] = scalarFor(graph.inputs.get(LEARNING_RATE), lr);
  feeds[STEP] = scalarFor(graph.inputs.get(STEP), step);
  return feeds;
}

let collector: (() => void) | undefined;

/**
 * V8's full collection (the process's `gc` when node runs with --expose-gc). A step's outputs come
 * back as copies, external memory that V8 frees only at a collection, and while the next step
 * runs no JavaScript allocates to start one: the last step's copies stayed resident through the
 * whole next step. SDXL at 1024 px, r128: 601 MiB of gradients; 2 steps peaked at 6153 MiB in the
 * middle of step 2 against 6094 at the end of a lone step 1.
 */
function collectGarbage(): void {
  if (!collector) {
    const exposed = (globalThis as { gc?: () => void }).gc;
    if (!exposed) v8.setFlagsFromString('--expose-gc');
    collector = exposed ?? (vm.runInNewContext('gc') as () => void);
  }
  collector();
}

/**
 * Runs training steps on one session in either mode. Host mode applies AdamW in place with the
 * gradients the step returns. They are not pre-allocated fetches: onnxruntime-node 1.30 fills a
 * pre-allocated output in place but still returns a copy of it, so a persistent set of gradient
 * buffers only added their size to every step's peak (full SD 2.1 39.2%, r128: 92 MiB held,
 * peak 82 MiB lower without them). The returned copies are collected after each step
 * (collectGarbage), before the next one runs.
 */
export class StepRunner {
  private readonly adamw?: HostAdamW;

  constructor(
    private readonly session: ort.InferenceSession,
    private readonly graph: TrainGraph,
    optimizer: CompileManifest['training']['optimizer'],
  ) {
    if (graph.mode === 'host') this.adamw = new HostAdamW(optimizer);
  }

  /** One step `step` (1-based) on `data`: updates `params` (values and moments) and returns the loss. */
  async step(
    data: Record<string, ort.Tensor>,
    params: ParamState[],
    lr: number,
    step: number,
    accept: (loss: number) => void = () => {},
  ): Promise<number> {
    const loss = await this.update(data, params, lr, step, accept);
    // The step's outputs are garbage once applied (update's frame is gone): free them now.
    collectGarbage();
    return loss;
  }

  private async update(
    data: Record<string, ort.Tensor>,
    params: ParamState[],
    lr: number,
    step: number,
    accept: (loss: number) => void,
  ): Promise<number> {
    const result = await this.session.run({ ...data, ...paramFeeds(this.graph, params, lr, step) }, this.graph.outputs);
    const loss = readLoss(result);
    // The caller may refuse the step (a NaN loss) before any parameter changes.
    accept(loss);
    if (this.graph.mode === 'graph') applyUpdates(params, result);
    else
      this.adamw!.step(
        params,
        params.map((p) => float32Data(result[gradientName(p.name)], gradientName(p.name))),
        lr,
        step,
      );
    return loss;
  }
}

/** Takes one step's updated values and moments from its outputs. */
export function applyUpdates(params: ParamState[], result: ort.InferenceSession.OnnxValueMapType): void {
  for (const p of params) {
    const [value, expAvg, expAvgSq] = updatedOutputs(p.name);
    p.value = float32Data(result[value], value);
    p.expAvg = float32Data(result[expAvg], expAvg);
    p.expAvgSq = float32Data(result[expAvgSq], expAvgSq);
  }
}

export function readLoss(result: ort.InferenceSession.OnnxValueMapType): number {
  const t = result[LOSS];
  if (!t) throw new HollowcError('the training step returned no loss');
  return Number((t.data as Float32Array | Float64Array)[0]);
}

/** Mean loss over the first `batches` batches (of `indices`, default every record) in store order, at lr = 0 (in graph mode AdamW then changes nothing; host mode runs no optimizer). */
export async function lossAtRest(
  session: ort.InferenceSession,
  graph: TrainGraph,
  store: Store,
  params: readonly ParamState[],
  batches: number,
  priorWeight: number,
  indices?: readonly number[],
): Promise<number> {
  const pool = indices ?? Array.from({ length: store.count }, (_, i) => i);
  const n = Math.max(1, Math.min(batches, Math.ceil(pool.length / graph.batch)));
  let sum = 0;
  for (let b = 0; b < n; b++) {
    const records = Array.from({ length: graph.batch }, (_, k) => store.read(pool[(b * graph.batch + k) % pool.length]));
    sum += readLoss(await session.run({ ...dataFeeds(graph, store, records, priorWeight), ...paramFeeds(graph, params, 0, 1) }, [LOSS]));
  }
  return sum / n;
}

/** How many batches an evaluation over `asked` batches averages: at least one, at most the store. */
export function evaluationBatches(graph: TrainGraph, store: Store, asked: number): number {
  return Math.max(1, Math.min(asked, Math.ceil(store.count / graph.batch)));
}

/** The LoRA a fresh run starts from: `<out>/lora-init.safetensors` (written by compile). */
export function initialParams(out: string, manifest: CompileManifest, graph: TrainGraph): ParamState[] {
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

/**
 * The compiler recomputes cheap activations in the backward with clones of forward nodes
 * (passes/memory/rematerialize.ts); onnxruntime's common-subexpression elimination would merge each clone
 * back into its original and keep the activation alive again.
 */
export const TRAINING_SESSION_CONFIG: Readonly<Record<string, string>> = {
  'optimization.disable_specified_optimizers': 'CommonSubexpressionElimination',
};

/**
 * Session options for train.onnx and grads.onnx. Graph optimization defaults to 'basic': at 'all' onnxruntime
 * also rewrites convolutions to its blocked NCHWc layout, which keeps reordered copies of the
 * frozen conv weights for the forward and the backward convolutions; on full SD 2.1 that cost
 * 1.2 GiB of peak RSS (5078 vs 3843 MiB) and made steps slower. The memory pattern is off too
 * (see SessionOptions.memPattern), and CSE (TRAINING_SESSION_CONFIG).
 */
export function trainingSession(options: { session?: SessionTuning; ep?: ExecutionProvider; fallbackToCpu?: boolean }): SessionOptions {
  return {
    ...options.session,
    optimization: options.session?.optimization ?? 'basic',
    memPattern: false,
    config: TRAINING_SESSION_CONFIG,
    ep: options.ep,
    fallbackToCpu: options.fallbackToCpu,
  };
}
