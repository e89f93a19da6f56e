// The paper's block layout (Fig. 7 and Appendix B) computed from a config,
// and the cuts ("hollows") that layout allows.
//
// Numbering: down blocks are 1..n, the mid block n+1, up blocks n+2..2n+1 (SD: 1-4 | 5 | 6-9;
// SDXL: 1-3 | 4 | 5-7). Inside a block, j counts resnets (each with its attention, if any) and
// then the down/upsampler.

import { ResolvedConfig, UNetConfig, resolveConfig } from './config';

export type Stage = 'down' | 'mid' | 'up';
export type LayerRole = 'resnet' | 'downsampler' | 'upsampler';

/** Geometry of one diffusers module: enough to count its parameters or build it. */
export type ModuleSpec =
  | {
      readonly kind: 'resnet'; // ResnetBlock2D
      readonly path: string;
      readonly inChannels: number;
      readonly outChannels: number;
      readonly tembChannels: number;
      readonly groups: number;
      readonly eps: number;
      /** 1x1 conv_shortcut, present when inChannels != outChannels */
      readonly convShortcut: boolean;
    }
  | {
      readonly kind: 'transformer'; // Transformer2DModel
      readonly path: string;
      readonly channels: number;
      readonly heads: number;
      readonly headDim: number;
      readonly layers: number;
      readonly crossAttentionDim: number;
      /** proj_in/proj_out are Linear (true) or 1x1 Conv2d (false) */
      readonly linearProjection: boolean;
      readonly groups: number;
    }
  | { readonly kind: 'downsample'; readonly path: string; readonly channels: number; readonly padding: number }
  | { readonly kind: 'upsample'; readonly path: string; readonly channels: number }
  | {
      readonly kind: 'conv';
      readonly path: string;
      readonly inChannels: number;
      readonly outChannels: number;
      readonly kernel: number;
    }
  | {
      readonly kind: 'groupnorm';
      readonly path: string;
      readonly channels: number;
      readonly groups: number;
      readonly eps: number;
    }
  | {
      readonly kind: 'timestep_embedding'; // TimestepEmbedding: linear_1, SiLU, linear_2
      readonly path: string;
      readonly inChannels: number;
      readonly outChannels: number;
    };

export interface LayoutLayer {
  /** paper id `b-j` */
  readonly id: string;
  readonly stage: Stage;
  readonly block: number;
  readonly index: number;
  readonly role: LayerRole;
  /** diffusers module paths, e.g. ['down_blocks.0.resnets.0', 'down_blocks.0.attentions.0'] */
  readonly modules: readonly string[];
  readonly specs: readonly ModuleSpec[];
  /** channels of the hidden state entering the layer (before any skip concat) */
  readonly inChannels: number;
  /** channels of the skip concatenated to the input (up resnets only) */
  readonly skipChannels?: number;
  readonly outChannels: number;
  /** spatial size of the output relative to the sample: H_out = H / outScale */
  readonly outScale: number;
  /** index of the skip tensor this layer's output is stored as */
  readonly emitsSkip?: number;
  /** index of the skip tensor concatenated to this layer's input */
  readonly consumesSkip?: number;
}

export type StemId = 'conv_in' | 'time_embedding' | 'add_embedding' | 'conv_norm_out' | 'conv_out';

/** Modules outside the numbered blocks; listed so that parameter totals add up. */
export interface StemEntry {
  readonly id: StemId;
  readonly stage: 'stem';
  readonly modules: readonly [StemId];
  readonly specs: readonly ModuleSpec[];
  readonly emitsSkip?: 0;
}

export interface Skip {
  readonly index: number;
  /** 'conv_in' or a down layer id */
  readonly producer: string;
  /** the up layer id that concatenates it */
  readonly consumer: string;
  readonly channels: number;
  readonly scale: number;
}

export interface UNetLayout {
  readonly resolved: ResolvedConfig;
  /** down, mid, up layers in execution order */
  readonly layers: readonly LayoutLayer[];
  readonly stem: readonly StemEntry[];
  /** in emission order; up layers consume them last-first */
  readonly skips: readonly Skip[];
}

