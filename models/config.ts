// The diffusers `UNet2DConditionModel` configuration, restricted to what hollowc supports.
//
// Field names are kept in diffusers' snake_case on purpose: a UNetConfig *is* a config.json
// (JSON.stringify gives a file diffusers can load), so nobody has to maintain a name mapping.
// Everything derived from it (per-block arrays, head counts) lives in ResolvedConfig, which is
// camelCase like the rest of the code base.

export type DownBlockType = 'CrossAttnDownBlock2D' | 'DownBlock2D';
export type MidBlockType = 'UNetMidBlock2DCrossAttn';
export type UpBlockType = 'UpBlock2D' | 'CrossAttnUpBlock2D';

export const DOWN_BLOCK_TYPES: readonly DownBlockType[] = ['CrossAttnDownBlock2D', 'DownBlock2D'];
export const MID_BLOCK_TYPES: readonly MidBlockType[] = ['UNetMidBlock2DCrossAttn'];
export const UP_BLOCK_TYPES: readonly UpBlockType[] = ['CrossAttnUpBlock2D', 'UpBlock2D'];

export type PerBlock<T> = T | readonly T[];

export interface UNetConfig {
  readonly sample_size: number | null;
  readonly in_channels: number;
  readonly out_channels: number;
  readonly down_block_types: readonly DownBlockType[];
  readonly mid_block_type: MidBlockType;
  readonly up_block_types: readonly UpBlockType[];
  readonly block_out_channels: readonly number[];
  readonly layers_per_block: PerBlock<number>;
  readonly transformer_layers_per_block: PerBlock<number>;
  /**
   * diffusers' legacy naming: for UNet2DConditionModel this is the number of attention *heads*
   * (SD 1.5's `8` means 8 heads of 40 channels), used whenever num_attention_heads is null.
   */
  readonly attention_head_dim: PerBlock<number>;
  readonly num_attention_heads: PerBlock<number> | null;
  readonly cross_attention_dim: PerBlock<number>;
  readonly use_linear_projection: boolean;
  readonly norm_num_groups: number;
  readonly norm_eps: number;
  readonly act_fn: 'silu';
  readonly flip_sin_to_cos: boolean;
  readonly freq_shift: number;
  /** null = 4 * block_out_channels[0] */
  readonly time_embedding_dim: number | null;
  readonly addition_embed_type: 'text_time' | null;
  readonly addition_time_embed_dim: number | null;
  readonly projection_class_embeddings_input_dim: number | null;
  readonly upcast_attention: boolean;
  readonly conv_in_kernel: number;
  readonly conv_out_kernel: number;
  readonly downsample_padding: number;
  readonly mid_block_scale_factor: number;
  readonly resnet_time_scale_shift: 'default';
}

/** diffusers 0.21 defaults for the fields above (UNet2DConditionModel.__init__). */
export const DIFFUSERS_DEFAULTS: UNetConfig = {
  sample_size: null,
  in_channels: 4,
  out_channels: 4,
  down_block_types: ['CrossAttnDownBlock2D', 'CrossAttnDownBlock2D', 'CrossAttnDownBlock2D', 'DownBlock2D'],
  mid_block_type: 'UNetMidBlock2DCrossAttn',
  up_block_types: ['UpBlock2D', 'CrossAttnUpBlock2D', 'CrossAttnUpBlock2D', 'CrossAttnUpBlock2D'],
  block_out_channels: [320, 640, 1280, 1280],
  layers_per_block: 2,
  transformer_layers_per_block: 1,
  attention_head_dim: 8,
  num_attention_heads: null,
  cross_attention_dim: 1280,
  use_linear_projection: false,
  norm_num_groups: 32,
  norm_eps: 1e-5,
  act_fn: 'silu',
  flip_sin_to_cos: true,
  freq_shift: 0,
  time_embedding_dim: null,
  addition_embed_type: null,
  addition_time_embed_dim: null,
  projection_class_embeddings_input_dim: null,
  upcast_attention: false,
  conv_in_kernel: 3,
  conv_out_kernel: 3,
  downsample_padding: 1,
  mid_block_scale_factor: 1,
  resnet_time_scale_shift: 'default',
};

/**
 * Fields that change the graph in ways hollowc does not model. They are accepted only with
 * the value listed (diffusers' default, or an equivalent spelling), so a config that uses them
 * fails loudly instead of producing a wrong layout. Other unknown fields are ignored.
 */
