/**
 * Builds diffusers' AutoencoderKL as the two ONNX models an optimum SD export has:
 *
 * - `vae_encoder`: `sample` [B, 3, H, W] -> encoder -> quant_conv -> `latent_parameters`
 *   [B, 2 * latent_channels, H/8, W/8] (mean and log-variance of the latent distribution).
 * - `vae_decoder`: `latent_sample` [B, latent_channels, h, w] -> post_quant_conv -> decoder ->
 *   `sample` [B, 3, 8h, 8w].
 *
 * Node and parameter names follow the torch module paths (`encoder.down_blocks.0.resnets.0.conv1`,
 * `quant_conv`), with the same GroupNorm/Conv/Resize/Pad op patterns as the UNet builder, whose
 * helpers (nn.ts, resnet.ts) this reuses. Weights are seeded and streamed to external data.
 */
import { GraphBuilder } from '../../compiler/builder';
import { DataType } from '../../compiler/dtype';
import { Graph, Model, Value } from '../../compiler/ir';
import { VAE_NORM_EPS, VaeConfig, vaeDecoderParameterCount, vaeEncoderParameterCount, vaeScaleFactor } from '../vae-config';
import { BuildContext, CallCounter, conv2d, floatScalar, groupNorm, int64Const, linear3d, moduleBuilder, silu } from './nn';
import { downsample, upsample } from './resnet';
import { IR_VERSION, OPSET } from './unet';
import { VirtualWeightSink, WeightSink } from './weights';
import { writeBuiltModel, WrittenModel } from './write-model';

export type VaePart = 'encoder' | 'decoder';

export interface BuiltVae {
  readonly model: Model;
  readonly parameterCount: number;
}

/** ResnetBlock2D with temb_channels=None (no time_emb_proj), as in the VAE. */
function vaeResnet(ctx: BuildContext, path: string, x: Value, inC: number, outC: number, groups: number): Value {
  const b = moduleBuilder(ctx, path);
  const calls = new CallCounter(b);
  let h = groupNorm(ctx, `${path}.norm1`, x, inC, groups, VAE_NORM_EPS);
  h = conv2d(ctx, `${path}.conv1`, silu(calls.scope('nonlinearity'), h), inC, outC, 3);
  h = groupNorm(ctx, `${path}.norm2`, h, outC, groups, VAE_NORM_EPS);
  h = conv2d(ctx, `${path}.conv2`, silu(calls.scope('nonlinearity'), h), outC, outC, 3);
  const shortcut = inC !== outC ? conv2d(ctx, `${path}.conv_shortcut`, x, inC, outC, 1) : x;
  return b.op('Add', [shortcut, h]);
}

/**
 * The mid block's Attention (one head of all channels, residual connection): GroupNorm, then
 * tokens [B, H*W, C], q/k/v with bias, Softmax(q k^T / sqrt(C)) v, to_out.0, back to [B, C, H, W].
 * The norm runs on the 4-D input: GroupNorm over [B, C, H*W] is the same numbers.
 */
function vaeAttention(ctx: BuildContext, path: string, x: Value, channels: number, groups: number): Value {
  const b = moduleBuilder(ctx, path);
  const normed = groupNorm(ctx, `${path}.group_norm`, x, channels, groups, VAE_NORM_EPS);
  const tokens = b.op('Transpose', [b.op('Reshape', [normed, int64Const(b, [0, channels, -1])], { allowzero: 0 })], { perm: [0, 2, 1] });
  const q = linear3d(ctx, `${path}.to_q`, tokens, channels, channels);
  const k = linear3d(ctx, `${path}.to_k`, tokens, channels, channels);
  const v = linear3d(ctx, `${path}.to_v`, tokens, channels, channels);
  const scores = b.op('Mul', [
    b.op('MatMul', [q, b.op('Transpose', [k], { perm: [0, 2, 1] })]),
    floatScalar(b, Math.fround(channels ** -0.5)),
  ]);
  const attended = b.op('MatMul', [b.op('Softmax', [scores], { axis: -1 }), v]);
  const out = linear3d(ctx, `${path}.to_out.0`, attended, channels, channels);
  const image = b.op('Reshape', [b.op('Transpose', [out], { perm: [0, 2, 1] }), b.op('Shape', [x])], { allowzero: 0 });
  return b.op('Add', [image, x]);
}

/** UNetMidBlock2D: resnet, attention, resnet. */
function midBlock(ctx: BuildContext, path: string, x: Value, channels: number, groups: number): Value {
  let h = vaeResnet(ctx, `${path}.resnets.0`, x, channels, channels, groups);
  h = vaeAttention(ctx, `${path}.attentions.0`, h, channels, groups);
  return vaeResnet(ctx, `${path}.resnets.1`, h, channels, channels, groups);
}