/** The module specs of a resnet and a transformer under `r`'s settings. */
function moduleSpecs(r: ResolvedConfig) {
  const resnet = (path: string, inCh: number, outCh: number): ModuleSpec => ({
    kind: 'resnet',
    path,
    inChannels: inCh,
    outChannels: outCh,
    tembChannels: r.timeEmbedDim,
    groups: r.groups,
    eps: r.eps,
    convShortcut: inCh !== outCh,
  });
  const transformer = (
    path: string,
    b: { outChannels: number; heads: number; headDim: number; transformerLayers: number; crossAttentionDim: number },
  ): ModuleSpec => ({
    kind: 'transformer',
    path,
    channels: b.outChannels,
    heads: b.heads,
    headDim: b.headDim,
    layers: b.transformerLayers,
    crossAttentionDim: b.crossAttentionDim,
    linearProjection: r.linearProjection,
    groups: r.groups,
  });
  return { resnet, transformer };
}

/** The down path: every resnet and downsampler output is a skip (conv_in's output is skip 0). */
function downLayers(r: ResolvedConfig): { layers: LayoutLayer[]; skipCount: number; scale: number } {
  const { resnet, transformer } = moduleSpecs(r);
  const layers: LayoutLayer[] = [];
  let skip = 1;
  let scale = 1;
  for (const b of r.down) {
    const base = { stage: 'down' as const, block: b.index + 1 };
    for (let k = 0; k < b.resnets; k++) {
      const inCh = k === 0 ? b.inChannels : b.outChannels;
      const res = resnet(`down_blocks.${b.index}.resnets.${k}`, inCh, b.outChannels);
      const attn = b.hasAttention ? [transformer(`down_blocks.${b.index}.attentions.${k}`, b)] : [];
      layers.push(
        layer({
          ...base,
          index: k + 1,
          role: 'resnet',
          specs: [res, ...attn],
          inChannels: inCh,
          outChannels: b.outChannels,
          outScale: scale,
          emitsSkip: skip++,
        }),
      );
    }
    if (b.hasDownsampler) {
      scale *= 2;
      const path = `down_blocks.${b.index}.downsamplers.0`;
      const spec: ModuleSpec = { kind: 'downsample', path, channels: b.outChannels, padding: r.config.downsample_padding };
      const io = { inChannels: b.outChannels, outChannels: b.outChannels, outScale: scale };
      layers.push(layer({ ...base, ...io, index: b.resnets + 1, role: 'downsampler', specs: [spec], emitsSkip: skip++ }));
    }
  }
  return { layers, skipCount: skip, scale };
}

function midLayers(r: ResolvedConfig, scale: number): LayoutLayer[] {
  const { resnet, transformer } = moduleSpecs(r);
  const m = r.mid;
  const mid = {
    stage: 'mid' as const,
    block: r.numBlocks + 1,
    role: 'resnet' as const,
    inChannels: m.channels,
    outChannels: m.channels,
    outScale: scale,
  };
  const midAttn = transformer('mid_block.attentions.0', { ...m, outChannels: m.channels });
  return [
    layer({ ...mid, index: 1, specs: [resnet('mid_block.resnets.0', m.channels, m.channels), midAttn] }),
    layer({ ...mid, index: 2, specs: [resnet('mid_block.resnets.1', m.channels, m.channels)] }),
  ];
}

