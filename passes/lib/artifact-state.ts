/**
 * What the passes of one artifact share: the compile's fixed inputs, and the facts
 * earlier passes produce for later ones (each pass names the fields it requires and ensures).
 */
import { Model, Node, Value } from '../../compiler/ir';
import type { ChunkSizes, InferLoraPrecision, TrainingSettings } from '../../compiler/manifest';
import { CutInfo, UNetAnalysis } from './analyze-unet';

export interface LoraConfig {
  rank: number;
  alpha: number;
  /** infer.onnx's LoRA inputs (the spec's `lora infer`); fp32 when absent. */
  inferPrecision?: InferLoraPrecision;
}

export interface LoraParam {
  /** Graph input name: `<module>.lora_A.weight` or `<module>.lora_B.weight`. */
  name: string;
  module: string;
  role: 'A' | 'B';
  shape: number[];
}

/** A base weight the training graphs take as an input (make-base-trainable). */
export interface BaseParam {
  /** The diffusers parameter name, which the graph input carries. */
  name: string;
  module: string;
  /** torch's shape. */
  shape: number[];
}

export interface ArtifactState {
  readonly analysis: UNetAnalysis;
  /** null for `hollow none`. */
  readonly cut: CutInfo | null;
  /** Module paths that get LoRA (targets inside the hollow are skipped by the pass). */
  readonly targets: readonly string[];
  readonly lora: LoraConfig;
  /** The base weights that train, by diffusers parameter name (the spec's `train base`; none when absent). */
  readonly trainBase?: readonly string[];
  /** Static shapes, batch and optimizer constants for the training graphs. */
  readonly training: TrainingSettings;
  /** Names the model in error messages. */
  readonly label: string;
  /** quantize-base: the smallest weight (in values) it quantizes; default MIN_QUANTIZED_ELEMENTS (the toy UNet of the golden tests has smaller ones). */
  readonly quantizeMinElements?: number;
  /** split-attention: the attention map size, in bytes, above which it is split per head; default SPLIT_ABOVE_BYTES (the tests' small models have small maps). */
  readonly splitAttentionAboveBytes?: number;
  /** split-attention: the largest map of one block of query rows, in bytes; default CHUNK_BYTES. */
  readonly attentionChunkBytes?: number;
  /** chunk-feed-forward: the widest tensor of one block of rows, in bytes; default FF_CHUNK_BYTES. */
  readonly feedForwardChunkBytes?: number;
  /** band-conv-gradients: the largest column buffer of one band, in bytes; default CONV_GRADIENT_COL_BYTES. */
  readonly convGradientColBytes?: number;
  /** chunk-attention: the largest block of an inference map at the training shapes, in bytes; default INFER_CHUNK_BYTES. */
  readonly inferChunkBytes?: number;

  /** The UNet inputs/outputs a float16 export declares float16 (float16-weights.ts); the passes see them float32. */
  readonly float16Io?: readonly string[];
  /** plan: the artifacts' structure only, never their values (base int8 reads no weight for its scales). */
  readonly structureOnly?: boolean;

  /** float16-weights: the artifact holds float16 weights cast at each use (its sessions must not fold them). */
  float16Weights?: boolean;
  /** release-dead-buffers: the artifact's tensors are unplanned; its CPU sessions need onnxruntime's arena. */
  cpuArena?: boolean;

  /** split-attention: the scores MatMul of every block of rows (pair-attention-gradients joins their gradients). */
  attentionScores?: Node[];
  /** add-base-path: path 1's copy of the hollow activation (infer.onnx). */
  baseActivation?: Value;
  /** insert-lora: the LoRA parameter inputs, in site order. */
  loraParams?: LoraParam[];
  /** make-base-trainable: the base weights the training graphs take as inputs, in graph order. */
  baseParams?: BaseParam[];
  /** add-loss: the scalar loss. */
  loss?: Value;
  /** differentiate: d loss / d each trained parameter (LoRA, then base weights). */
  gradients?: Map<Value, Value>;
  /** differentiate: the seed d loss / d loss (the nodes that depend on it carry gradients). */
  gradientSeed?: Value;
}

/** The graph values of the LoRA parameters insert-lora added. */
export function loraValues(model: Model, state: ArtifactState): Value[] {
  return state.loraParams!.map((p) => model.graph.value(p.name));
}

/** What training updates: the LoRA parameters, then the base weights make-base-trainable made inputs. */
export function trainableValues(model: Model, state: ArtifactState): Value[] {
  return [...state.loraParams!, ...(state.baseParams ?? [])].map((p) => model.graph.value(p.name));
}

/** The memory rewrites' block sizes (each pass's default where absent). */
export type ChunkFields = Pick<
  ArtifactState,
  'splitAttentionAboveBytes' | 'attentionChunkBytes' | 'feedForwardChunkBytes' | 'convGradientColBytes' | 'inferChunkBytes'
>;

/** The block sizes a request carries (CompileRequest, PlanRequest), for the artifact state. */
export function pickChunkFields(r: ChunkFields): ChunkFields {
  const { splitAttentionAboveBytes, attentionChunkBytes, feedForwardChunkBytes, convGradientColBytes, inferChunkBytes } = r;
  return { splitAttentionAboveBytes, attentionChunkBytes, feedForwardChunkBytes, convGradientColBytes, inferChunkBytes };
}

/**
 * The spec's `chunks` line as the passes' sizes. An attention map no larger than the asked block
 * stays whole; a larger one is split per head and in blocks of query rows of at most that size.
 */
export function chunkFieldsFromSpec(c: ChunkSizes): ChunkFields {
  return {
    splitAttentionAboveBytes: c.attention,
    attentionChunkBytes: c.attention,
    feedForwardChunkBytes: c.feed_forward,
    convGradientColBytes: c.conv_gradient,
    inferChunkBytes: c.infer_attention,
  };
}
