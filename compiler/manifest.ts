/**
 * The artifact contract: the one thing compiling and running share. `compile` writes a folder
 * of ONNX artifacts and `manifest.json`; the runtime reads the folder through this module only.
 * Every input/output name that crosses that boundary, the LoRA and optimizer-state naming, the
 * manifest's types and its validation live here, so neither side spells them on its own.
 */
import * as fs from 'fs';
import * as path from 'path';
import { HollowcError } from './errors';
import { Dim } from './ir';

/** Written as the manifest's `hollowc` field; bumped when a field changes meaning. */
export const MANIFEST_FORMAT = '2';
export const MANIFEST_FILE = 'manifest.json';
export const WEIGHTS_FILE = 'weights.onnx_data';

export const ARTIFACT_NAMES = ['precompute', 'forward', 'infer', 'grads', 'train'] as const;
/** How the training graphs hold the frozen base weights (the spec's `base` line). */
export const BASE_PRECISIONS = ['fp32', 'int8', 'fp16'] as const;
export type BasePrecision = (typeof BASE_PRECISIONS)[number];
/**
 * What the training graphs recompute in the backward instead of keeping from the forward (the
 * spec's `recompute` line): `cheap` values a few elementwise ops or one matmul from kept ones,
 * `blocks` also every value inside a transformer block, from the block's input.
 */
export const RECOMPUTE_MODES = ['cheap', 'blocks'] as const;
export type RecomputeMode = (typeof RECOMPUTE_MODES)[number];
/**
 * What the spec's `chunks` line sizes, in bytes: a block of an attention map in the training graphs
 * (split-attention), a feed-forward block's widest tensor (chunk-feed-forward), a convolution
 * gradient's column buffer (band-conv-gradients), a block of an attention map in precompute.onnx and
 * infer.onnx (chunk-attention). Absent: the passes' defaults.
 */
export type ChunkKind = 'attention' | 'feed_forward' | 'conv_gradient' | 'infer_attention';
export type ChunkSizes = Partial<Record<ChunkKind, number>>;
/** How infer.onnx takes the LoRA tensors (the spec's `lora infer` line); training keeps them fp32. */
export const INFER_LORA_PRECISIONS = ['fp32', 'fp16'] as const;
export type InferLoraPrecision = (typeof INFER_LORA_PRECISIONS)[number];
/**
 * How grads.onnx hands each gradient to the host optimizer (the spec's `gradients` line): float32,
 * or float16 scaled by the tensor's own largest magnitude, which halves the gradients' memory at the
 * step's end, where onnxruntime's outputs and the copies JavaScript receives both exist.
 */
export const GRADIENT_PRECISIONS = ['fp32', 'fp16'] as const;
export type GradientPrecision = (typeof GRADIENT_PRECISIONS)[number];
/**
 * Under `gradients fp16` each gradient is multiplied by FLOAT16_GRADIENT_PEAK / max|g| before the
 * cast, so its largest magnitude lands on 2^15 (float16 reaches 65504): nothing overflows, and
 * values down to 2^-29 of the largest stay normal float16 numbers (11 significant bits).
 */
export const FLOAT16_GRADIENT_PEAK = 32768;
export type ArtifactName = (typeof ARTIFACT_NAMES)[number];

/** The UNet's own inputs and output (as torch.onnx.export of diffusers names them). */
export const SAMPLE = 'sample';
export const TIMESTEP = 'timestep';
export const ENCODER_HIDDEN_STATES = 'encoder_hidden_states';
export const TEXT_EMBEDS = 'text_embeds';
export const TIME_IDS = 'time_ids';
export const OUT_SAMPLE = 'out_sample';

/** precompute.onnx's output and the hollowed net's extra input. */
export const HOLLOW_ACTIVATION = 'hollow_activation';

/** Training inputs and outputs added by the loss and the optimizer. */
export const TARGET = 'target';
export const LOSS_WEIGHT = 'loss_weight';
export const LOSS = 'loss';
export const LEARNING_RATE = 'lr';
export const STEP = 'step';

/** infer.onnx: path 1 (the base path) takes the conditioning inputs under this prefix. */
export const BASE_CONDITIONING = [ENCODER_HIDDEN_STATES, TEXT_EMBEDS] as const;
export function baseInputName(name: string): string {
  return `base_${name}`;
}

