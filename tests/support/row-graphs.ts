/**
 * Two row-wise patterns in miniature, for the golden tests of passes/memory/chunk-feed-forward.ts and
 * passes/memory/band-conv-gradients.ts: a GEGLU feed-forward (x·W₁ + b₁, halves, a·erf(gate), ·W₂ + b₂)
 * over [1, tokens, channels], and a convolution input gradient (ConvTranspose) over [1, C, H, W].
 */
import { GraphBuilder } from '../../compiler/builder';
import { DataType } from '../../compiler/dtype';
import { Graph, Model, Value, inlineTensor } from '../../compiler/ir';
import { modelWithOutputs } from './attention-graph';

const F = DataType.FLOAT;

function weight(g: Graph, name: string, dims: number[]): Value {
  const values = Float32Array.from({ length: dims.reduce((a, b) => a * b, 1) }, (_, i) => Math.sin(i + 1));
  return g.addInitializer(inlineTensor(name, F, dims, new Uint8Array(values.buffer)));
}

/** 6 tokens of 2 channels, widened to 8 (two halves of 4), back to 2: the widest tensor is 192 bytes. */
export function feedForwardGraph(): Model {
  const g = new Graph();
  g.name = 'feed_forward';
  const tokens = 6;
  const x = g.addInput('x', { elemType: F, shape: [1, tokens, 2] });
  const ff = new GraphBuilder(g).within('ff');
  const typed = (v: Value, width: number) => ((v.type = { elemType: F, shape: [1, tokens, width] }), v);
  const wide = typed(ff.op('Add', [typed(ff.op('MatMul', [x, weight(g, 'w1', [2, 8])]), 8), weight(g, 'b1', [8])]), 8);
  const [a, gate] = ff
    .node('Split', [wide, ff.constant(BigInt64Array.of(4n, 4n), [2])], { axis: 2 }, { outputs: 2 })
    .map((v) => typed(v, 4));
  const geglu = typed(ff.op('Mul', [a, typed(ff.op('Erf', [gate]), 4)]), 4);
  const y = typed(ff.op('Add', [typed(ff.op('MatMul', [geglu, weight(g, 'w2', [4, 2])]), 2), weight(g, 'b2', [2])]), 2);
  return modelWithOutputs(g, { y });
}

/** A 3x3 convolution's input gradient: 2 channels in, 3 out, 6x5 pixels (a column buffer of 540 bytes per row). */
export function convGradientGraph(): Model {
  const g = new Graph();
  g.name = 'conv_gradient';
  const dY = g.addInput('dY', { elemType: F, shape: [1, 2, 6, 5] });
  const b = new GraphBuilder(g).within('conv/grad');
  const dX = b.op('ConvTranspose', [dY, weight(g, 'w', [2, 3, 3, 3])], { pads: [1, 1, 1, 1], kernel_shape: [3, 3], strides: [1, 1] });
  dX.type = { elemType: F, shape: [1, 3, 6, 5] };
  return modelWithOutputs(g, { dX });
}
