/**
 * The torch modules a diffusers UNet is made of, each emitted with the op pattern
 * torch.onnx.export (torch 1.13, opset 17) gives it, minus the exporter's no-ops and with
 * shape computations reduced to what dynamic batch/height/width/sequence need:
 *
 * - Conv2d: `Conv` with weight/bias initializers named by module path.
 * - Linear on 2-D input (time embeddings): `Gemm(x, W[out,in], b, transB=1)`, path-named.
 * - Linear on 3-D input: `MatMul(x, onnx::MatMul_N[in,out])` then `Add(bias, .)`.
 * - GroupNorm: Reshape [0,G,-1] -> InstanceNormalization(ones, zeros) -> Reshape to the input
 *   shape -> Mul `onnx::Mul_N`[C,1,1] -> Add `onnx::Add_N`[C,1,1].
 * - LayerNorm: `LayerNormalization` (opset 17). SiLU: Sigmoid, Mul.
 */
import { DataType } from '../../compiler/dtype';
import { GraphBuilder, toAttributes } from '../../compiler/builder';
import { Graph, Value } from '../../compiler/ir';
import { fanInUniform, NORM_BIAS, NORM_WEIGHT, WeightInit } from '../random';
import { ParameterLayout, ParameterRecord, WeightSink } from './weights';

/** State shared by every module of one build. */
/**
 * Which torch exporter's graph to imitate. 'torchscript' (`dynamo=False`, torch 1.13's and
 * optimum's default): Linear weights on 3-D inputs pre-transposed as `onnx::MatMul_N`, GroupNorm's
 * affine as `onnx::Mul_N`/`onnx::Add_N` [C, 1, 1]. 'dynamo' (torch >= 2.9's default): every
 * initializer named by its parameter in torch's layout, read through Transpose / Unsqueeze nodes
 * (names and scope metadata are rewritten afterwards by dynamo-form.ts).
 */
export type Exporter = 'torchscript' | 'dynamo';

export class BuildContext {
  readonly parameters: ParameterRecord[] = [];
  /** Numbering of `onnx::<Op>_N` initializers, as the exporter names unnamed constants. */
  private anonymous = 0;

  constructor(
    readonly graph: Graph,
    readonly root: GraphBuilder,
    readonly weights: WeightSink,
    readonly exporter: Exporter = 'torchscript',
  ) {}

  get parameterCount(): number {
    return this.parameters.reduce((a, p) => a + p.torchShape.reduce((x, y) => x * y, 1), 0);
  }

  anonymousName(op: 'MatMul' | 'Mul' | 'Add'): string {
    for (;;) {
      const name = `onnx::${op}_${++this.anonymous}`;
      if (!this.graph.tryValue(name)) return name;
    }
  }

  /** Creates the initializer holding torch parameter `torchName`. */
  param(
    initializer: string,
    torchName: string,
    torchShape: readonly number[],
    dims: readonly number[],
    layout: ParameterLayout,
    init: WeightInit,
    order?: 'transposed',
  ): Value {
    const tensor = this.weights.tensor(initializer, dims, init, torchName, order);
    this.parameters.push({ torchName, torchShape: [...torchShape], initializer, dims: [...dims], layout });
    return this.graph.addInitializer(tensor);
  }
}

/**
 * ONNX scope segments of a module path: `down_blocks.0.attentions.1.transformer_blocks.0.ff.net.0.proj`
 * -> [`down_blocks.0`, `attentions.1`, `transformer_blocks.0`, `ff`, `net.0`, `proj`] (numeric
 * parts stick to the name before them, as torch's scope names do).
 */
export function scopeSegments(modulePath: string): string[] {
  const out: string[] = [];
  for (const token of modulePath.split('.')) {
    if (/^\d+$/.test(token) && out.length > 0) out[out.length - 1] += `.${token}`;
    else out.push(token);
  }
  return out;
}

export function moduleBuilder(ctx: BuildContext, modulePath: string): GraphBuilder {
  return ctx.root.within(...scopeSegments(modulePath));
}

/**
 * torch names a module's scope `name`, then `name_1`, `name_2`, ... each further time the same
 * module instance is called inside one parent call (ResnetBlock2D calls `nonlinearity` 2-3 times).
 */
export class CallCounter {
  private readonly calls = new Map<string, number>();

  constructor(private readonly parent: GraphBuilder) {}

  scope(name: string): GraphBuilder {
    const k = this.calls.get(name) ?? 0;
    this.calls.set(name, k + 1);
    return this.parent.within(k === 0 ? name : `${name}_${k}`);
  }
}

export function int64Const(b: GraphBuilder, values: number[]): Value {
  return b.int64s(values);
}

/** SiLU as the exporter writes it: x * Sigmoid(x), in the scope of the activation module. */
export function silu(b: GraphBuilder, x: Value): Value {
  const s = b.op('Sigmoid', [x]);
  return b.op('Mul', [x, s]);
}

