// The SD-family UNets hollowc knows by name: full-size configs copied from the public diffusers
// `unet/config.json` files, tiny test configs with the same structure, and the few facts outside
// the UNet config that training needs (VAE scaling, noise schedule, prediction type, shapes).

import type { Prediction } from '../compiler/manifest';
import { DIFFUSERS_DEFAULTS, UNetConfig } from './config';

export type FamilyName = 'sd15' | 'sd21' | 'sdxl';
export type ModelName = FamilyName | 'sd15-tiny' | 'sd21-tiny' | 'sdxl-tiny';

export const FAMILY_NAMES: readonly FamilyName[] = ['sd15', 'sd21', 'sdxl'];
export const MODEL_NAMES: readonly ModelName[] = ['sd15', 'sd15-tiny', 'sd21', 'sd21-tiny', 'sdxl', 'sdxl-tiny'];

/** diffusers scheduler config fields that define the forward process (DDPM/DDIM/PNDM alike). */
export interface NoiseSchedule {
  readonly beta_schedule: 'scaled_linear';
  readonly beta_start: number;
  readonly beta_end: number;
  readonly num_train_timesteps: number;
}

/** Default batch-1 shapes of the UNet inputs used for training / precompute. */
export interface InputShapes {
  readonly sample: readonly number[];
  readonly encoder_hidden_states: readonly number[];
  /** SDXL only: pooled text embedding (added_cond_kwargs.text_embeds) */
  readonly text_embeds?: readonly number[];
  /** SDXL only: original size, crop top-left, target size (added_cond_kwargs.time_ids) */
  readonly time_ids?: readonly number[];
}

export interface ModelVariant {
  readonly name: ModelName;
  readonly family: FamilyName;
  readonly config: UNetConfig;
  readonly shapes: InputShapes;
}

export interface Family {
  readonly name: FamilyName;
  readonly description: string;
  /** where the full-size config comes from (for documentation and error messages) */
  readonly hubRepo: string;
  readonly full: ModelVariant;
  readonly tiny: ModelVariant;
  /** latents = VAE.encode(image) * vaeScalingFactor */
  readonly vaeScalingFactor: number;
  readonly noiseSchedule: NoiseSchedule;
  readonly predictionType: Prediction;
}

const SD_SCHEDULE: NoiseSchedule = {
  beta_schedule: 'scaled_linear',
  beta_start: 0.00085,
  beta_end: 0.012,
  num_train_timesteps: 1000,
};

// CLIP's context length; the UNet itself accepts any sequence length.
const TEXT_TOKENS = 77;
// Sequence length of the sd15-tiny fixture's encoder_hidden_states; kept for all tiny models so
// tests are cheap and catch code that hard-codes 77.
const TINY_TOKENS = 7;
// SDXL's time_ids: (orig_h, orig_w, crop_top, crop_left, target_h, target_w).
const SDXL_TIME_IDS = 6;

const SD_BLOCKS = {
  down_block_types: ['CrossAttnDownBlock2D', 'CrossAttnDownBlock2D', 'CrossAttnDownBlock2D', 'DownBlock2D'],
  up_block_types: ['UpBlock2D', 'CrossAttnUpBlock2D', 'CrossAttnUpBlock2D', 'CrossAttnUpBlock2D'],
} as const;

const SDXL_BLOCKS = {
  down_block_types: ['DownBlock2D', 'CrossAttnDownBlock2D', 'CrossAttnDownBlock2D'],
  up_block_types: ['CrossAttnUpBlock2D', 'CrossAttnUpBlock2D', 'UpBlock2D'],
} as const;

function config(fields: Partial<UNetConfig>): UNetConfig {
  return { ...DIFFUSERS_DEFAULTS, ...fields };
}

// runwayml/stable-diffusion-v1-5 unet/config.json
const SD15: UNetConfig = config({
  ...SD_BLOCKS,
  sample_size: 64,
  block_out_channels: [320, 640, 1280, 1280],
  layers_per_block: 2,
  attention_head_dim: 8,
  cross_attention_dim: 768,
  use_linear_projection: false,
  norm_num_groups: 32,
});

// Exactly the sd15-tiny fixture's manifest.json model.config_args.
const SD15_TINY: UNetConfig = config({
  ...SD_BLOCKS,
  sample_size: 16,
  block_out_channels: [16, 32, 48, 48],
  layers_per_block: 2,
  norm_num_groups: 8,
  cross_attention_dim: 32,
  attention_head_dim: 4,
});

// stabilityai/stable-diffusion-2-1 unet/config.json (the 768-px v-prediction model).
const SD21: UNetConfig = config({
  ...SD_BLOCKS,
  sample_size: 96,
  block_out_channels: [320, 640, 1280, 1280],
  layers_per_block: 2,
  attention_head_dim: [5, 10, 20, 20],
  cross_attention_dim: 1024,
  use_linear_projection: true,
  upcast_attention: true,
  norm_num_groups: 32,
});

// SD 2.1's structure (linear projections, per-block head counts giving a constant head width)
// at tiny widths; the cross-attention width differs from every block width so that mixed-up
// k/v projections show up as shape errors.
const SD21_TINY: UNetConfig = config({
  ...SD_BLOCKS,
  sample_size: 16,
  block_out_channels: [16, 32, 48, 48],
  layers_per_block: 2,
  attention_head_dim: [2, 4, 6, 6],
  cross_attention_dim: 24,
  use_linear_projection: true,
  upcast_attention: true,
  norm_num_groups: 8,
});