const MUST_BE_DEFAULT: Readonly<Record<string, readonly unknown[]>> = {
  center_input_sample: [false],
  only_cross_attention: [false],
  dual_cross_attention: [false],
  class_embed_type: [null],
  num_class_embeds: [null],
  class_embeddings_concat: [false],
  encoder_hid_dim: [null],
  encoder_hid_dim_type: [null],
  time_embedding_type: ['positional'],
  time_embedding_act_fn: [null],
  timestep_post_act: [null],
  time_cond_proj_dim: [null],
  resnet_skip_time_act: [false],
  resnet_out_scale_factor: [1],
  attention_type: ['default'],
  mid_block_only_cross_attention: [null, false],
  cross_attention_norm: [null],
  reverse_transformer_layers_per_block: [null],
};

class ConfigReader {
  constructor(
    private readonly obj: Readonly<Record<string, unknown>>,
    private readonly source: string,
  ) {}

  fail(field: string, message: string): never {
    throw new Error(`${this.source}: ${field}: ${message}`);
  }

  raw(field: string): unknown {
    return this.obj[field];
  }

  int(field: string, fallback: number, min = 1): number {
    const v = this.obj[field];
    if (v === undefined) return fallback;
    return this.checkInt(field, v, min);
  }

  checkInt(field: string, v: unknown, min = 1): number {
    if (typeof v !== 'number' || !Number.isInteger(v) || v < min) {
      this.fail(field, `expected an integer >= ${min}, got ${show(v)}`);
    }
    return v;
  }

  nullableInt(field: string, fallback: number | null): number | null {
    const v = this.obj[field];
    if (v === undefined) return fallback;
    if (v === null) return null;
    return this.checkInt(field, v);
  }

  num(field: string, fallback: number): number {
    const v = this.obj[field];
    if (v === undefined) return fallback;
    if (typeof v !== 'number' || !Number.isFinite(v)) this.fail(field, `expected a number, got ${show(v)}`);
    return v;
  }

  bool(field: string, fallback: boolean, nullMeans?: boolean): boolean {
    const v = this.obj[field];
    if (v === undefined) return fallback;
    if (v === null && nullMeans !== undefined) return nullMeans;
    if (typeof v !== 'boolean') this.fail(field, `expected true or false, got ${show(v)}`);
    return v;
  }

  oneOf<T extends string>(field: string, allowed: readonly T[], fallback: T, v: unknown = this.obj[field]): T {
    if (v === undefined) return fallback;
    if (typeof v === 'string' && (allowed as readonly string[]).includes(v)) return v as T;
    if (typeof v !== 'string') this.fail(field, `expected a string (${orList(allowed)}), got ${show(v)}`);
    return this.fail(field, `${show(v)} is not supported (expected ${orList(allowed)})`);
  }

  typeList<T extends string>(field: string, allowed: readonly T[], fallback: readonly T[]): readonly T[] {
    const v = this.obj[field];
    if (v === undefined) return fallback;
    if (!Array.isArray(v) || v.length === 0) {
      this.fail(field, `expected a non-empty array of block type names, got ${show(v)}`);
    }
    return v.map((item, i) => this.oneOf(`${field}[${i}]`, allowed, allowed[0], item === undefined ? null : item));
  }

  intList(field: string, fallback: readonly number[]): readonly number[] {
    const v = this.obj[field];
    if (v === undefined) return fallback;
    if (!Array.isArray(v) || v.length === 0) {
      this.fail(field, `expected a non-empty array of positive integers, got ${show(v)}`);
    }
    return v.map((item, i) => this.checkInt(`${field}[${i}]`, item));
  }

  /** number or per-block array (diffusers accepts both for many fields). */
  perBlock(field: string, fallback: PerBlock<number>): PerBlock<number> {
    const v = this.obj[field];
    if (v === undefined) return fallback;
    if (Array.isArray(v)) {
      if (v.length === 0) this.fail(field, 'expected a positive integer or a per-block array, got []');
      return v.map((item, i) => {
        if (Array.isArray(item)) {
          this.fail(`${field}[${i}]`, 'per-layer nested arrays are not supported (expected one integer per block)');
        }
        return this.checkInt(`${field}[${i}]`, item);
      });
    }
    if (typeof v !== 'number') this.fail(field, `expected a positive integer or a per-block array, got ${show(v)}`);
    return this.checkInt(field, v);
  }
}