/** peft names: `<module path>.lora_A.weight` [r, in] and `.lora_B.weight` [out, r]. */
export function loraParamNames(module: string): { a: string; b: string } {
  return { a: `${module}.lora_A.weight`, b: `${module}.lora_B.weight` };
}
const LORA_PARAM = /^(.+)\.lora_([AB])\.weight$/;
export function isLoraParam(name: string): boolean {
  return LORA_PARAM.test(name);
}
/** The module a LoRA tensor name belongs to, or undefined for other names. */
export function loraModuleOf(name: string): string | undefined {
  return LORA_PARAM.exec(name)?.[1];
}

/** AdamW state inputs of a parameter, and the `.updated` outputs train.onnx returns for them. */
export function expAvgName(param: string): string {
  return `${param}.exp_avg`;
}
export function expAvgSqName(param: string): string {
  return `${param}.exp_avg_sq`;
}
export function updatedName(name: string): string {
  return `${name}.updated`;
}
export function gradientName(param: string): string {
  return `${param}.grad`;
}
/** Under `gradients fp16`: the float32 scalar that turns `<param>.grad`'s float16 values back into the gradient. */
export function gradientScaleName(param: string): string {
  return `${param}.grad_scale`;
}
/**
 * How the AdamW moments are kept (the spec's `optimizer adamw` / `adamw8bit`): float32, or one
 * byte per value in blocks with a float32 scale each (the host optimizer only).
 */
export const OPTIMIZER_STATES = ['fp32', '8bit'] as const;
export type OptimizerState = (typeof OPTIMIZER_STATES)[number];

/**
 * 8-bit moments (`optimizer adamw8bit`): values per block, each block with one float32 scale, and
 * the smallest tensor that gets them (smaller ones keep float32 moments), as bitsandbytes does.
 */
export const QUANTIZED_STATE_BLOCK = 256;
export const MIN_QUANTIZED_STATE_VALUES = 4096;

/** Bytes of a tensor's two AdamW moments under `state`. */
export function momentBytes(values: number, state: OptimizerState | undefined): number {
  if (state !== '8bit' || values < MIN_QUANTIZED_STATE_VALUES) return 8 * values;
  return 2 * (values + 4 * Math.ceil(values / QUANTIZED_STATE_BLOCK));
}

/** An 8-bit moment in a checkpoint: its bytes (U8, one per value) and its per-block float32 scales. */
export function quantizedCodesName(state: string): string {
  return `${state}.q8`;
}
export function quantizedScalesName(state: string): string {
  return `${state}.absmax`;
}

/** The parameter whose optimizer state `name` is, if it is one of `params`'s states. */
export function optimizerStateOwner(name: string, params: ReadonlySet<string>): string | undefined {
  for (const suffix of ['.exp_avg', '.exp_avg_sq']) {
    if (name.endsWith(suffix) && params.has(name.slice(0, -suffix.length))) return name.slice(0, -suffix.length);
  }
  return undefined;
}

/**
 * Node metadata key that marks the nodes a LoRA branch adds, with the module as value: later
 * rewrites (bake) find branches by this mark, not by node names.
 */
export const LORA_BRANCH_KEY = 'hollowc.lora_branch';

export type Prediction = 'epsilon' | 'v_prediction';

export interface TensorDescription {
  name: string;
  dtype: string;
  shape: Dim[];
}

/**
 * Session config entries for a graph holding float16 weights that the CPU provider computes in
 * float32 (passes/precision/float16-weights.ts): onnxruntime would otherwise turn each weight's Cast into a
 * float32 copy at session start (ConstantFolding; FuseFp16InitializerToFp32NodeTransformer at
 * 'all'). onnxruntime splits the list on ';' (a ',' list disables nothing).
 */
export const FLOAT16_WEIGHTS_SESSION_CONFIG: Readonly<Record<string, string>> = {
  'optimization.disable_specified_optimizers': 'ConstantFolding;FuseFp16InitializerToFp32NodeTransformer',
};

export interface ArtifactDescription {
  file: string;
  inputs: TensorDescription[];
  outputs: TensorDescription[];
  nodes: number;
  /**
   * onnxruntime session config entries (full keys) the artifact needs: float16 weights cast at each
   * use must not be constant-folded into float32 copies (passes/precision/float16-weights.ts).
   */
  sessionConfig?: Record<string, string>;
  /**
   * Run with onnxruntime's CPU arena on: the graph hides its static shapes from onnxruntime's buffer
   * reuse (passes/memory/release-dead-buffers.ts), so each tensor is allocated when produced and freed after
   * its last reader, and the arena lets the next tensor, of any size, take that memory.
   */
  cpuArena?: boolean;
}