/** conv_norm_out, SiLU (conv_act), conv_out. */
function head(ctx: BuildContext, prefix: string, x: Value, inC: number, outC: number, groups: number, output?: string): Value {
  const h = groupNorm(ctx, `${prefix}.conv_norm_out`, x, inC, groups, VAE_NORM_EPS);
  return conv2d(ctx, `${prefix}.conv_out`, silu(moduleBuilder(ctx, `${prefix}.conv_act`), h), inC, outC, 3, { output });
}

function checkConfig(c: VaeConfig): void {
  for (const ch of c.block_out_channels) {
    if (ch % c.norm_num_groups !== 0) throw new Error(`VAE block width ${ch} is not a multiple of norm_num_groups ${c.norm_num_groups}`);
  }
}

function newModel(graph: Graph): Model {
  const model = new Model(graph);
  model.irVersion = IR_VERSION;
  model.opsetImports = [{ domain: '', version: OPSET }];
  model.producerName = 'hollowc';
  model.producerVersion = 'model build';
  return model;
}

function encoderGraph(c: VaeConfig, ctx: BuildContext, sample: Value): Value {
  const ch = c.block_out_channels;
  const g = c.norm_num_groups;
  let h = conv2d(ctx, 'encoder.conv_in', sample, c.in_channels, ch[0], 3);
  let prev = ch[0];
  ch.forEach((out, i) => {
    for (let j = 0; j < c.layers_per_block; j++) {
      h = vaeResnet(ctx, `encoder.down_blocks.${i}.resnets.${j}`, h, j === 0 ? prev : out, out, g);
    }
    // DownEncoderBlock2D's Downsample2D has padding 0: diffusers pads (0, 1, 0, 1) first
    if (i < ch.length - 1) h = downsample(ctx, `encoder.down_blocks.${i}.downsamplers.0`, h, out, 0);
    prev = out;
  });
  const top = ch[ch.length - 1];
  h = midBlock(ctx, 'encoder.mid_block', h, top, g);
  h = head(ctx, 'encoder', h, top, 2 * c.latent_channels, g);
  return conv2d(ctx, 'quant_conv', h, 2 * c.latent_channels, 2 * c.latent_channels, 1, { output: 'latent_parameters' });
}

function decoderGraph(c: VaeConfig, ctx: BuildContext, latent: Value, output = 'sample'): Value {
  const rev = [...c.block_out_channels].reverse();
  const g = c.norm_num_groups;
  let h = conv2d(ctx, 'post_quant_conv', latent, c.latent_channels, c.latent_channels, 1);
  h = conv2d(ctx, 'decoder.conv_in', h, c.latent_channels, rev[0], 3);
  h = midBlock(ctx, 'decoder.mid_block', h, rev[0], g);
  let prev = rev[0];
  rev.forEach((out, i) => {
    for (let j = 0; j <= c.layers_per_block; j++) {
      h = vaeResnet(ctx, `decoder.up_blocks.${i}.resnets.${j}`, h, j === 0 ? prev : out, out, g);
    }
    if (i < rev.length - 1) h = upsample(ctx, `decoder.up_blocks.${i}.upsamplers.0`, h, out);
    prev = out;
  });
  return head(ctx, 'decoder', h, rev[rev.length - 1], c.out_channels, g, output);
}

/** The joined autoencoder's extra input (N(0, 1) noise shaped like the latents) and its output. */
export const LATENT_NOISE = 'latent_noise';
export const RECONSTRUCTION = 'reconstruction';

/**
 * DiagonalGaussianDistribution.sample() in the graph: z = mean + exp(logvar / 2) * noise, with the
 * noise an input so that a training step is a pure function of its feeds. (diffusers also clamps
 * logvar to [-30, 20]; training leaves that to the runtime's encode, which does it.)
 */
function sampleLatent(ctx: BuildContext, parameters: Value, noise: Value, channels: number): Value {
  const b = moduleBuilder(ctx, 'latent_dist');
  const half = (from: number, to: number) =>
    b.op('Slice', [parameters, int64Const(b, [from]), int64Const(b, [to]), int64Const(b, [1])]);
  const std = b.op('Exp', [b.op('Mul', [half(channels, 2 * channels), floatScalar(b, 0.5)])]);
  return b.op('Add', [half(0, channels), b.op('Mul', [std, noise])]);
}