/** The up path: each resnet concatenates the most recent unconsumed skip (of `skipCount`). */
function upLayers(r: ResolvedConfig, skipCount: number, scale: number): LayoutLayer[] {
  const { resnet, transformer } = moduleSpecs(r);
  const layers: LayoutLayer[] = [];
  let skip = skipCount;
  for (const b of r.up) {
    const base = { stage: 'up' as const, block: r.numBlocks + 2 + b.index };
    for (let k = 0; k < b.resnets; k++) {
      const inCh = k === 0 ? b.prevOutputChannels : b.outChannels;
      const skipCh = k === b.resnets - 1 ? b.inChannels : b.outChannels;
      const res = resnet(`up_blocks.${b.index}.resnets.${k}`, inCh + skipCh, b.outChannels);
      const attn = b.hasAttention ? [transformer(`up_blocks.${b.index}.attentions.${k}`, b)] : [];
      layers.push(
        layer({
          ...base,
          index: k + 1,
          role: 'resnet',
          specs: [res, ...attn],
          inChannels: inCh,
          skipChannels: skipCh,
          outChannels: b.outChannels,
          outScale: scale,
          consumesSkip: --skip,
        }),
      );
    }
    if (b.hasUpsampler) {
      scale /= 2;
      const spec: ModuleSpec = { kind: 'upsample', path: `up_blocks.${b.index}.upsamplers.0`, channels: b.outChannels };
      const io = { inChannels: b.outChannels, outChannels: b.outChannels, outScale: scale };
      layers.push(layer({ ...base, ...io, index: b.resnets + 1, role: 'upsampler', specs: [spec] }));
    }
  }
  if (skip !== 0) {
    // Only possible if up blocks do not have exactly one resnet more than their down blocks.
    throw new Error(`internal: ${skip} skip tensors left unconsumed by the up path`);
  }
  return layers;
}

function stemEntries(r: ResolvedConfig): StemEntry[] {
  const c0 = r.blockOutChannels[0];
  const { in_channels, out_channels, conv_in_kernel, conv_out_kernel } = r.config;
  const stem: StemEntry[] = [
    {
      ...stemEntry({ kind: 'conv', path: 'conv_in', inChannels: in_channels, outChannels: c0, kernel: conv_in_kernel }),
      emitsSkip: 0,
    },
    stemEntry({ kind: 'timestep_embedding', path: 'time_embedding', inChannels: r.timestepInputDim, outChannels: r.timeEmbedDim }),
  ];
  if (r.addition) {
    const inChannels = r.addition.inputDim;
    stem.push(stemEntry({ kind: 'timestep_embedding', path: 'add_embedding', inChannels, outChannels: r.timeEmbedDim }));
  }
  stem.push(
    stemEntry({ kind: 'groupnorm', path: 'conv_norm_out', channels: c0, groups: r.groups, eps: r.eps }),
    stemEntry({ kind: 'conv', path: 'conv_out', inChannels: c0, outChannels: out_channels, kernel: conv_out_kernel }),
  );
  return stem;
}

/** Which layer emits and which consumes each skip (skip 0 is conv_in's output). */
function skipTable(r: ResolvedConfig, layers: readonly LayoutLayer[], skipCount: number): Skip[] {
  const skips: Skip[] = [];
  for (let i = 0; i < skipCount; i++) {
    const producer = i === 0 ? undefined : layers.find((l) => l.emitsSkip === i);
    const consumer = layers.find((l) => l.consumesSkip === i);
    if (!consumer) throw new Error(`internal: skip ${i} has no consumer`);
    skips.push({
      index: i,
      producer: producer ? producer.id : 'conv_in',
      consumer: consumer.id,
      channels: producer ? producer.outChannels : r.blockOutChannels[0],
      scale: producer ? producer.outScale : 1,
    });
  }
  return skips;
}

export function buildLayout(cfg: UNetConfig): UNetLayout {
  const r = resolveConfig(cfg);
  const down = downLayers(r);
  const layers = [...down.layers, ...midLayers(r, down.scale), ...upLayers(r, down.skipCount, down.scale)];
  return { resolved: r, layers, stem: stemEntries(r), skips: skipTable(r, layers, down.skipCount) };
}

function layer(fields: Omit<LayoutLayer, 'id' | 'modules'>): LayoutLayer {
  return { id: `${fields.block}-${fields.index}`, modules: fields.specs.map((s) => s.path), ...fields };
}

function stemEntry(spec: ModuleSpec & { path: StemId }): StemEntry {
  return { id: spec.path, stage: 'stem', modules: [spec.path], specs: [spec] };
}

export function findLayer(layout: UNetLayout, id: string): LayoutLayer {
  const l = layout.layers.find((x) => x.id === id);
  if (!l) throw new Error(`unknown block id "${id}" (valid ids: ${layout.layers.map((x) => x.id).join(' ')})`);
  return l;
}