export interface LoraTargetDescription {
  module: string;
  kind: 'linear' | 'conv';
  inFeatures: number;
  outFeatures: number;
  /** False for targets inside the hollow: they get no LoRA (they never run with it). */
  trained: boolean;
  lora_A: { name: string; shape: number[] };
  lora_B: { name: string; shape: number[] };
}

/** Everything `precompute` and `train` need from the spec, resolved at compile time. */
export interface TrainingSettings {
  prediction: Prediction;
  priorWeight: number;
  seed: number;
  lr: number;
  steps: number;
  batch: number;
  checkpointEvery: number;
  /** How grads.onnx and train.onnx hold the frozen base weights (precompute and infer keep the model's). */
  base: BasePrecision;
  /** What grads.onnx and train.onnx recompute in the backward (absent in manifests before it: `cheap`). */
  recompute: RecomputeMode;
  /** The spec's `shape` lines. */
  shapes: Record<string, number[]>;
  /** AdamW constants (train.onnx has them built in; a host-side optimizer reads them here). */
  optimizer: {
    betas: [number, number];
    eps: number;
    weightDecay: number;
    /** How the host optimizer keeps the moments (absent: fp32). */
    state?: OptimizerState;
    /** How grads.onnx outputs the gradients (absent: fp32). */
    gradients?: GradientPrecision;
  };
}

/**
 * A base weight the training graphs take as an input (the spec's `train base`): named by its
 * diffusers parameter name (`down_blocks.0.resnets.0.conv1.weight`) in torch's layout, as its
 * gradient `<name>.grad`, its checkpoint tensors and the exports name it. A weight the export
 * stores in another layout (pre-transposed `[in, out]`, a norm's `[C, 1, 1]`) is mapped inside
 * the graphs.
 */
export interface TrainedBaseParameter {
  name: string;
  module: string;
  /** torch's shape. */
  shape: number[];
  /** Its value before training: float32 little-endian, torch's layout, a byte range of one of the folder's `weights` files. */
  init: { file: string; offset: number; length: number };
}

export interface ManifestCut {
  /** The deepest down layer (paper id) the hollowed net keeps. */
  lastKeptDown: string;
  /** Hollowed layer ids, in layout order. */
  hollowed: string[];
  /** The hollowed module paths with whole blocks collapsed (e.g. `down_blocks.3`, `mid_block`). */
  hollowedBlocks: string[];
  firstKeptUp: string;
  hollowActivation: { tensor: string; shape: Dim[] };
  removedParameters: number;
  fraction: number;
}

/** The UNet a folder was compiled from. */
export interface ManifestModel {
  file: string;
  /** sha256 of the graph file's bytes. */
  sha256: string;
  parameters: number;
  /**
   * The UNet's identity (compiler/model-identity.ts: the graph's bytes, its weights files' names,
   * sizes and samples), checked where a folder is paired with a model. Absent in folders compiled
   * before it was recorded.
   */
  identity?: string;
  /** Every latent side the UNet takes is a multiple of this (2^downsamplers; models/latent-sizes.ts). */
  latentMultiple?: number;
}

export interface CompileManifest {
  /** The manifest format, MANIFEST_FORMAT. */
  hollowc: string;
  family: string;
  model: ManifestModel;
  cut: ManifestCut | null;
  /** `trainedBase`: values of the base weights that train (absent: none). */
  parameters: { full: number; heldDuringTraining: number; lora: number; trainedBase?: number };
  lora: { rank: number; alpha: number; scale: number; targets: LoraTargetDescription[] };
  /** The base weights that train, in the training graphs' input order (absent: none, LoRA only). */
  trainBase?: TrainedBaseParameter[];
  weights: string[];
  artifacts: Partial<Record<ArtifactName, ArtifactDescription>>;
  training: TrainingSettings;
  spec?: { file: string; sha256: string; text: string };
}

function shapeProblem(where: string, v: unknown): string | undefined {
  if (v === null || typeof v !== 'object') return `${where} is missing`;
  return undefined;
}

