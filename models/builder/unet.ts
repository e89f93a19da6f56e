/**
 * Builds an ONNX UNet2DConditionModel for any supported diffusers config, shaped like what
 * torch.onnx.export gives (input/output names and dynamic axes, module-scoped node names, the
 * parameter-named and `onnx::*` initializers, per-layer op patterns), with seeded random weights
 * streamed into `model.onnx_data`.
 *
 * The module structure comes from models/layout (one source of truth with parameter counting
 * and cuts): the builder walks `layout.stem` and `layout.layers` in execution order.
 */
import { OUT_SAMPLE } from '../../compiler/manifest';
import { GraphBuilder } from '../../compiler/builder';
import { DataType } from '../../compiler/dtype';
import { Graph, Model, Value } from '../../compiler/ir';
import { UNetConfig } from '../config';
import { buildLayout, ModuleSpec, UNetLayout } from '../layout';
import { textTimeEmbedding, timestepEmbedding, timesteps, TIME_IDS } from './embeddings';
import { rewriteAsDynamo } from './dynamo-form';
import { BuildContext, Exporter, conv2d, groupNorm, int64Const, moduleBuilder, scopeSegments, silu } from './nn';
import { downsample, resnetBlock, TembState, upsample } from './resnet';
import { transformer2d } from './transformer';
import { ParameterRecord, VirtualWeightSink, WeightSink } from './weights';
import { writeBuiltModel } from './write-model';

export const OPSET = 17;
/** IR version of torch 1.13's opset-17 exports (the fixture's). */
export const IR_VERSION = 8;
/** What torch >= 2.9's dynamo exporter writes by default (and optimum-onnx's opset). */
export const DYNAMO_OPSET = 18;
export const DYNAMO_IR_VERSION = 10;

/**
 * The `timestep` input as each exporter of SD UNets declares it: 'float' [batch] (diffusers'
 * conversion script, the fixture), 'int64' [steps] (optimum before 1.24: its axis is named
 * `steps`), 'scalar' float 0-d (optimum 1.24 and later: diffusers unsqueezes it to [1]).
 */
export type TimestepForm = 'float' | 'int64' | 'scalar';
export const TIMESTEP_FORMS: readonly TimestepForm[] = ['float', 'int64', 'scalar'];

/** Which export the built graph imitates. */
export interface ExportForm {
  /** default 'torchscript' */
  readonly exporter?: Exporter;
  /** default 'float' */
  readonly timestep?: TimestepForm;
}

/** Names and shapes of the model's inputs, as the diffusers export declares them. */
export interface UNetSignature {
  readonly inputs: { name: string; shape: (number | string)[] }[];
  readonly outputs: { name: string; shape: (number | string)[] }[];
}

export interface BuiltGraph {
  readonly model: Model;
  readonly layout: UNetLayout;
  /** every initializer, with the PyTorch parameter it holds */
  readonly parameters: readonly ParameterRecord[];
  /** sum of the PyTorch parameter sizes (all initializers are parameters) */
  readonly parameterCount: number;
}

function uniformCrossAttentionDim(layout: UNetLayout): number {
  const dims = [...new Set(layout.resolved.crossAttentionDims)];
  if (dims.length !== 1) {
    throw new Error(`cross_attention_dim differs between blocks (${dims.join(', ')}); hollowc models one encoder_hidden_states width`);
  }
  return dims[0];
}

/** SDXL's text_embeds width: what add_embedding takes besides the TIME_IDS sinusoidal features. */
export function textEmbedsDim(layout: UNetLayout): number | undefined {
  const a = layout.resolved.addition;
  if (!a) return undefined;
  const dim = a.inputDim - TIME_IDS * a.timeEmbedDim;
  if (dim <= 0) {
    throw new Error(
      `projection_class_embeddings_input_dim (${a.inputDim}) must exceed ${TIME_IDS} time ids x addition_time_embed_dim (${a.timeEmbedDim})`,
    );
  }
  return dim;
}

const TIMESTEP_SHAPES: Record<TimestepForm, (number | string)[]> = { float: ['batch'], int64: ['steps'], scalar: [] };