export function conv2d(
  ctx: BuildContext,
  modulePath: string,
  x: Value,
  inC: number,
  outC: number,
  kernel: number,
  options: { stride?: number; pad?: number; output?: string } = {},
): Value {
  const b = moduleBuilder(ctx, modulePath);
  const fanIn = inC * kernel * kernel;
  const w = ctx.param(
    `${modulePath}.weight`,
    `${modulePath}.weight`,
    [outC, inC, kernel, kernel],
    [outC, inC, kernel, kernel],
    'same',
    fanInUniform(fanIn),
  );
  const bias = ctx.param(`${modulePath}.bias`, `${modulePath}.bias`, [outC], [outC], 'same', fanInUniform(fanIn));
  const stride = options.stride ?? 1;
  const pad = options.pad ?? (kernel - 1) / 2;
  const attrs = { dilations: [1, 1], group: 1, kernel_shape: [kernel, kernel], pads: [pad, pad, pad, pad], strides: [stride, stride] };
  if (options.output) {
    // the graph's last node writes the graph output under its own name (`out_sample`)
    const node = ctx.graph.addNode({
      opType: 'Conv',
      name: `${b.scope}/Conv`,
      inputs: [x, w, bias],
      outputs: [options.output],
      attributes: toAttributes(attrs),
    });
    return node.outputs[0];
  }
  return b.op('Conv', [x, w, bias], attrs);
}

/** Linear on [B, in]: Gemm with the torch-layout weight, as the exporter does for 2-D input. */
export function linear2d(ctx: BuildContext, modulePath: string, x: Value, inF: number, outF: number): Value {
  const b = moduleBuilder(ctx, modulePath);
  const init = fanInUniform(inF);
  const w = ctx.param(`${modulePath}.weight`, `${modulePath}.weight`, [outF, inF], [outF, inF], 'same', init);
  const bias = ctx.param(`${modulePath}.bias`, `${modulePath}.bias`, [outF], [outF], 'same', init);
  return b.op('Gemm', [x, w, bias], { alpha: { f: 1 }, beta: { f: 1 }, transB: 1 });
}

/** Linear on [B, S, in]: MatMul with a transposed `onnx::MatMul_N` weight, then Add(bias, .). */
export function linear3d(ctx: BuildContext, modulePath: string, x: Value, inF: number, outF: number, bias = true): Value {
  const b = moduleBuilder(ctx, modulePath);
  const init = fanInUniform(inF);
  if (ctx.exporter === 'dynamo') {
    // torch's aten linear on a 3-D input: MatMul against a Transpose of the [out, in] parameter.
    const w = ctx.param(`${modulePath}.weight`, `${modulePath}.weight`, [outF, inF], [outF, inF], 'same', init, 'transposed');
    const y = b.op('MatMul', [x, b.op('Transpose', [w], { perm: [1, 0] })]);
    if (!bias) return y;
    return b.op('Add', [y, ctx.param(`${modulePath}.bias`, `${modulePath}.bias`, [outF], [outF], 'same', init)]);
  }
  const w = ctx.param(ctx.anonymousName('MatMul'), `${modulePath}.weight`, [outF, inF], [inF, outF], 'transposed', init);
  const y = b.op('MatMul', [x, w]);
  if (!bias) return y;
  const bv = ctx.param(`${modulePath}.bias`, `${modulePath}.bias`, [outF], [outF], 'same', init);
  return b.op('Add', [bv, y]);
}

/** GroupNorm over [B, C, H, W] the way torch 1.13 exports it (InstanceNormalization on groups). */
export function groupNorm(ctx: BuildContext, modulePath: string, x: Value, channels: number, groups: number, eps: number): Value {
  const b = moduleBuilder(ctx, modulePath);
  const grouped = b.op('Reshape', [x, int64Const(b, [0, groups, -1])], { allowzero: 0 });
  const ones = b.constant(new Float32Array(groups).fill(1), [groups]);
  const zeros = b.constant(new Float32Array(groups), [groups]);
  const normed = b.op('InstanceNormalization', [grouped, ones, zeros], { epsilon: { f: eps } });
  const back = b.op('Reshape', [normed, b.op('Shape', [x])], { allowzero: 0 });
  if (ctx.exporter === 'dynamo') {
    // The affine parameters stay [C] under their own names, unsqueezed to [C, 1, 1] where used.
    const affine = (name: 'weight' | 'bias', init: WeightInit) =>
      b.op('Unsqueeze', [
        ctx.param(`${modulePath}.${name}`, `${modulePath}.${name}`, [channels], [channels], 'same', init),
        int64Const(b, [1, 2]),
      ]);
    return b.op('Add', [b.op('Mul', [back, affine('weight', NORM_WEIGHT)]), affine('bias', NORM_BIAS)]);
  }
  const w = ctx.param(ctx.anonymousName('Mul'), `${modulePath}.weight`, [channels], [channels, 1, 1], 'channel', NORM_WEIGHT);
  const scaled = b.op('Mul', [back, w]);
  const bias = ctx.param(ctx.anonymousName('Add'), `${modulePath}.bias`, [channels], [channels, 1, 1], 'channel', NORM_BIAS);
  return b.op('Add', [scaled, bias]);
}

export function layerNorm(ctx: BuildContext, modulePath: string, x: Value, channels: number, eps = 1e-5): Value {
  const b = moduleBuilder(ctx, modulePath);
  const w = ctx.param(`${modulePath}.weight`, `${modulePath}.weight`, [channels], [channels], 'same', NORM_WEIGHT);
  const bias = ctx.param(`${modulePath}.bias`, `${modulePath}.bias`, [channels], [channels], 'same', NORM_BIAS);
  return b.op('LayerNormalization', [x, w, bias], { axis: -1, epsilon: { f: eps } });
}

/** A float32 scalar Constant. */
export function floatScalar(b: GraphBuilder, value: number): Value {
  return b.scalar(value, DataType.FLOAT);
}
