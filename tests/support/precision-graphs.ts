/**
 * A graph of the ops passes/precision/precise-normalization.ts and passes/precision/precise-trigonometry.ts rewrite,
 * as SD has them (tests/passes-golden.test.ts, tests/precise-rewrites.test.ts, tests/webgpu.test.ts):
 * a GroupNorm's InstanceNormalization at the resnets' epsilon and one at the transformers' on the
 * same input shape, a LayerNormalization, and a timestep embedding's Sin and Cos of one argument.
 */
import * as ort from 'onnxruntime-node';
import { GraphBuilder } from '../../compiler/builder';
import { DataType } from '../../compiler/dtype';
import { Graph, Model, Value } from '../../compiler/ir';

export interface PrecisionGraphSize {
  groups: number;
  /** Elements per group, and the LayerNormalization's width. */
  spatial: number;
  /** Sin/Cos arguments: timestep times each frequency. */
  frequencies: number[];
}

export const RESNET_EPSILON = 1e-5;
export const TRANSFORMER_EPSILON = 1e-6;

export function precisionGraph({ groups, spatial, frequencies }: PrecisionGraphSize): Model {
  const g = new Graph();
  g.name = 'norms_and_trig';
  const F = DataType.FLOAT;
  const norm = [1, groups, spatial];
  const x = g.addInput('x', { elemType: F, shape: norm });
  const t = g.addInput('timestep', { elemType: F, shape: [1, 1] });
  const b = new GraphBuilder(g);
  // Typed as an exporter's value_info types them: the normalized axes need the rank.
  const typed = (v: Value, shape: number[]) => ((v.type = { elemType: F, shape }), v);
  const output = (name: string, v: Value) => {
    const node = g.addNode({ opType: 'Identity', inputs: [v], outputs: [name], name: `/${name}` });
    node.outputs[0].type = v.type;
    g.outputs.push(node.outputs[0]);
  };
  const ones = b.constant(new Float32Array(groups).fill(1), [groups]);
  const zeros = b.constant(new Float32Array(groups), [groups]);
  const instanceNorm = (scope: string, epsilon: number) =>
    typed(b.within(scope).op('InstanceNormalization', [x, ones, zeros], { epsilon: { f: epsilon } }), norm);
  output('resnet_norm', instanceNorm('resnets.0/norm1', RESNET_EPSILON));
  output('transformer_norm', instanceNorm('attentions.0/norm', TRANSFORMER_EPSILON));
  const lnScale = b.constant(new Float32Array(spatial).fill(1), [spatial]);
  const lnBias = b.constant(new Float32Array(spatial), [spatial]);
  output('layer_norm', typed(b.within('attentions.0/norm1').op('LayerNormalization', [x, lnScale, lnBias], { axis: -1 }), norm));
  const proj = b.within('time_proj');
  const emb = [1, frequencies.length];
  const args = typed(proj.op('Mul', [t, proj.constant(Float32Array.from(frequencies), [frequencies.length])]), emb);
  output('sin', typed(proj.op('Sin', [args]), emb));
  output('cos', typed(proj.op('Cos', [args]), emb));
  const model = new Model(g);
  model.irVersion = 8;
  model.opsetImports = [{ domain: '', version: 17 }];
  return model;
}

/** Float64 normalization over the last axis of `x` ([rows, n] flattened), unit scale, zero bias. */
export function normalizeRows(x: Float32Array, n: number, epsilon: number): Float64Array {
  const y = new Float64Array(x.length);
  for (let r = 0; r < x.length / n; r++) {
    let mean = 0;
    for (let i = 0; i < n; i++) mean += x[r * n + i] / n;
    let variance = 0;
    for (let i = 0; i < n; i++) variance += (x[r * n + i] - mean) ** 2 / n;
    for (let i = 0; i < n; i++) y[r * n + i] = (x[r * n + i] - mean) / Math.sqrt(variance + epsilon);
  }
  return y;
}

/** Feeds: x with each group's mean far from zero (`offset`) and spread `spread`, and a timestep. */
export function precisionFeeds(size: PrecisionGraphSize, offset: number, spread: number, timestep: number): Record<string, ort.Tensor> {
  const n = size.groups * size.spatial;
  const x = Float32Array.from({ length: n }, (_, i) => offset + spread * Math.sin(1.7 * i + 0.3 * Math.floor(i / size.spatial)));
  return {
    x: new ort.Tensor('float32', x, [1, size.groups, size.spatial]),
    timestep: new ort.Tensor('float32', Float32Array.of(timestep), [1, 1]),
  };
}

/** SD's shape: 8 groups of 96 values; SD's 160 timestep frequencies and three reaching |t·f| = 6400. */
export const PRECISION_SIZE: PrecisionGraphSize = {
  groups: 8,
  spatial: 96,
  frequencies: [...Array.from({ length: 160 }, (_, k) => Math.exp((-Math.log(10000) * k) / 160)), 2, 3.3, 6.4],
};

/**
 * Worst error of the outputs against float64: normalizations as max |y − ref| / max |ref| over
 * the three, Sin/Cos as max |y − ref| of the float32 argument (Mul rounds t·f to float32).
 */
export function precisionErrors(
  got: Record<string, ort.Tensor>,
  feeds: Record<string, ort.Tensor>,
  size: PrecisionGraphSize = PRECISION_SIZE,
): { normalization: number; trigonometry: number } {
  const x = feeds.x.data as Float32Array;
  const t = (feeds.timestep.data as Float32Array)[0];
  let normalization = 0;
  for (const [name, epsilon] of [
    ['resnet_norm', RESNET_EPSILON],
    ['transformer_norm', TRANSFORMER_EPSILON],
    ['layer_norm', 1e-5],
  ] as const) {
    const want = normalizeRows(x, size.spatial, Math.fround(epsilon));
    const y = got[name].data as Float32Array;
    let maxAbs = 0;
    let scale = 0;
    for (let i = 0; i < want.length; i++) {
      maxAbs = Math.max(maxAbs, Math.abs(y[i] - want[i]));
      scale = Math.max(scale, Math.abs(want[i]));
    }
    normalization = Math.max(normalization, maxAbs / scale);
  }
  let trigonometry = 0;
  size.frequencies.forEach((f, i) => {
    const arg = Math.fround(t * Math.fround(f));
    trigonometry = Math.max(
      trigonometry,
      Math.abs((got.sin.data as Float32Array)[i] - Math.sin(arg)),
      Math.abs((got.cos.data as Float32Array)[i] - Math.cos(arg)),
    );
  });
  return { normalization, trigonometry };
}