export function unetSignature(
  config: UNetConfig,
  layout: UNetLayout = buildLayout(config),
  timestep: TimestepForm = 'float',
): UNetSignature {
  const inputs: UNetSignature['inputs'] = [
    { name: 'sample', shape: ['batch', config.in_channels, 'height', 'width'] },
    { name: 'timestep', shape: TIMESTEP_SHAPES[timestep] },
    { name: 'encoder_hidden_states', shape: ['batch', 'sequence', uniformCrossAttentionDim(layout)] },
  ];
  const text = textEmbedsDim(layout);
  if (text !== undefined) {
    inputs.push({ name: 'text_embeds', shape: ['batch', text] }, { name: 'time_ids', shape: ['batch', TIME_IDS] });
  }
  return { inputs, outputs: [{ name: OUT_SAMPLE, shape: ['batch', config.out_channels, 'height', 'width'] }] };
}

function emitModule(ctx: BuildContext, spec: ModuleSpec, x: Value, temb: TembState, context: Value): Value {
  switch (spec.kind) {
    case 'resnet':
      return resnetBlock(ctx, spec, x, temb);
    case 'transformer':
      return transformer2d(ctx, spec, x, context);
    case 'downsample':
      return downsample(ctx, spec.path, x, spec.channels, spec.padding);
    case 'upsample':
      return upsample(ctx, spec.path, x, spec.channels);
    default:
      throw new Error(`internal: ${spec.kind} module ${spec.path} inside a numbered block`);
  }
}

function stemSpec<K extends ModuleSpec['kind']>(layout: UNetLayout, id: string, kind: K): Extract<ModuleSpec, { kind: K }> {
  const entry = layout.stem.find((s) => s.id === id);
  const spec = entry?.specs[0];
  if (!spec || spec.kind !== kind) throw new Error(`internal: layout has no ${kind} stem module ${id}`);
  return spec as Extract<ModuleSpec, { kind: K }>;
}