/** The first structural problem of a parsed manifest, or undefined. */
function manifestProblem(m: Record<string, unknown>): string | undefined {
  if (m.hollowc !== MANIFEST_FORMAT) {
    return m.hollowc === undefined
      ? 'it has no format version (field "hollowc")'
      : `it is format ${JSON.stringify(m.hollowc)} and this hollowc reads format ${MANIFEST_FORMAT}: compile again`;
  }
  if (typeof m.family !== 'string') return 'field "family" is missing';
  for (const key of ['model', 'parameters', 'lora', 'artifacts', 'training'] as const) {
    const p = shapeProblem(`field "${key}"`, m[key]);
    if (p) return p;
  }
  const model = m.model as Record<string, unknown>;
  if (model.identity !== undefined && typeof model.identity !== 'string') return 'field "model.identity" is not a string';
  if (model.latentMultiple !== undefined && !(Number.isInteger(model.latentMultiple) && (model.latentMultiple as number) > 0))
    return 'field "model.latentMultiple" is not a positive integer';
  const lora = m.lora as Record<string, unknown>;
  if (typeof lora.rank !== 'number' || typeof lora.alpha !== 'number' || typeof lora.scale !== 'number' || !Array.isArray(lora.targets))
    return 'field "lora" lacks rank, alpha, scale or targets';
  if (!Array.isArray(m.weights)) return 'field "weights" is missing';
  for (const [name, a] of Object.entries(m.artifacts as Record<string, unknown>)) {
    if (!(ARTIFACT_NAMES as readonly string[]).includes(name)) return `unknown artifact ${JSON.stringify(name)}`;
    const d = a as Partial<ArtifactDescription>;
    if (typeof d?.file !== 'string' || !Array.isArray(d.inputs) || !Array.isArray(d.outputs))
      return `artifact ${name} lacks file, inputs or outputs`;
    if (path.isAbsolute(d.file) || d.file.split(/[\\/]/).includes('..')) return `artifact ${name} points outside the folder (${d.file})`;
  }
  const t = m.training as Record<string, unknown>;
  for (const key of ['priorWeight', 'seed', 'lr', 'steps', 'batch', 'checkpointEvery'] as const) {
    if (typeof t[key] !== 'number') return `training setting "${key}" is missing`;
  }
  const o = t.optimizer as Record<string, unknown> | undefined;
  if (!o || !Array.isArray(o.betas) || typeof o.eps !== 'number' || typeof o.weightDecay !== 'number')
    return 'training setting "optimizer" is missing';
  if (t.base !== undefined && !(BASE_PRECISIONS as readonly unknown[]).includes(t.base))
    return `training setting "base" is ${JSON.stringify(t.base)}, not one of ${BASE_PRECISIONS.join(', ')}`;
  if (o.state !== undefined && !(OPTIMIZER_STATES as readonly unknown[]).includes(o.state))
    return `training setting "optimizer.state" is ${JSON.stringify(o.state)}, not one of ${OPTIMIZER_STATES.join(', ')}`;
  if (m.trainBase !== undefined && !Array.isArray(m.trainBase)) return 'field "trainBase" is not a list';
  for (const p of (m.trainBase as Partial<TrainedBaseParameter>[] | undefined) ?? []) {
    if (typeof p?.name !== 'string' || !Array.isArray(p.shape) || typeof p.init?.file !== 'string' || typeof p.init.offset !== 'number')
      return `trainBase entry ${JSON.stringify(p?.name)} lacks name, shape or init`;
    if (path.isAbsolute(p.init.file) || p.init.file.split(/[\\/]/).includes('..'))
      return `trainBase entry ${p.name} points outside the folder (${p.init.file})`;
  }
  if (t.prediction !== 'epsilon' && t.prediction !== 'v_prediction')
    return `training prediction ${JSON.stringify(t.prediction)} is neither epsilon nor v_prediction`;
  if (m.cut !== null && shapeProblem('field "cut"', m.cut)) return 'field "cut" is missing (null for hollow none)';
  return undefined;
}

/** Reads and validates `<dir>/manifest.json`; every problem is a HollowcError naming the file. */
export function readManifest(dir: string): CompileManifest {
  const file = path.join(dir, MANIFEST_FILE);
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    throw new HollowcError(
      `not a compiled hollowc folder (${(e as NodeJS.ErrnoException).code ?? (e as Error).message}); run hollowc compile first`,
      file,
    );
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (e) {
    throw new HollowcError(`manifest is not JSON: ${(e as Error).message}`, file);
  }
  if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) throw new HollowcError('manifest is not a JSON object', file);
  const problem = manifestProblem(parsed as Record<string, unknown>);
  if (problem) throw new HollowcError(`not a manifest this hollowc can read: ${problem}`, file);
  return parsed as CompileManifest;
}