// stabilityai/stable-diffusion-xl-base-1.0 unet/config.json
const SDXL: UNetConfig = config({
  ...SDXL_BLOCKS,
  sample_size: 128,
  block_out_channels: [320, 640, 1280],
  layers_per_block: 2,
  transformer_layers_per_block: [1, 2, 10],
  attention_head_dim: [5, 10, 20],
  cross_attention_dim: 2048,
  use_linear_projection: true,
  addition_embed_type: 'text_time',
  addition_time_embed_dim: 256,
  projection_class_embeddings_input_dim: 2816,
  norm_num_groups: 32,
});

const SDXL_TINY_TEXT_EMBEDS = 24;
const SDXL_TINY_TIME_EMBED = 8;

// SDXL's structure: 3 blocks, the first without attention, multi-layer transformers growing with
// depth, text_time additional embeddings.
const SDXL_TINY: UNetConfig = config({
  ...SDXL_BLOCKS,
  sample_size: 16,
  block_out_channels: [16, 32, 48],
  layers_per_block: 2,
  transformer_layers_per_block: [1, 2, 3],
  attention_head_dim: [2, 4, 6],
  cross_attention_dim: 40,
  use_linear_projection: true,
  addition_embed_type: 'text_time',
  addition_time_embed_dim: SDXL_TINY_TIME_EMBED,
  projection_class_embeddings_input_dim: SDXL_TINY_TEXT_EMBEDS + SDXL_TIME_IDS * SDXL_TINY_TIME_EMBED,
  norm_num_groups: 8,
});

function sdShapes(latent: number, crossDim: number, tokens: number): InputShapes {
  return { sample: [1, 4, latent, latent], encoder_hidden_states: [1, tokens, crossDim] };
}

function sdxlShapes(latent: number, crossDim: number, tokens: number, textEmbeds: number): InputShapes {
  return {
    ...sdShapes(latent, crossDim, tokens),
    text_embeds: [1, textEmbeds],
    time_ids: [1, SDXL_TIME_IDS],
  };
}

export const FAMILIES: Readonly<Record<FamilyName, Family>> = {
  sd15: {
    name: 'sd15',
    description: 'Stable Diffusion 1.x (CLIP ViT-L/14 text encoder, 512 px)',
    hubRepo: 'runwayml/stable-diffusion-v1-5',
    full: { name: 'sd15', family: 'sd15', config: SD15, shapes: sdShapes(64, 768, TEXT_TOKENS) },
    tiny: { name: 'sd15-tiny', family: 'sd15', config: SD15_TINY, shapes: sdShapes(16, 32, TINY_TOKENS) },
    vaeScalingFactor: 0.18215,
    noiseSchedule: SD_SCHEDULE,
    predictionType: 'epsilon',
  },
  sd21: {
    name: 'sd21',
    description: 'Stable Diffusion 2.x (OpenCLIP ViT-H/14 text encoder, v-prediction)',
    hubRepo: 'stabilityai/stable-diffusion-2-1',
    // SD 2.1 is the 768-px model (native latents 96x96), but the paper's SD 2.1 experiments and
    // The paper's memory figures train at 512 px, so the default training latents are 64x64.
    full: { name: 'sd21', family: 'sd21', config: SD21, shapes: sdShapes(64, 1024, TEXT_TOKENS) },
    tiny: { name: 'sd21-tiny', family: 'sd21', config: SD21_TINY, shapes: sdShapes(16, 24, TINY_TOKENS) },
    vaeScalingFactor: 0.18215,
    noiseSchedule: SD_SCHEDULE,
    predictionType: 'v_prediction',
  },
  sdxl: {
    name: 'sdxl',
    description: 'Stable Diffusion XL base (two text encoders, 1024 px, text_time conditioning)',
    hubRepo: 'stabilityai/stable-diffusion-xl-base-1.0',
    full: { name: 'sdxl', family: 'sdxl', config: SDXL, shapes: sdxlShapes(128, 2048, TEXT_TOKENS, 1280) },
    tiny: {
      name: 'sdxl-tiny',
      family: 'sdxl',
      config: SDXL_TINY,
      shapes: sdxlShapes(16, 40, TINY_TOKENS, SDXL_TINY_TEXT_EMBEDS),
    },
    vaeScalingFactor: 0.13025,
    noiseSchedule: SD_SCHEDULE,
    predictionType: 'epsilon',
  },
};

export function isFamilyName(name: string): name is FamilyName {
  return (FAMILY_NAMES as readonly string[]).includes(name);
}

export function getFamily(name: string): Family {
  if (!isFamilyName(name)) {
    throw new Error(`unknown model family "${name}" (expected one of: ${FAMILY_NAMES.join(', ')})`);
  }
  return FAMILIES[name];
}

/** `sd15`, `sd15-tiny`, ... -> the variant and its family. */
export function getModelVariant(name: string): { variant: ModelVariant; family: Family } {
  for (const family of FAMILY_NAMES.map((f) => FAMILIES[f])) {
    for (const variant of [family.full, family.tiny]) {
      if (variant.name === name) return { variant, family };
    }
  }
  throw new Error(`unknown model "${name}" (expected one of: ${MODEL_NAMES.join(', ')})`);
}
