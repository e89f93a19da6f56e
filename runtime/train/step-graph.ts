/**
 * The training step's interface as the trainer sees it, in one of two optimizer modes, and its
 * checks against the store:
 *
 * - graph: train.onnx. Inputs = the hollowed net's (`sample`, `timestep`, `encoder_hidden_states`
 *   [+ SDXL `text_embeds`, `time_ids`], `hollow_activation`) + `target` + `loss_weight` [B] + every
 *   LoRA tensor + `lr` + `step` (1-based) + each LoRA tensor's AdamW moments; outputs `loss` and the
 *   `.updated` value of every LoRA tensor and moment. One `session.run` per step, nothing else.
 * - host: grads.onnx. The same data inputs and LoRA tensors; outputs `loss` and `<param>.grad`;
 *   AdamW then updates the LoRA tensors and moments in place on the host (host-adamw.ts); the only
 *   mode for 8-bit moments (`optimizer adamw8bit`).
 *
 * Under `train base` the base weights that train (the manifest's `trainBase`) are parameters too,
 * after the LoRA tensors, fed and updated as they are.
 *
 * Static input shapes fix the batch. Names come from the artifact contract (compiler/manifest).
 * Feeding a step is step-tensors.ts, running it step-runner.ts, its session step-session.ts.
 */
import * as path from 'path';
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
  GradientPrecision,
  gradientName,
  gradientScaleName,
  isLoraParam,
  optimizerStateOwner,
  updatedName,
} from '../../compiler/manifest';
import { requireArtifact, staticShape } from '../ort/artifacts';
import { storeCompileStamp } from '../store/precompute';
import type { Store } from '../store/store';

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
  /** How grads.onnx hands over the gradients (`gradients fp16`: float16, each with a float32 `<param>.grad_scale`). */
  gradients: GradientPrecision;
  /** The artifact's session config entries (manifest), e.g. for float16 weights. */
  sessionConfig?: Record<string, string>;
  /** The artifact's sessions need onnxruntime's CPU arena (manifest; passes/memory/release-dead-buffers.ts). */
  cpuArena?: boolean;
}

/** The outputs one step reads back for a parameter: its value and both moments, updated. */
export function updatedOutputs(param: string): [string, string, string] {
  return [updatedName(param), updatedName(expAvgName(param)), updatedName(expAvgSqName(param))];
}

/**
 * The optimizer mode a run uses: the one asked for, else host when the folder has grads.onnx (it
 * needs less memory per step), else graph.
 */
export function chooseOptimizer(out: string, manifest: CompileManifest, asked?: OptimizerMode): OptimizerMode {
  if (manifest.training.optimizer.state === '8bit') {
    // 8-bit moments are the host optimizer's (adamw8bit.ts): train.onnx keeps float32 ones.
    if (asked === 'graph')
      throw new HollowcError('--optimizer graph: this folder was compiled with optimizer adamw8bit, whose 8-bit moments only the host optimizer keeps: use --optimizer host', out);
    requireArtifact(out, manifest, 'grads', 'the 8-bit optimizer state (optimizer adamw8bit)');
    return 'host';
  }
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
  // LoRA tensors and the base weights that train (`train base`), in the graph's input order.
  const base = new Set((manifest.trainBase ?? []).map((p) => p.name));
  const params = artifact.inputs
    .filter((i) => isLoraParam(i.name) || base.has(i.name))
    .map((i) => ({ name: i.name, shape: staticShape(i, artifact.path) }));
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
  if (!params.length) throw new HollowcError(`${label} has no LoRA or base weight inputs`, artifact.path);
  const missingBase = [...base].filter((n) => !inputs.has(n));
  if (missingBase.length) throw new HollowcError(`${label} has no input for the trained base weight ${missingBase[0]}`, artifact.path);
  const gradients = mode === 'host' ? gradientPrecisionOf(artifact, params[0].name) : 'fp32';
  const outputs = [
    LOSS,
    ...params.flatMap((p) =>
      mode === 'graph' ? updatedOutputs(p.name) : gradients === 'fp16' ? [gradientName(p.name), gradientScaleName(p.name)] : [gradientName(p.name)],
    ),
  ];
  const declared = new Set(artifact.outputs.map((o) => o.name));
  const missing = outputs.filter((o) => !declared.has(o));
  if (missing.length)
    throw new HollowcError(`${label} lacks output${missing.length > 1 ? 's' : ''} ${missing.slice(0, 3).join(', ')}`, artifact.path);
  const batch = staticShape(inputs.get(SAMPLE)!, artifact.path)[0];
  if (store) {
    checkStoreCompile(manifest, store);
    checkStoreShapes(inputs, batch, store, artifact.path);
  }
  return { mode, file: artifact.path, batch, inputs, params, outputs, gradients, sessionConfig: artifact.sessionConfig, cpuArena: artifact.cpuArena };
}

/** grads.onnx's gradient outputs are float16 (`gradients fp16`) or float32, as the artifact declares them. */
function gradientPrecisionOf(artifact: { outputs: readonly TensorDescription[] }, param: string): GradientPrecision {
  const dtype = artifact.outputs.find((o) => o.name === gradientName(param))?.dtype;
  return dtype === 'float16' ? 'fp16' : 'fp32';
}

/** A store precomputed for another compile (model or cut) would train on the wrong activations. */
function checkStoreCompile(manifest: CompileManifest, store: Store): void {
  const stamp = store.header.extra as Partial<ReturnType<typeof storeCompileStamp>> | undefined;
  const want = storeCompileStamp(manifest);
  const otherWeights = stamp?.identity !== undefined && want.identity !== undefined && stamp.identity !== want.identity;
  if (stamp?.model !== undefined && (stamp.model !== want.model || stamp.cut !== want.cut || otherWeights)) {
    throw new HollowcError(
      `the store was precomputed for another compile (model ${(otherWeights ? stamp.identity! : stamp.model).slice(0, 12)}, cut after ${stamp.cut}; this folder: model ${(otherWeights ? want.identity! : want.model).slice(0, 12)}, cut after ${want.cut}): precompute a new store`,
      store.dir,
    );
  }
}

function checkStoreShapes(inputs: Map<string, TensorDescription>, batch: number, store: Store, file: string): void {
  const expect = (name: string, shape: readonly number[], what: string) => {
    const d = inputs.get(name);
    if (!d) return;
    const s = staticShape(d, file);
    if (s.join() !== [batch, ...shape].join())
      throw new HollowcError(
        `${path.basename(file)} takes ${name} [${s}] but the store holds ${what} [${shape}] per sample: precompute with data of the compiled shapes`,
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