/** The `vae_encoder` or `vae_decoder` graph; weights go to `weights` as they are made. */
export function buildVaeGraph(c: VaeConfig, part: VaePart, weights: WeightSink): BuiltVae {
  checkConfig(c);
  const graph = new Graph();
  graph.name = 'main_graph';
  const ctx = new BuildContext(graph, new GraphBuilder(graph), weights);
  if (part === 'encoder') {
    const sample = graph.addInput('sample', { elemType: DataType.FLOAT, shape: ['batch', c.in_channels, 'height', 'width'] });
    const out = encoderGraph(c, ctx, sample);
    out.type = { elemType: DataType.FLOAT, shape: ['batch', 2 * c.latent_channels, 'latent_height', 'latent_width'] };
    graph.outputs = [out];
  } else {
    const latent = graph.addInput('latent_sample', {
      elemType: DataType.FLOAT,
      shape: ['batch', c.latent_channels, 'latent_height', 'latent_width'],
    });
    const out = decoderGraph(c, ctx, latent);
    out.type = { elemType: DataType.FLOAT, shape: ['batch', c.out_channels, 'height', 'width'] };
    graph.outputs = [out];
  }
  const expected = part === 'encoder' ? vaeEncoderParameterCount(c) : vaeDecoderParameterCount(c);
  if (ctx.parameterCount !== expected)
    throw new Error(`internal: VAE ${part} has ${ctx.parameterCount} parameters, the config says ${expected}`);
  return { model: newModel(graph), parameterCount: ctx.parameterCount };
}

/**
 * Encoder and decoder joined into one autoencoder graph, for training it (compile-graph.ts):
 * `sample` [B, 3, H, W] and `latent_noise` [B, C, H/f, W/f] in; `latent_parameters` (mean ‖
 * logvar) and `reconstruction` [B, 3, H, W] out. Parameter names and layouts are those of the two
 * separate graphs, so trained values go back into them by name.
 */
export function buildAutoencoderGraph(c: VaeConfig, weights: WeightSink): BuiltVae {
  checkConfig(c);
  const graph = new Graph();
  graph.name = 'autoencoder';
  const ctx = new BuildContext(graph, new GraphBuilder(graph), weights);
  const f = vaeScaleFactor(c);
  const sample = graph.addInput('sample', { elemType: DataType.FLOAT, shape: ['batch', c.in_channels, 'height', 'width'] });
  const noise = graph.addInput(LATENT_NOISE, { elemType: DataType.FLOAT, shape: ['batch', c.latent_channels, 'latent_height', 'latent_width'] });
  const parameters = encoderGraph(c, ctx, sample);
  parameters.type = { elemType: DataType.FLOAT, shape: ['batch', 2 * c.latent_channels, 'latent_height', 'latent_width'] };
  const out = decoderGraph(c, ctx, sampleLatent(ctx, parameters, noise, c.latent_channels), RECONSTRUCTION);
  out.type = { elemType: DataType.FLOAT, shape: ['batch', c.out_channels, `latent_height*${f}`, `latent_width*${f}`] };
  graph.outputs = [parameters, out];
  const expected = vaeEncoderParameterCount(c) + vaeDecoderParameterCount(c);
  if (ctx.parameterCount !== expected) throw new Error(`internal: the autoencoder has ${ctx.parameterCount} parameters, the config says ${expected}`);
  return { model: newModel(graph), parameterCount: ctx.parameterCount };
}

/** Writes the joined autoencoder (`<outDir>/model.onnx` + `model.onnx_data`). */
export function buildAutoencoder(c: VaeConfig, options: { outDir: string; seed?: number }): WrittenModel {
  return writeBuiltModel(
    { outDir: options.outDir, seed: options.seed, metadata: { 'hollowc.vae_config': JSON.stringify(c), 'hollowc.vae_part': 'autoencoder' } },
    (sink) => buildAutoencoderGraph(c, sink),
  );
}

export function describeVae(c: VaeConfig, part: VaePart): BuiltVae {
  return buildVaeGraph(c, part, new VirtualWeightSink());
}

/** Writes `<outDir>/model.onnx` + `model.onnx_data` of the VAE encoder or decoder. */
export function buildVae(c: VaeConfig, part: VaePart, options: { outDir: string; seed?: number }): WrittenModel {
  return writeBuiltModel(
    { outDir: options.outDir, seed: options.seed, metadata: { 'hollowc.vae_config': JSON.stringify(c), 'hollowc.vae_part': part } },
    (sink) => buildVaeGraph(c, part, sink),
  );
}

export const VAE_PARTS: readonly VaePart[] = ['encoder', 'decoder'];
