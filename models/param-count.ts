// Exact PyTorch parameters (state_dict names and shapes) of a diffusers UNet2DConditionModel,
// computed from the layout alone. Counting from the tensor list rather than from closed formulas
// keeps one definition for both "how many parameters" and "which initializers to build".

import { Cut, ModuleSpec, UNetLayout } from './layout';

export interface ParamTensor {
  /** full state_dict name, e.g. 'down_blocks.0.resnets.0.conv1.weight' */
  readonly name: string;
  /** PyTorch shape (Linear weights are [out, in], convs [out, in, kh, kw]) */
  readonly shape: readonly number[];
}

export interface ParamCounts {
  /** keyed by layout module path ('down_blocks.2.downsamplers.0', 'mid_block.attentions.0', 'conv_in', ...) */
  readonly byModule: ReadonlyMap<string, number>;
  /** keyed by layer id ('3-3') and stem id ('conv_in', 'time_embedding', ...) */
  readonly byLayer: ReadonlyMap<string, number>;
  readonly total: number;
}

function norm(prefix: string, channels: number): ParamTensor[] {
  return [
    { name: `${prefix}.weight`, shape: [channels] },
    { name: `${prefix}.bias`, shape: [channels] },
  ];
}

function linear(prefix: string, inF: number, outF: number, bias = true): ParamTensor[] {
  const w: ParamTensor = { name: `${prefix}.weight`, shape: [outF, inF] };
  return bias ? [w, { name: `${prefix}.bias`, shape: [outF] }] : [w];
}

function conv(prefix: string, inC: number, outC: number, k: number): ParamTensor[] {
  return [
    { name: `${prefix}.weight`, shape: [outC, inC, k, k] },
    { name: `${prefix}.bias`, shape: [outC] },
  ];
}

// diffusers Attention: q/k/v without bias (attention_bias=False), to_out.0 with bias.
function attention(prefix: string, dim: number, inner: number, kvDim: number): ParamTensor[] {
  return [
    ...linear(`${prefix}.to_q`, dim, inner, false),
    ...linear(`${prefix}.to_k`, kvDim, inner, false),
    ...linear(`${prefix}.to_v`, kvDim, inner, false),
    ...linear(`${prefix}.to_out.0`, inner, dim),
  ];
}

/** The parameters of one module in PyTorch registration order within the module. */
export function moduleParameters(spec: ModuleSpec): ParamTensor[] {
  const p = spec.path;
  switch (spec.kind) {
    case 'resnet':
      return [
        ...norm(`${p}.norm1`, spec.inChannels),
        ...conv(`${p}.conv1`, spec.inChannels, spec.outChannels, 3),
        ...linear(`${p}.time_emb_proj`, spec.tembChannels, spec.outChannels),
        ...norm(`${p}.norm2`, spec.outChannels),
        ...conv(`${p}.conv2`, spec.outChannels, spec.outChannels, 3),
        ...(spec.convShortcut ? conv(`${p}.conv_shortcut`, spec.inChannels, spec.outChannels, 1) : []),
      ];
    case 'transformer': {
      const c = spec.channels;
      const d = spec.heads * spec.headDim; // inner_dim; the transformer blocks run at this width
      const proj = (name: string, inF: number, outF: number) =>
        spec.linearProjection ? linear(`${p}.${name}`, inF, outF) : conv(`${p}.${name}`, inF, outF, 1);
      const blocks: ParamTensor[] = [];
      for (let i = 0; i < spec.layers; i++) {
        const b = `${p}.transformer_blocks.${i}`;
        blocks.push(
          ...norm(`${b}.norm1`, d),
          ...attention(`${b}.attn1`, d, d, d),
          ...norm(`${b}.norm2`, d),
          ...attention(`${b}.attn2`, d, d, spec.crossAttentionDim),
          ...norm(`${b}.norm3`, d),
          // FeedForward with GEGLU: proj emits value and gate halves of 4*d each.
          ...linear(`${b}.ff.net.0.proj`, d, 2 * 4 * d),
          ...linear(`${b}.ff.net.2`, 4 * d, d),
        );
      }
      return [...norm(`${p}.norm`, c), ...proj('proj_in', c, d), ...blocks, ...proj('proj_out', d, c)];
    }
    case 'downsample':
    case 'upsample':
      return conv(`${p}.conv`, spec.channels, spec.channels, 3);
    case 'conv':
      return conv(p, spec.inChannels, spec.outChannels, spec.kernel);
    case 'groupnorm':
      return norm(p, spec.channels);
    case 'timestep_embedding':
      return [
        ...linear(`${p}.linear_1`, spec.inChannels, spec.outChannels),
        ...linear(`${p}.linear_2`, spec.outChannels, spec.outChannels),
      ];
  }
}

export function tensorSize(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

/**
 * Every parameter of the UNet, in layout order: conv_in, time_embedding, add_embedding, the
 * numbered layers, conv_norm_out, conv_out. (torch's named_parameters() order differs: it lists
 * up_blocks before mid_block because of when diffusers registers them.)
 */
export function unetParameters(layout: UNetLayout): ParamTensor[] {
  const pre = layout.stem.filter((s) => s.id === 'conv_in' || s.id === 'time_embedding' || s.id === 'add_embedding');
  const post = layout.stem.filter((s) => s.id === 'conv_norm_out' || s.id === 'conv_out');
  return [...pre, ...layout.layers, ...post].flatMap((e) => e.specs.flatMap(moduleParameters));
}

export function paramCounts(layout: UNetLayout): ParamCounts {
  const byModule = new Map<string, number>();
  const byLayer = new Map<string, number>();
  let total = 0;
  for (const entry of [...layout.stem, ...layout.layers]) {
    let sum = 0;
    for (const spec of entry.specs) {
      const n = moduleParameters(spec).reduce((a, t) => a + tensorSize(t.shape), 0);
      byModule.set(spec.path, n);
      sum += n;
    }
    byLayer.set(entry.id, sum);
    total += sum;
  }
  return { byModule, byLayer, total };
}

export interface CutParamCounts {
  readonly total: number;
  /** parameters inside the hollow (not needed while training) */
  readonly hollowed: number;
  /** parameters of the hollowed net (held during training) */
  readonly kept: number;
  readonly hollowedFraction: number;
}

export function cutParamCounts(layout: UNetLayout, cut: Cut, counts: ParamCounts = paramCounts(layout)): CutParamCounts {
  const hollowed = cut.hollowed.reduce((a, id) => a + (counts.byLayer.get(id) ?? 0), 0);
  return { total: counts.total, hollowed, kept: counts.total - hollowed, hollowedFraction: hollowed / counts.total };
}