// --- graph-training folders -------------------------------------------------------------------

/**
 * The contract of a graph-training folder (passes/compile-graph.ts writes it, runtime/train/
 * graph-train.ts reads it): the gradients graph of any built model (a VAE as an autoencoder),
 * its parameters' initial values, and the inference graphs the trained values go back into.
 *
 *   graph-training.json   this manifest
 *   grads.onnx            data inputs + every parameter -> loss, its terms, `<param>.grad`
 *   weights.onnx_data     the parameters' values before training, torch's layout, float32
 *   <export>.onnx         an inference graph (vae_encoder, vae_decoder) whose parameters are inputs
 */
export const GRAPH_MANIFEST_FILE = 'graph-training.json';
export const GRAPH_MANIFEST_FORMAT = 'graph-training/1';
export const GRAPH_GRADS_FILE = 'grads.onnx';

export interface GraphExport {
  /** The graph file in the folder, `<name>.onnx`. */
  file: string;
  /** Its parameter inputs, each one of the manifest's parameters. */
  parameters: string[];
  /** ONNX metadata the written model keeps (the config that made it). */
  metadata?: Record<string, string>;
}

export interface GraphTrainingManifest {
  hollowc: typeof GRAPH_MANIFEST_FORMAT;
  /** What the graph was built from, for people. */
  source: string;
  grads: ArtifactDescription;
  /** The inputs a step feeds besides the parameters. */
  data: TensorDescription[];
  /** The loss outputs of grads.onnx: the loss first, then its terms, each with its weight in the loss. */
  losses: { name: string; weight: number }[];
  parameters: TrainedBaseParameter[];
  exports: Record<string, GraphExport>;
  optimizer: TrainingSettings['optimizer'];
}

function problem(m: Partial<GraphTrainingManifest>): string | undefined {
  if (m.hollowc !== GRAPH_MANIFEST_FORMAT) return `format ${JSON.stringify(m.hollowc)}, expected ${JSON.stringify(GRAPH_MANIFEST_FORMAT)}`;
  if (!m.grads || typeof m.grads.file !== 'string') return 'field "grads" is missing';
  if (!Array.isArray(m.data) || !Array.isArray(m.losses) || m.losses.length === 0) return 'field "data" or "losses" is missing';
  if (!Array.isArray(m.parameters) || m.parameters.length === 0) return 'field "parameters" is missing or empty';
  for (const p of m.parameters) {
    if (typeof p?.name !== 'string' || !Array.isArray(p.shape) || typeof p.init?.file !== 'string' || typeof p.init.offset !== 'number')
      return `parameter ${JSON.stringify(p?.name)} lacks name, shape or init`;
    if (path.isAbsolute(p.init.file) || p.init.file.split(/[\\/]/).includes('..'))
      return `parameter ${p.name} points outside the folder (${p.init.file})`;
  }
  const names = new Set(m.parameters.map((p) => p.name));
  for (const [name, e] of Object.entries(m.exports ?? {})) {
    if (typeof e?.file !== 'string' || !Array.isArray(e.parameters)) return `export ${name} lacks file or parameters`;
    const unknown = e.parameters.find((p) => !names.has(p));
    if (unknown) return `export ${name} reads parameter ${unknown}, which the folder does not train`;
  }
  const o = m.optimizer;
  if (!o || !Array.isArray(o.betas) || typeof o.eps !== 'number' || typeof o.weightDecay !== 'number')
    return 'field "optimizer" is missing';
  return undefined;
}

/** Reads and checks `<dir>/graph-training.json`; every problem is one HollowcError naming the file. */
export function readGraphTrainingManifest(dir: string): GraphTrainingManifest {
  const file = path.join(dir, GRAPH_MANIFEST_FILE);
  let parsed: unknown;
  try {
    parsed = JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new HollowcError(code ? `not a graph-training folder (${code}); compile one first` : `not JSON: ${(e as Error).message}`, file);
  }
  if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) throw new HollowcError('manifest is not a JSON object', file);
  const why = problem(parsed as Partial<GraphTrainingManifest>);
  if (why) throw new HollowcError(`bad graph-training manifest: ${why}`, file);
  return parsed as GraphTrainingManifest;
}
