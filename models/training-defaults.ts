// What a training run uses where a spec says nothing: the paper's settings (section 5.1) and
// torch's AdamW defaults. The DSL fills a spec from these and compile records the result in the
// manifest, so the runtime never needs them.
import type { TrainingSettings } from '../compiler/manifest';
import { FAMILIES, FamilyName } from './families';

/** The paper's LoRA targets: self- and cross-attention projections of every transformer block. */
export const DEFAULT_TARGETS: readonly string[] = [
  'attn1.to_q',
  'attn1.to_k',
  'attn1.to_v',
  'attn1.to_out.0',
  'attn2.to_q',
  'attn2.to_k',
  'attn2.to_v',
  'attn2.to_out.0',
];

export const DEFAULTS = {
  rank: 16,
  priorWeight: 1.0,
  lr: 1e-4,
  beta1: 0.9,
  beta2: 0.999,
  eps: 1e-8,
  weightDecay: 0.01,
  seed: 0,
  steps: 1000,
  batch: 1,
} as const;

/** The settings of a compile that was given none (a library call without a spec). */
export function defaultTrainingSettings(family: FamilyName): TrainingSettings {
  return {
    prediction: FAMILIES[family].predictionType,
    priorWeight: DEFAULTS.priorWeight,
    seed: DEFAULTS.seed,
    lr: DEFAULTS.lr,
    steps: DEFAULTS.steps,
    batch: DEFAULTS.batch,
    checkpointEvery: DEFAULTS.steps,
    base: 'fp32',
    recompute: 'cheap',
    shapes: {},
    optimizer: { betas: [DEFAULTS.beta1, DEFAULTS.beta2], eps: DEFAULTS.eps, weightDecay: DEFAULTS.weightDecay },
  };
}
