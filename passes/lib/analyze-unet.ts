/**
 * Recovers the paper's block structure from an exported UNet graph: the diffusers config the
 * graph was built from (read off module scopes and weight shapes), its layout (models/), the
 * parameters of every block counted from initializer shapes, the skip tensors, and every valid
 * cut with its hollow activation. No weight bytes are read.
 */
import { HollowcError } from '../../compiler/errors';
import { Dim, Graph, Node, Value } from '../../compiler/ir';
import { DIFFUSERS_DEFAULTS, DownBlockType, UNetConfig, UpBlockType } from '../../models/config';
import { FamilyName } from '../../models/families';
import { Cut, UNetLayout, buildLayout, ownerOfModulePath, validCuts } from '../../models/layout';
import { ParameterInfo, findParameters, isWithin, moduleOfNode, moduleTree } from '../../compiler/module-scope';

export interface BlockInfo {
  id: string;
  stage: 'stem' | 'down' | 'mid' | 'up';
  modules: string[];
  params: number;
  emitsSkip?: number;
  consumesSkip?: number;
}

export interface SkipInfo {
  index: number;
  /** The tensor the down path stores and the up path concatenates. */
  tensor: string;
  producer: string;
  consumer: string;
  /** The up layer's skip Concat node. */
  concat: string;
}

/** A valid cut of this graph: the layout's cut plus what the graph says about it. */
export interface CutInfo extends Cut {
  removedParams: number;
  fraction: number;
  /** The hollow activation: the hidden-state input of the first kept up layer's skip Concat. */
  activation: { tensor: string; concat: string; shape: Dim[] };
}

export interface UNetAnalysis {
  family: FamilyName;
  config: UNetConfig;
  layout: UNetLayout;
  totalParams: number;
  blocks: BlockInfo[];
  stem: BlockInfo[];
  skips: SkipInfo[];
  cuts: CutInfo[];
  parameters: ParameterInfo[];
  /** Parameter count per owning module path. */
  paramsByModule: Map<string, number>;
}

const EXPECTED_NAMES =
  'a torch.onnx.export of a diffusers UNet2DConditionModel, whose node names carry module scopes like /down_blocks.0/resnets.0/conv1/Conv (TorchScript) or whose node metadata does (dynamo: pkg.torch.onnx.name_scopes)';

function fail(label: string, message: string): never {
  throw new HollowcError(message, label);
}

/** Indices i present as `<prefix>.<i>` among module paths. */
function indices(modules: Set<string>, prefix: string): number[] {
  const found = new Set<number>();
  const re = new RegExp(`^${prefix.replace(/\./g, '\\.')}\\.(\\d+)$`);
  for (const m of modules) {
    const hit = re.exec(m);
    if (hit) found.add(Number(hit[1]));
  }
  return [...found].sort((a, b) => a - b);
}

/** The weight (2-D or more) of a module. */
function weightOf(params: Map<string, ParameterInfo[]>, module: string, label: string): ParameterInfo {
  const w = params.get(module)?.find((p) => p.value.initializer!.dims.length >= 2);
  if (!w) fail(label, `expected a weight for module ${module}, found none (${EXPECTED_NAMES})`);
  return w;
}

/**
 * A Linear weight's in/out features, from how the graph reads it: TorchScript exports store it
 * pre-transposed [in, out] for MatMul; the dynamo exporter keeps torch's [out, in] and reads it
 * through a Transpose; Gemm says which with transB.
 */
export function linearFeatures(w: ParameterInfo): { in: number; out: number } {
  const [a, b] = w.value.initializer!.dims;
  const torchLayout = w.value.uses.some(
    (u) => (u.node.opType === 'Transpose' && u.node.attrInts('perm', []).join() === '1,0') || (u.node.opType === 'Gemm' && u.index === 1 && u.node.attrInt('transB', 0) === 1),
  );
  return torchLayout ? { in: b, out: a } : { in: a, out: b };
}