/**
 * Reads a diffusers `unet/config.json` object. Missing fields get diffusers' defaults; unknown and
 * `_`-prefixed fields are ignored (except a `_class_name` naming another class). Unsupported
 * values and wrong types throw an Error naming `source`, the field and what is accepted.
 */
export function parseUNetConfig(json: unknown, source: string): UNetConfig {
  if (typeof json !== 'object' || json === null || Array.isArray(json)) {
    throw new Error(`${source}: expected a JSON object (a diffusers UNet2DConditionModel config), got ${show(json)}`);
  }
  const obj = json as Readonly<Record<string, unknown>>;
  const r = new ConfigReader(obj, source);
  const d = DIFFUSERS_DEFAULTS;

  const className = obj['_class_name'];
  if (typeof className === 'string' && className !== 'UNet2DConditionModel') {
    r.fail('_class_name', `${show(className)} is not supported (expected UNet2DConditionModel)`);
  }

  for (const [field, allowed] of Object.entries(MUST_BE_DEFAULT)) {
    if (!(field in obj) || obj[field] === undefined) continue;
    const v = obj[field];
    if (!allowed.some((a) => a === v)) {
      r.fail(field, `${show(v)} is not supported (expected ${orList(allowed.map(show))})`);
    }
  }

  const addition = obj['addition_embed_type'];
  const additionEmbedType =
    addition === null || addition === undefined ? null : r.oneOf('addition_embed_type', ['text_time'] as const, 'text_time');

  const cfg: UNetConfig = {
    sample_size: readSampleSize(r),
    in_channels: r.int('in_channels', d.in_channels),
    out_channels: r.int('out_channels', d.out_channels),
    down_block_types: r.typeList('down_block_types', DOWN_BLOCK_TYPES, d.down_block_types),
    // null means "no mid block" in diffusers; hollowing is defined around the mid block.
    mid_block_type:
      obj['mid_block_type'] === null
        ? r.fail('mid_block_type', `null is not supported (expected ${orList(MID_BLOCK_TYPES)})`)
        : r.oneOf('mid_block_type', MID_BLOCK_TYPES, d.mid_block_type),
    up_block_types: r.typeList('up_block_types', UP_BLOCK_TYPES, d.up_block_types),
    block_out_channels: r.intList('block_out_channels', d.block_out_channels),
    layers_per_block: r.perBlock('layers_per_block', d.layers_per_block),
    transformer_layers_per_block: r.perBlock('transformer_layers_per_block', d.transformer_layers_per_block),
    attention_head_dim: obj['attention_head_dim'] === null ? d.attention_head_dim : r.perBlock('attention_head_dim', d.attention_head_dim),
    num_attention_heads: obj['num_attention_heads'] == null ? null : r.perBlock('num_attention_heads', 1),
    cross_attention_dim: r.perBlock('cross_attention_dim', d.cross_attention_dim),
    use_linear_projection: r.bool('use_linear_projection', d.use_linear_projection, false),
    norm_num_groups: r.int('norm_num_groups', d.norm_num_groups),
    norm_eps: r.num('norm_eps', d.norm_eps),
    act_fn: r.oneOf('act_fn', ['silu'] as const, d.act_fn),
    flip_sin_to_cos: r.bool('flip_sin_to_cos', d.flip_sin_to_cos),
    freq_shift: r.num('freq_shift', d.freq_shift),
    time_embedding_dim: r.nullableInt('time_embedding_dim', d.time_embedding_dim),
    addition_embed_type: additionEmbedType,
    addition_time_embed_dim: r.nullableInt('addition_time_embed_dim', d.addition_time_embed_dim),
    projection_class_embeddings_input_dim: r.nullableInt('projection_class_embeddings_input_dim', d.projection_class_embeddings_input_dim),
    // SDXL's config.json has `upcast_attention: null`, which diffusers treats as false.
    upcast_attention: r.bool('upcast_attention', d.upcast_attention, false),
    conv_in_kernel: r.int('conv_in_kernel', d.conv_in_kernel),
    conv_out_kernel: r.int('conv_out_kernel', d.conv_out_kernel),
    downsample_padding: r.int('downsample_padding', d.downsample_padding, 0),
    mid_block_scale_factor: r.num('mid_block_scale_factor', d.mid_block_scale_factor),
    resnet_time_scale_shift: r.oneOf('resnet_time_scale_shift', ['default'] as const, d.resnet_time_scale_shift),
  };
  checkConsistency(cfg, source);
  return cfg;
}