/** Builds the graph; weights go to `weights` as they are created. */
export function buildUNetGraph(config: UNetConfig, weights: WeightSink, form: ExportForm = {}): BuiltGraph {
  const layout = buildLayout(config);
  const r = layout.resolved;
  const timestep = form.timestep ?? 'float';
  const signature = unetSignature(config, layout, timestep);
  const graph = new Graph();
  graph.name = form.exporter === 'dynamo' ? 'main_graph' : 'torch_jit';
  const root = new GraphBuilder(graph);
  const ctx = new BuildContext(graph, root, weights, form.exporter);

  const input: Record<string, Value> = {};
  for (const i of signature.inputs) {
    const elemType = i.name === 'timestep' && timestep === 'int64' ? DataType.INT64 : DataType.FLOAT;
    input[i.name] = graph.addInput(i.name, { elemType, shape: i.shape });
  }

  // Time embedding. timestep [batch] is expanded to the sample's batch like the export does, so
  // a single timestep [1] also works with a larger batch; diffusers makes a 0-d one [1] first,
  // and time_proj casts an integer one to float.
  const batch = root.op('Shape', [input.sample], { start: 0, end: 1 });
  const t0 = timestep === 'scalar' ? root.op('Unsqueeze', [input.timestep, int64Const(root, [0])]) : input.timestep;
  const expanded = root.op('Expand', [t0, batch]);
  const t = timestep === 'int64' ? root.within('time_proj').op('Cast', [expanded], { to: DataType.FLOAT }) : expanded;
  const cfg = r.config;
  const tFeatures = timesteps(root.within('time_proj'), t, r.timestepInputDim, cfg.flip_sin_to_cos, cfg.freq_shift);
  const te = stemSpec(layout, 'time_embedding', 'timestep_embedding');
  let temb = timestepEmbedding(ctx, te.path, tFeatures, te.inChannels, te.outChannels);
  if (r.addition) {
    const add = stemSpec(layout, 'add_embedding', 'timestep_embedding');
    const aug = textTimeEmbedding(
      ctx,
      { textEmbeds: input.text_embeds, timeIds: input.time_ids },
      r.addition.timeEmbedDim,
      add.inChannels,
      add.outChannels,
      cfg.flip_sin_to_cos,
      cfg.freq_shift,
    );
    temb = root.op('Add', [temb, aug]);
  }
  const tembState: TembState = { temb };

  // conv_in, then the numbered layers in execution order; skips are pushed by down layers and
  // concatenated (hidden, skip) on channels before each up resnet, in the up block's scope.
  const convIn = stemSpec(layout, 'conv_in', 'conv');
  let h = conv2d(ctx, convIn.path, input.sample, convIn.inChannels, convIn.outChannels, convIn.kernel);
  const skips: Value[] = [h];
  const context = input.encoder_hidden_states;
  for (const l of layout.layers) {
    if (l.consumesSkip !== undefined) {
      const block = scopeSegments(l.modules[0])[0];
      const skip = skips[l.consumesSkip];
      if (!skip) throw new Error(`internal: layer ${l.id} consumes skip ${l.consumesSkip}, which was never emitted`);
      h = root.within(block).op('Concat', [h, skip], { axis: 1 });
    }
    for (const spec of l.specs) h = emitModule(ctx, spec, h, tembState, context);
    if (l.emitsSkip !== undefined) {
      if (l.emitsSkip !== skips.length) throw new Error(`internal: layer ${l.id} emits skip ${l.emitsSkip} out of order`);
      skips.push(h);
    }
  }

  const normOut = stemSpec(layout, 'conv_norm_out', 'groupnorm');
  h = groupNorm(ctx, normOut.path, h, normOut.channels, normOut.groups, normOut.eps);
  h = silu(moduleBuilder(ctx, 'conv_act'), h);
  const convOut = stemSpec(layout, 'conv_out', 'conv');
  const out = conv2d(ctx, convOut.path, h, convOut.inChannels, convOut.outChannels, convOut.kernel, { output: OUT_SAMPLE });
  out.type = { elemType: DataType.FLOAT, shape: signature.outputs[0].shape };
  graph.outputs = [out];

  const model = new Model(graph);
  model.irVersion = form.exporter === 'dynamo' ? DYNAMO_IR_VERSION : IR_VERSION;
  model.opsetImports = [{ domain: '', version: form.exporter === 'dynamo' ? DYNAMO_OPSET : OPSET }];
  model.producerName = 'hollowc';
  model.producerVersion = 'model build';
  return { model, layout, parameters: ctx.parameters, parameterCount: ctx.parameterCount };
}

/**
 * The graph of `config` without weights (they point into a file that is never written): for
 * inspecting and counting full-size models cheaply. Not saveable or runnable.
 */
export function describeUNet(config: UNetConfig): BuiltGraph {
  return buildUNetGraph(config, new VirtualWeightSink());
}

export interface BuildUNetOptions {
  /** folder to write into (created if missing) */
  outDir: string;
  /** weight seed (default 0); same seed and config give the same bytes */
  seed?: number;
  /** graph file name (default `model.onnx`); weights go to `<fileName>_data` next to it */
  fileName?: string;
  /** the exporter and timestep form to imitate (default: TorchScript, float [batch]) */
  form?: ExportForm;
}

export interface BuildUNetResult {
  file: string;
  dataFile: string;
  parameterCount: number;
  /** bytes of weights written (external data plus the few inline ones) */
  weightBytes: number;
  seconds: number;
  parameters: readonly ParameterRecord[];
}

/**
 * Writes `<outDir>/model.onnx` + `model.onnx_data`. Weights are generated chunk by chunk into
 * the data file while the graph is built; the graph file then references those ranges in place.
 */
export async function buildUNet(config: UNetConfig, options: BuildUNetOptions): Promise<BuildUNetResult> {
  let parameters: readonly ParameterRecord[] = [];
  const written = writeBuiltModel(
    { outDir: options.outDir, seed: options.seed, fileName: options.fileName, metadata: { 'hollowc.unet_config': JSON.stringify(config) } },
    (sink) => {
      const built = buildUNetGraph(config, sink, options.form);
      parameters = built.parameters;
      return built;
    },
  );
  if (options.form?.exporter === 'dynamo') rewriteAsDynamo(written.file);
  return { ...written, parameters };
}