function inferConfig(g: Graph, modules: Set<string>, params: Map<string, ParameterInfo[]>, label: string): UNetConfig {
  const down = indices(modules, 'down_blocks');
  const up = indices(modules, 'up_blocks');
  if (down.length < 2 || up.length !== down.length || !modules.has('mid_block')) {
    fail(
      label,
      `expected an SD-family UNet (down_blocks.*, mid_block, up_blocks.* with as many up as down blocks); found ${down.length} down blocks, ${up.length} up blocks${modules.has('mid_block') ? '' : ', no mid_block'}`,
    );
  }
  if (!modules.has('mid_block.attentions.0'))
    fail(label, 'expected mid_block to be UNetMidBlock2DCrossAttn (mid_block.attentions.0); found no attention in mid_block');
  const opsOf = (module: string) => g.nodes.filter((n) => moduleOfNode(n) === module).map((n) => n.opType);
  const dimsOf = (module: string) => weightOf(params, module, label).value.initializer!.dims;
  const blockOut = down.map((i) => dimsOf(`down_blocks.${i}.resnets.0.conv1`)[0]);
  const downTypes: DownBlockType[] = down.map((i) =>
    modules.has(`down_blocks.${i}.attentions.0`) ? 'CrossAttnDownBlock2D' : 'DownBlock2D',
  );
  const upTypes: UpBlockType[] = up.map((i) => (modules.has(`up_blocks.${i}.attentions.0`) ? 'CrossAttnUpBlock2D' : 'UpBlock2D'));
  const layers = down.map((i) => indices(modules, `down_blocks.${i}.resnets`).length);
  // A block without attention has no transformer depth of its own; diffusers' default is 1.
  const transformerLayers = down.map((i) => {
    const own = indices(modules, `down_blocks.${i}.attentions.0.transformer_blocks`).length;
    const mirrored = indices(modules, `up_blocks.${down.length - 1 - i}.attentions.0.transformer_blocks`).length;
    return own || mirrored || 1;
  });
  const attnBlock = down.find((i) => downTypes[i] === 'CrossAttnDownBlock2D') ?? 0;
  const projIn = opsOf(`down_blocks.${attnBlock}.attentions.0.proj_in`);
  const toK = `down_blocks.${attnBlock}.attentions.0.transformer_blocks.0.attn2.to_k`;
  const crossDim = linearFeatures(weightOf(params, toK, label)).in;
  const norm = g.nodes.find((n) => n.opType === 'InstanceNormalization' || n.opType === 'GroupNormalization');
  const groups = norm ? groupCount(norm) : DIFFUSERS_DEFAULTS.norm_num_groups;
  const eps = norm ? norm.attrFloat('epsilon', 1e-5) : DIFFUSERS_DEFAULTS.norm_eps;
  const convIn = dimsOf('conv_in');
  const convOut = dimsOf('conv_out');
  const time1 = linearFeatures(weightOf(params, 'time_embedding.linear_1', label));
  const hasAdd = modules.has('add_embedding');
  let addition: Partial<UNetConfig> = {};
  if (hasAdd) {
    const addIn = linearFeatures(weightOf(params, 'add_embedding.linear_1', label)).in;
    const textEmbeds = g.inputs.find((v) => v.name === 'text_embeds')?.type?.shape?.[1];
    const timeIds = g.inputs.find((v) => v.name === 'time_ids')?.type?.shape?.[1];
    const perId = typeof textEmbeds === 'number' ? (addIn - textEmbeds) / (typeof timeIds === 'number' ? timeIds : 6) : 256;
    addition = { addition_embed_type: 'text_time', projection_class_embeddings_input_dim: addIn, addition_time_embed_dim: perId };
  }
  return {
    ...DIFFUSERS_DEFAULTS,
    in_channels: convIn[1],
    out_channels: convOut[0],
    conv_in_kernel: convIn[2] ?? 3,
    conv_out_kernel: convOut[2] ?? 3,
    down_block_types: downTypes,
    up_block_types: upTypes,
    block_out_channels: blockOut,
    layers_per_block: layers.every((l) => l === layers[0]) ? layers[0] : layers,
    transformer_layers_per_block: transformerLayers.every((l) => l === transformerLayers[0]) ? transformerLayers[0] : transformerLayers,
    // Head counts do not change parameters or cuts; one head per block keeps heads*dim = width.
    attention_head_dim: 1,
    num_attention_heads: null,
    cross_attention_dim: crossDim,
    // A convolution or a Linear (MatMul, or Gemm; dynamo exports add a Transpose of the weight)
    use_linear_projection: projIn.length > 0 && !projIn.includes('Conv'),
    norm_num_groups: groups,
    norm_eps: eps,
    time_embedding_dim: time1.out,
    ...addition,
  };
}