function readSampleSize(r: ConfigReader): number | null {
  const v = r.raw('sample_size');
  if (v === undefined || v === null) return null;
  return r.checkInt('sample_size', v);
}

/** Cross-field checks diffusers (or torch, at construction time) would also trip over. */
function checkConsistency(cfg: UNetConfig, source: string): void {
  const fail = (field: string, message: string): never => {
    throw new Error(`${source}: ${field}: ${message}`);
  };
  const n = cfg.block_out_channels.length;
  if (cfg.down_block_types.length !== n) {
    fail('down_block_types', `has ${cfg.down_block_types.length} entries but block_out_channels has ${n}`);
  }
  if (cfg.up_block_types.length !== n) {
    fail('up_block_types', `has ${cfg.up_block_types.length} entries but block_out_channels has ${n}`);
  }
  const perBlockFields = [
    'layers_per_block',
    'transformer_layers_per_block',
    'attention_head_dim',
    'num_attention_heads',
    'cross_attention_dim',
  ] as const;
  for (const field of perBlockFields) {
    const v = cfg[field];
    if (Array.isArray(v) && v.length !== n) {
      fail(field, `has ${v.length} entries but there are ${n} down blocks (expected one number or ${n})`);
    }
  }
  cfg.block_out_channels.forEach((c, i) => {
    if (c % cfg.norm_num_groups !== 0) {
      fail(`block_out_channels[${i}]`, `${c} is not divisible by norm_num_groups (${cfg.norm_num_groups})`);
    }
  });
  for (const field of ['conv_in_kernel', 'conv_out_kernel'] as const) {
    // diffusers pads by (k - 1) / 2, which only keeps the spatial size for odd kernels.
    if (cfg[field] % 2 !== 1) fail(field, `${cfg[field]} is not supported (expected an odd kernel size)`);
  }
  if (cfg.addition_embed_type === 'text_time') {
    if (cfg.addition_time_embed_dim === null) {
      fail('addition_time_embed_dim', 'is required when addition_embed_type is "text_time" (SDXL uses 256)');
    }
    if (cfg.projection_class_embeddings_input_dim === null) {
      fail('projection_class_embeddings_input_dim', 'is required when addition_embed_type is "text_time" (SDXL uses 2816)');
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Resolution: per-block numbers, so that layout, parameter counting and the model builder never
// re-derive diffusers' defaulting rules themselves.

export interface ResolvedDownBlock {
  readonly index: number; // down_blocks.<index>
  readonly type: DownBlockType;
  readonly hasAttention: boolean;
  readonly inChannels: number;
  readonly outChannels: number;
  readonly resnets: number;
  readonly transformerLayers: number;
  readonly heads: number;
  readonly headDim: number;
  readonly crossAttentionDim: number;
  readonly hasDownsampler: boolean;
}

export interface ResolvedMidBlock {
  readonly channels: number;
  readonly resnets: 2;
  readonly transformerLayers: number;
  readonly heads: number;
  readonly headDim: number;
  readonly crossAttentionDim: number;
}

export interface ResolvedUpBlock {
  readonly index: number; // up_blocks.<index>
  readonly type: UpBlockType;
  readonly hasAttention: boolean;
  /** channels of the hidden state entering resnets.0 (output of the previous up block or mid) */
  readonly prevOutputChannels: number;
  /** channels of the skip taken by the *last* resnet (diffusers' `in_channels`) */
  readonly inChannels: number;
  readonly outChannels: number;
  readonly resnets: number;
  readonly transformerLayers: number;
  readonly heads: number;
  readonly headDim: number;
  readonly crossAttentionDim: number;
  readonly hasUpsampler: boolean;
}

export interface ResolvedAdditionEmbedding {
  readonly type: 'text_time';
  /** sinusoidal width per time id (SDXL 256) */
  readonly timeEmbedDim: number;
  /** input of add_embedding.linear_1 = text_embeds width + timeIds * timeEmbedDim (SDXL 2816) */
  readonly inputDim: number;
}

export interface ResolvedConfig {
  readonly config: UNetConfig;
  readonly numBlocks: number;
  // Per-block arrays in down-block order (index i = down_blocks.i = up_blocks.(n-1-i)).
  readonly blockOutChannels: readonly number[];
  readonly layersPerBlock: readonly number[];
  readonly transformerLayersPerBlock: readonly number[];
  readonly numHeads: readonly number[];
  readonly headDims: readonly number[];
  readonly crossAttentionDims: readonly number[];
  readonly down: readonly ResolvedDownBlock[];
  readonly mid: ResolvedMidBlock;
  readonly up: readonly ResolvedUpBlock[];
  readonly groups: number;
  readonly eps: number;
  readonly linearProjection: boolean;
  /** width of the sinusoidal timestep features fed to time_embedding.linear_1 */
  readonly timestepInputDim: number;
  readonly timeEmbedDim: number;
  readonly addition: ResolvedAdditionEmbedding | null;
}

function perBlock(v: PerBlock<number>, n: number): number[] {
  return Array.isArray(v) ? [...v] : new Array<number>(n).fill(v as number);
}

export function resolveConfig(cfg: UNetConfig): ResolvedConfig {
  const n = cfg.block_out_channels.length;
  const channels = [...cfg.block_out_channels];
  const layers = perBlock(cfg.layers_per_block, n);
  const tLayers = perBlock(cfg.transformer_layers_per_block, n);
  // Legacy naming (diffusers issue #2011): attention_head_dim stands in for the head count.
  const heads = perBlock(cfg.num_attention_heads ?? cfg.attention_head_dim, n);
  // Transformer2DModel is built with attention_head_dim = out_channels // num_attention_heads.
  const headDims = channels.map((c, i) => Math.floor(c / heads[i]));
  const cross = perBlock(cfg.cross_attention_dim, n);

  const down: ResolvedDownBlock[] = cfg.down_block_types.map((type, i) => ({
    index: i,
    type,
    hasAttention: type === 'CrossAttnDownBlock2D',
    inChannels: i === 0 ? channels[0] : channels[i - 1],
    outChannels: channels[i],
    resnets: layers[i],
    transformerLayers: tLayers[i],
    heads: heads[i],
    headDim: headDims[i],
    crossAttentionDim: cross[i],
    hasDownsampler: i < n - 1,
  }));

  const last = n - 1;
  const mid: ResolvedMidBlock = {
    channels: channels[last],
    resnets: 2,
    transformerLayers: tLayers[last],
    heads: heads[last],
    headDim: headDims[last],
    crossAttentionDim: cross[last],
  };

  // Up block i mirrors down block n-1-i; it has one resnet more than its down block because it
  // also consumes the skip emitted by that down block's downsampler (or the previous block's).
  const up: ResolvedUpBlock[] = cfg.up_block_types.map((type, i) => {
    const mirror = n - 1 - i;
    return {
      index: i,
      type,
      hasAttention: type === 'CrossAttnUpBlock2D',
      prevOutputChannels: i === 0 ? channels[last] : channels[mirror + 1],
      inChannels: channels[Math.max(mirror - 1, 0)],
      outChannels: channels[mirror],
      resnets: layers[mirror] + 1,
      transformerLayers: tLayers[mirror],
      heads: heads[mirror],
      headDim: headDims[mirror],
      crossAttentionDim: cross[mirror],
      hasUpsampler: i < n - 1,
    };
  });

  const addition: ResolvedAdditionEmbedding | null =
    cfg.addition_embed_type === 'text_time'
      ? {
          type: 'text_time',
          timeEmbedDim: cfg.addition_time_embed_dim ?? 0,
          inputDim: cfg.projection_class_embeddings_input_dim ?? 0,
        }
      : null;

  return {
    config: cfg,
    numBlocks: n,
    blockOutChannels: channels,
    layersPerBlock: layers,
    transformerLayersPerBlock: tLayers,
    numHeads: heads,
    headDims,
    crossAttentionDims: cross,
    down,
    mid,
    up,
    groups: cfg.norm_num_groups,
    eps: cfg.norm_eps,
    linearProjection: cfg.use_linear_projection,
    timestepInputDim: channels[0],
    timeEmbedDim: cfg.time_embedding_dim ?? channels[0] * 4,
    addition,
  };
}

function show(v: unknown): string {
  if (v === undefined) return 'undefined';
  const s = JSON.stringify(v);
  return s.length > 60 ? `${s.slice(0, 57)}...` : s;
}

function orList(items: readonly string[]): string {
  if (items.length <= 1) return items.join('');
  return `${items.slice(0, -1).join(', ')} or ${items[items.length - 1]}`;
}
