// Names the language knows without a model: families, paper presets, artifacts, defaults.
// Which blocks a preset hollows depends on the graph and is answered by ModelFacts.resolveHollow
// (check.ts); the DSL only needs the names to reject typos early. models/presets.ts is their
// one source.
import { PRESETS } from '../models/presets';

export type ModelFamily = 'sd15' | 'sd21' | 'sdxl';
export type ModelChoice = ModelFamily | 'auto';
export type Prediction = 'epsilon' | 'v_prediction';
export type Artifact = 'precompute' | 'train' | 'grads' | 'infer';

export const ARTIFACTS: readonly Artifact[] = ['precompute', 'train', 'grads', 'infer'];

/** The paper's SD 1.x / 2.x presets (Table in DESIGN.md), by share of parameters hollowed. */
export const SD_PRESETS: readonly string[] = PRESETS.filter((p) => p.families.includes('sd15')).map((p) => p.name);
/** SDXL: the paper hollows the whole mid block. */
export const SDXL_PRESETS: readonly string[] = PRESETS.filter((p) => p.families.includes('sdxl')).map((p) => p.name);
export const ALL_PRESETS: readonly string[] = [...SD_PRESETS, ...SDXL_PRESETS];

export function presetsFor(family: ModelFamily): readonly string[] {
  return family === 'sdxl' ? SDXL_PRESETS : SD_PRESETS;
}

/** Human description of `presetsFor(family)`, for messages. */
export function presetListText(presets: readonly string[]): string {
  return presets.map((p) => `"${p}"`).join(', ');
}

/**
 * The prediction type a family is trained with when the spec does not say. SD 2.1 here means
 * the 768-v model; an SD 2.1-*base* (epsilon) UNet needs `loss mse epsilon`, since the UNet
 * graph alone cannot tell the two apart.
 */
export const DEFAULT_PREDICTION: Readonly<Record<ModelFamily, Prediction>> = {
  sd15: 'epsilon',
  sd21: 'v_prediction',
  sdxl: 'epsilon',
};

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