/** GroupNorm's group count: InstanceNormalization normalizes a [N, groups, -1] view. */
function groupCount(norm: Node): number {
  if (norm.opType === 'GroupNormalization') return norm.attrInt('num_groups');
  const scale = norm.inputs[1];
  const dims = scale?.initializer?.dims ?? constantDims(scale);
  return dims?.[0] ?? DIFFUSERS_DEFAULTS.norm_num_groups;
}

function constantDims(v: Value | null | undefined): number[] | undefined {
  const p = v?.producer;
  const attr = p?.opType === 'Constant' ? p.attr('value') : undefined;
  return attr?.type === 'tensor' ? attr.value.dims : undefined;
}

function familyOf(config: UNetConfig): FamilyName {
  if (config.addition_embed_type === 'text_time') return 'sdxl';
  return config.use_linear_projection ? 'sd21' : 'sd15';
}

/** The Concat (axis 1) whose output feeds the up resnet `module`: [hidden, skip] -> resnet. */
function skipConcatOf(g: Graph, module: string): Node | undefined {
  for (const n of g.nodes) {
    if (n.opType !== 'Concat' || n.inputs.length !== 2) continue;
    if (n.outputs[0].uses.some((u) => isWithin(moduleOfNode(u.node), module))) return n;
  }
  return undefined;
}

function activationShape(g: Graph, channels: number, scale: number): Dim[] {
  const sample = g.inputs.find((v) => v.name === 'sample')?.type?.shape ?? ['batch', null, 'height', 'width'];
  const spatial = (d: Dim): Dim => (typeof d === 'number' ? d / scale : typeof d === 'string' ? (scale === 1 ? d : `${d}/${scale}`) : null);
  return [sample[0] ?? 'batch', channels, spatial(sample[2] ?? null), spatial(sample[3] ?? null)];
}

/** ONNX's own operator domain, by either of its names. */
export function isStandardDomain(domain: string): boolean {
  return domain === '' || domain === 'ai.onnx';
}

/**
 * Refuses a graph with ops outside the standard ONNX domain: Olive's fused com.microsoft ops
 * (GroupNorm, MultiHeadAttention, BiasSplitGelu, SkipLayerNorm) have no gradient rules here, some
 * providers lack kernels for them (the CPU provider has no GroupNorm), and every artifact would
 * inherit them.
 */
function refuseNonStandardOps(g: Graph, label: string): void {
  const odd = g.nodes.filter((n) => !isStandardDomain(n.domain));
  if (odd.length === 0) return;
  const first = odd[0];
  const kinds = [...new Set(odd.map((n) => `${n.domain}.${n.opType}`))];
  fail(
    label,
    `op ${first.opType} of domain ${first.domain} (node ${JSON.stringify(first.name)}; ${odd.length} nodes outside the standard ONNX domain: ${kinds.join(', ')}) is not a standard ONNX op, and hollowc emits standard ONNX only: export a plain graph (optimum-cli export onnx or torch.onnx.export of the diffusers UNet), not an Olive-optimized one`,
  );
}

