/**
 * Which passes make each artifact, in order. Every artifact starts from a fresh copy of the
 * source UNet; `runPasses` checks each pass's requires/ensures and verifies the graph after it.
 *
 *   precompute  base UNet -> hollow activation (large attention maps in blocks of query rows)
 *   forward     the hollowed net with LoRA (what training differentiates)
 *   infer       path 1 (base, up to the activation) + path 2 (hollowed net with LoRA), large
 *               attention maps in blocks of query rows
 *   grads       forward (the base weights that train as inputs) + static shapes + loss + d loss / d LoRA
 *               and those base weights (large attention maps per head in
 *               blocks of query rows, wide feed-forwards in blocks of token rows, large convolution
 *               gradients in bands of rows, each block's backward finished before the next; cheap
 *               activations recomputed; under `base int8` every base weight read dequantized from
 *               int8, under `base fp16` cast from float16) as outputs
 *   train       forward + static shapes + loss + gradients (the same) + in-graph AdamW
 *
 * The training graphs end with release-dead-buffers: their static shapes hidden from onnxruntime's
 * buffer reuse, so that each tensor is freed when it dies (their manifest entries ask for the arena).
 *
 * precise-normalization and precise-trigonometry (rewrites that make GPU kernels compute those ops
 * as precisely as the CPU: see each pass) follow every rewrite that adds such ops.
 */
import { cloneModel } from '../compiler/clone';
import { Model } from '../compiler/ir';
import { ArtifactName } from '../compiler/manifest';
import { Pass, PassRecord, runPasses } from '../compiler/pass';
import { addAdamWPass } from './training/add-adamw';
import { addBasePathPass } from './structure/add-base-path';
import { addLossPass } from './training/add-loss';
import { bandConvGradientsPass } from './memory/band-conv-gradients';
import { chunkAttentionPass } from './memory/chunk-attention';
import { chunkFeedForwardPass } from './memory/chunk-feed-forward';
import { preciseNormalizationPass } from './precision/precise-normalization';
import { preciseTrigonometryPass } from './precision/precise-trigonometry';
import { differentiatePass } from './training/differentiate';
import { exposeGradientsPass } from './training/expose-gradients';
import { extractPrecomputePass } from './structure/extract-precompute';
import { hollowOutPass } from './structure/hollow-out';
import { insertLoraPass } from './structure/insert-lora';
import { makeBaseTrainablePass } from './structure/make-base-trainable';
import { orderSinksPass } from './memory/order-sinks';
import { pairAttentionGradientsPass } from './memory/pair-attention-gradients';
import { quantizeBasePass } from './precision/quantize-base';
import { rematerializePass } from './memory/rematerialize';
import { releaseDeadBuffersPass } from './memory/release-dead-buffers';
import { ArtifactState } from './lib/artifact-state';
import { specializeShapesPass } from './structure/specialize-shapes';
import { float16LoraInputsPass } from './precision/float16-lora-inputs';
import { float16WeightsPass } from './precision/float16-weights';
import { slicesToSplitPass } from './memory/slices-to-split';
import { splitAttentionPass } from './memory/split-attention';
import { timestepPerSamplePass } from './structure/timestep-per-sample';

const HOLLOWED_WITH_LORA = [insertLoraPass, hollowOutPass];
/** After every structural, memory and training rewrite: the rewrites that make GPU kernels as precise as the CPU's. */
const PRECISE_ON_GPUS = [preciseNormalizationPass, preciseTrigonometryPass];

const TRAINING_LOSS = [
  ...HOLLOWED_WITH_LORA,
  makeBaseTrainablePass,
  timestepPerSamplePass,
  specializeShapesPass,
  splitAttentionPass,
  slicesToSplitPass,
  chunkFeedForwardPass,
  addLossPass,
  differentiatePass,
  bandConvGradientsPass,
  pairAttentionGradientsPass,
  rematerializePass,
  quantizeBasePass,
  ...PRECISE_ON_GPUS,
];

/**
 * Each artifact's passes, in order. precompute, forward and infer end with float16-weights (float16
 * weights stored float16, each use cast to float32; a no-op for float32 models); the training
 * graphs end with order-sinks, float16-weights and release-dead-buffers, in that order
 * (tests/pass-order.test.ts holds these claims).
 */
export const ARTIFACT_PASSES: Readonly<Record<ArtifactName, readonly Pass<ArtifactState>[]>> = {
  precompute: [extractPrecomputePass, chunkAttentionPass, ...PRECISE_ON_GPUS, float16WeightsPass],
  forward: [...HOLLOWED_WITH_LORA, ...PRECISE_ON_GPUS, float16WeightsPass],
  infer: [addBasePathPass, ...HOLLOWED_WITH_LORA, float16LoraInputsPass, chunkAttentionPass, ...PRECISE_ON_GPUS, float16WeightsPass],
  grads: [...TRAINING_LOSS, exposeGradientsPass, orderSinksPass, float16WeightsPass, releaseDeadBuffersPass],
  train: [...TRAINING_LOSS, addAdamWPass, orderSinksPass, float16WeightsPass, releaseDeadBuffersPass],
};

export interface BuiltArtifact {
  model: Model;
  state: ArtifactState;
  passes: PassRecord[];
}

/** Builds one artifact from `source` (left untouched), without the passes named in `skip`. */
export function buildArtifact(
  name: ArtifactName,
  source: Model,
  inputs: ArtifactState,
  log?: (m: string) => void,
  skip: readonly string[] = [],
): BuiltArtifact {
  const model = cloneModel(source);
  const state: ArtifactState = { ...inputs };
  const passes = runPasses(
    model,
    ARTIFACT_PASSES[name].filter((p) => !skip.includes(p.name)),
    state,
    // plan builds graphs only to measure them: verified once, after the last pass
    { label: `building ${name}.onnx`, log, verify: inputs.structureOnly ? 'last' : 'each' },
  );
  return { model, state, passes };
}