/**
 * The layer or stem id owning a module or parameter path, e.g.
 * 'up_blocks.1.attentions.2.transformer_blocks.0.attn1.to_q.weight' -> '7-3' (SD). ONNX scope
 * names ('/up_blocks.1/attentions.2/...') work after replacing '/' by '.' and trimming.
 */
export function ownerOfModulePath(layout: UNetLayout, path: string): string | undefined {
  const owns = (module: string) => path === module || path.startsWith(`${module}.`);
  for (const l of layout.layers) if (l.modules.some(owns)) return l.id;
  for (const s of layout.stem) if (s.modules.some(owns)) return s.id;
  return undefined;
}

// ---------------------------------------------------------------------------------------------
// Cuts

export interface Cut {
  /** the deepest down layer that stays in the hollowed net */
  readonly lastKeptDown: string;
  /** the skip emitted by lastKeptDown; firstKeptUp concatenates it */
  readonly skipIndex: number;
  /** hollowed layer ids, in layout order (a contiguous run of `layout.layers`) */
  readonly hollowed: readonly string[];
  /** the hollowed layer whose output is the hollow activation */
  readonly lastHollowed: string;
  /** the up layer whose hidden-state input (first Concat input) is the hollow activation */
  readonly firstKeptUp: string;
  /** every diffusers module path inside the hollow, in layout order */
  readonly hollowedModules: readonly string[];
  /**
   * hollowedModules with whole blocks collapsed, e.g. SD 39.2%:
   * ['down_blocks.2.downsamplers.0', 'down_blocks.3', 'mid_block', 'up_blocks.0']
   */
  readonly hollowedBlocks: readonly string[];
  /** hollow activation shape is [batch, hollowChannels, H / hollowScale, W / hollowScale] */
  readonly hollowChannels: number;
  readonly hollowScale: number;
}

/**
 * Every cut the layout allows, smallest hollow (mid block only) first. A cut keeps the down
 * layers up to some down layer L and hollows every later down layer, the mid block, every up
 * resnet consuming a skip emitted after L, and an upsampler whose block's resnets are all
 * hollowed. L ranges over every down layer; keeping only conv_in (hollowing 1-1 too) is not
 * offered: the hollowed net would have no down layer left to personalize.
 */
export function validCuts(layout: UNetLayout): Cut[] {
  const downs = layout.layers.filter((l) => l.stage === 'down');
  return downs.reverse().map((l) => cutAfter(layout, l));
}

function cutAfter(layout: UNetLayout, kept: LayoutLayer): Cut {
  const k = kept.emitsSkip;
  if (k === undefined) throw new Error(`internal: down layer ${kept.id} emits no skip`);
  const hollowed: LayoutLayer[] = [];
  const start = layout.layers.indexOf(kept) + 1;
  for (const l of layout.layers.slice(start)) {
    // The first up resnet concatenating a kept skip ends the hollow. Upsamplers need no test: the
    // loop reaches one only when every resnet of its block was hollowed.
    if (l.consumesSkip !== undefined && l.consumesSkip <= k) break;
    hollowed.push(l);
  }
  const last = hollowed[hollowed.length - 1];
  const firstKeptUp = layout.layers[layout.layers.indexOf(last) + 1];
  const modules = hollowed.flatMap((l) => l.modules);
  return {
    lastKeptDown: kept.id,
    skipIndex: k,
    hollowed: hollowed.map((l) => l.id),
    lastHollowed: last.id,
    firstKeptUp: firstKeptUp.id,
    hollowedModules: modules,
    hollowedBlocks: collapseBlocks(layout, modules),
    hollowChannels: last.outChannels,
    hollowScale: last.outScale,
  };
}