export function analyzeUNet(g: Graph, label = 'model'): UNetAnalysis {
  refuseNonStandardOps(g, label);
  const modules = moduleTree(g);
  if (![...modules].some((m) => m.startsWith('down_blocks.'))) {
    const sample = g.nodes
      .filter((n) => n.opType !== 'Constant')
      .slice(0, 3)
      .map((n) => JSON.stringify(n.name || `<unnamed ${n.opType}>`));
    fail(label, `expected ${EXPECTED_NAMES}; found ${g.nodes.length} nodes without such scopes (e.g. ${sample.join(', ') || 'none'})`);
  }
  const parameters = findParameters(g);
  const byModule = new Map<string, ParameterInfo[]>();
  for (const p of parameters) byModule.set(p.module, [...(byModule.get(p.module) ?? []), p]);

  const config = inferConfig(g, modules, byModule, label);
  const layout = buildLayout(config);

  // Every module the layout expects must be in the graph, or the structure was misread.
  for (const entry of [...layout.layers, ...layout.stem]) {
    for (const m of entry.modules)
      if (!modules.has(m))
        fail(
          label,
          `expected module ${m} (block ${entry.id}) from the structure of this UNet, but no node is scoped under /${m.replace(/\./g, '/')}/`,
        );
  }

  const paramsByModule = new Map<string, number>();
  const paramsByOwner = new Map<string, number>();
  for (const p of parameters) {
    paramsByModule.set(p.module, (paramsByModule.get(p.module) ?? 0) + p.count);
    const owner = ownerOfModulePath(layout, p.module);
    if (!owner) fail(label, `parameter ${p.value.name} belongs to module ${p.module || '<root>'}, which is in no block of the UNet layout`);
    paramsByOwner.set(owner, (paramsByOwner.get(owner) ?? 0) + p.count);
  }
  const totalParams = parameters.reduce((a, p) => a + p.count, 0);
  const info = (l: {
    id: string;
    stage: BlockInfo['stage'];
    modules: readonly string[];
    emitsSkip?: number;
    consumesSkip?: number;
  }): BlockInfo => ({
    id: l.id,
    stage: l.stage,
    modules: [...l.modules],
    params: paramsByOwner.get(l.id) ?? 0,
    ...(l.emitsSkip !== undefined ? { emitsSkip: l.emitsSkip } : {}),
    ...(l.consumesSkip !== undefined ? { consumesSkip: l.consumesSkip } : {}),
  });
  const blocks = layout.layers.map(info);
  const stem = layout.stem.map(info);

  const skips: SkipInfo[] = layout.skips.map((s) => {
    const consumer = layout.layers.find((l) => l.id === s.consumer)!;
    const resnet = consumer.modules[0];
    const concat = skipConcatOf(g, resnet);
    if (!concat) fail(label, `expected a skip Concat feeding ${resnet} (block ${consumer.id}); found none`);
    const skip = concat.input(1);
    const producerModule = skip.producer ? moduleOfNode(skip.producer) : '';
    const owner = ownerOfModulePath(layout, producerModule);
    if (owner !== s.producer) {
      fail(
        label,
        `skip ${s.index} should come from block ${s.producer}, but ${concat.name} concatenates ${skip.name} from ${owner ?? (producerModule || 'outside any block')}`,
      );
    }
    return { index: s.index, tensor: skip.name, producer: s.producer, consumer: s.consumer, concat: concat.name };
  });

  const cuts: CutInfo[] = validCuts(layout).map((cut) => {
    const removed = cut.hollowed.reduce((a, id) => a + (paramsByOwner.get(id) ?? 0), 0);
    const concat = g.nodes.find((n) => n.name === skips.find((s) => s.consumer === cut.firstKeptUp)!.concat)!;
    return {
      ...cut,
      removedParams: removed,
      fraction: removed / totalParams,
      activation: { tensor: concat.input(0).name, concat: concat.name, shape: activationShape(g, cut.hollowChannels, cut.hollowScale) },
    };
  });

  return { family: familyOf(config), config, layout, totalParams, blocks, stem, skips, cuts, parameters, paramsByModule };
}
