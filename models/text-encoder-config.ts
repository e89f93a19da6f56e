// The CLIP text encoders of the SD families, as transformers `CLIPTextConfig`s (snake_case field
// names on purpose, as in config.ts: a config *is* the text_encoder/config.json), full-size ones
// copied from the public Hub configs, tiny ones with the same structure, and their exact
// parameter counts computed from the config alone.

export type TextEncoderClass = 'CLIPTextModel' | 'CLIPTextModelWithProjection';

export interface ClipTextConfig {
  readonly architectures: readonly [TextEncoderClass];
  readonly vocab_size: number;
  readonly hidden_size: number;
  readonly intermediate_size: number;
  readonly num_hidden_layers: number;
  readonly num_attention_heads: number;
  readonly max_position_embeddings: number;
  /** CLIP ViT-L/14 uses quick_gelu (x * sigmoid(1.702 x)); OpenCLIP ViT-H and bigG use exact gelu */
  readonly hidden_act: 'quick_gelu' | 'gelu';
  readonly layer_norm_eps: number;
  /** width of `text_projection` (CLIPTextModelWithProjection only; CLIPTextModel ignores it) */
  readonly projection_dim: number;
  readonly bos_token_id: number;
  readonly eos_token_id: number;
  readonly pad_token_id: number;
  readonly model_type: 'clip_text_model';
  readonly torch_dtype: 'float32';
}

const CLIP_TOKENS = {
  vocab_size: 49408,
  max_position_embeddings: 77,
  layer_norm_eps: 1e-5,
  // the Hub configs' legacy ids (eos_token_id 2 makes transformers pool at argmax(input_ids),
  // which is EOS = 49407, the largest id)
  bos_token_id: 0,
  eos_token_id: 2,
  pad_token_id: 1,
  model_type: 'clip_text_model',
  torch_dtype: 'float32',
} as const;

function clipText(
  architecture: TextEncoderClass,
  fields: Pick<
    ClipTextConfig,
    'hidden_size' | 'intermediate_size' | 'num_hidden_layers' | 'num_attention_heads' | 'hidden_act' | 'projection_dim'
  >,
): ClipTextConfig {
  return { architectures: [architecture], ...CLIP_TOKENS, ...fields };
}

/** openai/clip-vit-large-patch14 text tower: SD 1.x `text_encoder`, SDXL `text_encoder`. */
export const CLIP_L: ClipTextConfig = clipText('CLIPTextModel', {
  hidden_size: 768,
  intermediate_size: 3072,
  num_hidden_layers: 12,
  num_attention_heads: 12,
  hidden_act: 'quick_gelu',
  projection_dim: 768,
});

/**
 * OpenCLIP ViT-H/14 text tower as SD 2.x ships it: 23 of its 24 layers (SD 2 conditions on the
 * penultimate layer, so Stability dropped the last one from stable-diffusion-2-1/text_encoder).
 */
export const OPENCLIP_H: ClipTextConfig = clipText('CLIPTextModel', {
  hidden_size: 1024,
  intermediate_size: 4096,
  num_hidden_layers: 23,
  num_attention_heads: 16,
  hidden_act: 'gelu',
  projection_dim: 512,
});

/** OpenCLIP ViT-bigG/14 text tower with its projection: SDXL `text_encoder_2`. */
export const OPENCLIP_BIGG: ClipTextConfig = clipText('CLIPTextModelWithProjection', {
  hidden_size: 1280,
  intermediate_size: 5120,
  num_hidden_layers: 32,
  num_attention_heads: 20,
  hidden_act: 'gelu',
  projection_dim: 1280,
});

// Tiny towers keep the real vocabulary and context (ids come from the real tokenizer) and the
// widths the tiny UNets' cross-attention expects (families.ts): sd15-tiny 32, sd21-tiny 24,
// sdxl-tiny 16 + 24 = 40 with text_embeds 24.
export const CLIP_L_TINY: ClipTextConfig = clipText('CLIPTextModel', {
  hidden_size: 32,
  intermediate_size: 128,
  num_hidden_layers: 2,
  num_attention_heads: 2,
  hidden_act: 'quick_gelu',
  projection_dim: 32,
});

export const OPENCLIP_H_TINY: ClipTextConfig = clipText('CLIPTextModel', {
  hidden_size: 24,
  intermediate_size: 96,
  num_hidden_layers: 3,
  num_attention_heads: 2,
  hidden_act: 'gelu',
  projection_dim: 24,
});

export const SDXL_CLIP_L_TINY: ClipTextConfig = clipText('CLIPTextModel', {
  hidden_size: 16,
  intermediate_size: 64,
  num_hidden_layers: 2,
  num_attention_heads: 2,
  hidden_act: 'quick_gelu',
  projection_dim: 16,
});

export const OPENCLIP_BIGG_TINY: ClipTextConfig = clipText('CLIPTextModelWithProjection', {
  hidden_size: 24,
  intermediate_size: 96,
  num_hidden_layers: 3,
  num_attention_heads: 2,
  hidden_act: 'gelu',
  projection_dim: 24,
});

export function hasProjection(c: ClipTextConfig): boolean {
  return c.architectures[0] === 'CLIPTextModelWithProjection';
}

/**
 * Parameters of the torch module, from the config: token + position embeddings, per layer
 * q/k/v/out projections with bias, two LayerNorms, fc1 and fc2; the final LayerNorm; and the
 * bias-free text_projection for CLIPTextModelWithProjection. (position_ids is a buffer.)
 */
export function clipTextParameterCount(c: ClipTextConfig): number {
  const d = c.hidden_size;
  const f = c.intermediate_size;
  const embeddings = c.vocab_size * d + c.max_position_embeddings * d;
  const layer = 4 * (d * d + d) + 2 * (2 * d) + (d * f + f) + (f * d + d);
  const projection = hasProjection(c) ? d * c.projection_dim : 0;
  return embeddings + c.num_hidden_layers * layer + 2 * d + projection;
}