/** Replaces the modules of fully hollowed blocks by the block path (down_blocks.i, mid_block, up_blocks.i). */
function collapseBlocks(layout: UNetLayout, modules: readonly string[]): string[] {
  const blockOf = (m: string) => (m.startsWith('mid_block.') ? 'mid_block' : m.split('.').slice(0, 2).join('.'));
  const all = new Map<string, number>();
  for (const l of layout.layers) for (const m of l.modules) all.set(blockOf(m), (all.get(blockOf(m)) ?? 0) + 1);
  const taken = new Map<string, number>();
  for (const m of modules) taken.set(blockOf(m), (taken.get(blockOf(m)) ?? 0) + 1);
  const out: string[] = [];
  for (const m of modules) {
    const b = blockOf(m);
    if (taken.get(b) === all.get(b)) {
      if (!out.includes(b)) out.push(b);
    } else {
      out.push(m);
    }
  }
  return out;
}

/**
 * The cut whose hollow is exactly `ids`. Otherwise throws an Error that says which ids to add
 * (smallest valid hollow containing them) and/or remove (largest valid hollow inside them).
 */
export function cutFromHollowedIds(layout: UNetLayout, ids: Iterable<string>): Cut {
  const wanted = new Set(ids);
  const known = new Set(layout.layers.map((l) => l.id));
  const unknown = [...wanted].filter((id) => !known.has(id));
  if (unknown.length > 0) {
    const valid = layout.layers.map((l) => l.id).join(' ');
    throw new Error(`unknown block id${unknown.length > 1 ? 's' : ''} ${unknown.join(' ')} (valid ids: ${valid})`);
  }
  const asked = layout.layers.map((l) => l.id).filter((id) => wanted.has(id));
  if (asked.length === 0) {
    throw new Error('an empty hollow is not a cut (the smallest hollow is the mid block)');
  }

  const cuts = validCuts(layout);
  const exact = cuts.find((c) => c.hollowed.length === asked.length && c.hollowed.every((id) => wanted.has(id)));
  if (exact) return exact;

  const largest = cuts[cuts.length - 1];
  const never = asked.filter((id) => !largest.hollowed.includes(id));
  if (never.length > 0) {
    throw new Error(
      `hollow ${asked.join(' ')} is not a valid cut: ${never.join(' ')} can never be hollowed ` +
        '(the first down layer and the up layers consuming its skips stay; ' +
        `the largest hollow is ${describeIds(layout, largest.hollowed)})`,
    );
  }

  // cuts are nested (each contains the previous), so the first superset is the smallest.
  const superset = cuts.find((c) => asked.every((id) => c.hollowed.includes(id)));
  const subset = [...cuts].reverse().find((c) => c.hollowed.every((id) => wanted.has(id)));
  const parts: string[] = [];
  if (superset) {
    const add = superset.hollowed.filter((id) => !wanted.has(id));
    parts.push(
      `to keep every block you listed hollowed, add ${add.join(' ')} ` +
        `(hollow ${describeIds(layout, superset.hollowed)}, last kept down layer ${superset.lastKeptDown})`,
    );
  }
  if (subset) {
    const remove = asked.filter((id) => !subset.hollowed.includes(id));
    parts.push(
      `or remove ${remove.join(' ')} ` + `(hollow ${describeIds(layout, subset.hollowed)}, last kept down layer ${subset.lastKeptDown})`,
    );
  }
  throw new Error(
    `hollow ${asked.join(' ')} is not a valid cut: a hollow must be one contiguous run of blocks around the mid block, ` +
      `symmetric across the skip connections; ${parts.join('; ')}`,
  );
}

/** '3-3 .. 6-4' for contiguous runs of 3 or more layers, else the ids separated by spaces. */
export function describeIds(layout: UNetLayout, ids: readonly string[]): string {
  const pos = ids.map((id) => layout.layers.findIndex((l) => l.id === id));
  const contiguous = pos.every((p, i) => i === 0 || p === pos[i - 1] + 1);
  return contiguous && ids.length >= 3 ? `${ids[0]} .. ${ids[ids.length - 1]}` : ids.join(' ');
}

/** One line for logs and manifests: 'hollow 3-3 .. 6-4 (keeps down to 3-2, resumes at 7-1)'. */
export function describeCut(layout: UNetLayout, cut: Cut): string {
  return `hollow ${describeIds(layout, cut.hollowed)} (keeps down to ${cut.lastKeptDown}, resumes at ${cut.firstKeptUp})`;
}
