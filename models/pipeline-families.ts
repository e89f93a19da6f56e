// What a whole SD pipeline folder holds per family, besides the UNet (families.ts): its text
// encoders with their tokenizers, the VAE, the scheduler config and the pipeline class, full-size
// ones as on the public Hub repos and tiny ones sized to the tiny UNets.

import { FAMILIES, FamilyName, ModelVariant } from './families';
import { ClipPadToken } from './tokenizer-folder';
import {
  CLIP_L,
  CLIP_L_TINY,
  ClipTextConfig,
  OPENCLIP_BIGG,
  OPENCLIP_BIGG_TINY,
  OPENCLIP_H,
  OPENCLIP_H_TINY,
  SDXL_CLIP_L_TINY,
} from './text-encoder-config';
import { VAE_SD15, VAE_SD15_TINY, VAE_SD21, VAE_SD21_TINY, VAE_SDXL, VAE_SDXL_TINY, VaeConfig } from './vae-config';

export type PipelineSize = 'tiny' | 'full';
export type PipelineClass = 'StableDiffusionPipeline' | 'StableDiffusionXLPipeline';

export interface TextEncoderSlot {
  /** folder name: text_encoder, text_encoder_2 */
  readonly dir: 'text_encoder' | 'text_encoder_2';
  readonly tokenizerDir: 'tokenizer' | 'tokenizer_2';
  readonly config: ClipTextConfig;
  readonly padToken: ClipPadToken;
  /** SDXL conditions on the penultimate hidden state, so its encoders export all of them */
  readonly hiddenStates: boolean;
  /** the Hub repo the tokenizer comes from (recorded as name_or_path) */
  readonly tokenizerSource: string;
}

export interface PipelineVariant {
  readonly family: FamilyName;
  readonly size: PipelineSize;
  readonly pipelineClass: PipelineClass;
  readonly unet: ModelVariant;
  readonly textEncoders: readonly TextEncoderSlot[];
  readonly vae: VaeConfig;
  /** scheduler/scheduler_config.json */
  readonly scheduler: Readonly<Record<string, unknown>>;
}

/** diffusers version the written configs claim (the one whose exports hollowc mirrors). */
export const DIFFUSERS_VERSION = '0.21.4';

function schedule(family: FamilyName) {
  const s = FAMILIES[family].noiseSchedule;
  return {
    beta_start: s.beta_start,
    beta_end: s.beta_end,
    beta_schedule: s.beta_schedule,
    num_train_timesteps: s.num_train_timesteps,
    trained_betas: null,
  };
}

// runwayml/stable-diffusion-v1-5 scheduler/scheduler_config.json (+ its implicit prediction_type)
const SD15_SCHEDULER = {
  _class_name: 'PNDMScheduler',
  _diffusers_version: DIFFUSERS_VERSION,
  ...schedule('sd15'),
  clip_sample: false,
  prediction_type: 'epsilon',
  set_alpha_to_one: false,
  skip_prk_steps: true,
  steps_offset: 1,
};

// stabilityai/stable-diffusion-2-1 (768 px, v-prediction) scheduler/scheduler_config.json
const SD21_SCHEDULER = {
  _class_name: 'DDIMScheduler',
  _diffusers_version: DIFFUSERS_VERSION,
  ...schedule('sd21'),
  clip_sample: false,
  prediction_type: 'v_prediction',
  set_alpha_to_one: false,
  skip_prk_steps: true,
  steps_offset: 1,
};

// stabilityai/stable-diffusion-xl-base-1.0 scheduler/scheduler_config.json
const SDXL_SCHEDULER = {
  _class_name: 'EulerDiscreteScheduler',
  _diffusers_version: DIFFUSERS_VERSION,
  ...schedule('sdxl'),
  clip_sample: false,
  interpolation_type: 'linear',
  prediction_type: 'epsilon',
  sample_max_value: 1.0,
  set_alpha_to_one: false,
  skip_prk_steps: true,
  steps_offset: 1,
  timestep_spacing: 'leading',
  use_karras_sigmas: false,
};

const CLIP_L_REPO = 'openai/clip-vit-large-patch14';

function slot(
  dir: TextEncoderSlot['dir'],
  config: ClipTextConfig,
  padToken: ClipPadToken,
  hiddenStates: boolean,
  tokenizerSource: string,
): TextEncoderSlot {
  return { dir, tokenizerDir: dir === 'text_encoder' ? 'tokenizer' : 'tokenizer_2', config, padToken, hiddenStates, tokenizerSource };
}

function variants(family: FamilyName, size: PipelineSize): PipelineVariant {
  const tiny = size === 'tiny';
  const unet = tiny ? FAMILIES[family].tiny : FAMILIES[family].full;
  switch (family) {
    case 'sd15':
      return {
        family,
        size,
        pipelineClass: 'StableDiffusionPipeline',
        unet,
        textEncoders: [slot('text_encoder', tiny ? CLIP_L_TINY : CLIP_L, '<|endoftext|>', false, CLIP_L_REPO)],
        vae: tiny ? VAE_SD15_TINY : VAE_SD15,
        scheduler: SD15_SCHEDULER,
      };
    case 'sd21':
      return {
        family,
        size,
        pipelineClass: 'StableDiffusionPipeline',
        unet,
        textEncoders: [slot('text_encoder', tiny ? OPENCLIP_H_TINY : OPENCLIP_H, '!', false, 'stabilityai/stable-diffusion-2-1')],
        vae: tiny ? VAE_SD21_TINY : VAE_SD21,
        scheduler: SD21_SCHEDULER,
      };
    case 'sdxl':
      return {
        family,
        size,
        pipelineClass: 'StableDiffusionXLPipeline',
        unet,
        textEncoders: [
          slot('text_encoder', tiny ? SDXL_CLIP_L_TINY : CLIP_L, '<|endoftext|>', true, CLIP_L_REPO),
          slot('text_encoder_2', tiny ? OPENCLIP_BIGG_TINY : OPENCLIP_BIGG, '!', true, 'laion/CLIP-ViT-bigG-14-laion2B-39B-b160k'),
        ],
        vae: tiny ? VAE_SDXL_TINY : VAE_SDXL,
        scheduler: SDXL_SCHEDULER,
      };
  }
}

export function pipelineVariant(family: FamilyName, size: PipelineSize): PipelineVariant {
  return variants(family, size);
}
