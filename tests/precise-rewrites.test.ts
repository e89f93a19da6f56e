/**
 * passes/precision/precise-normalization.ts and passes/precision/precise-trigonometry.ts on the CPU provider: the
 * rewritten graph computes what the original computes (float64 references), for SD's shapes of
 * input: groups whose mean is 20 deviations from zero, and Sin/Cos of timestep × frequency up to
 * the 6400 the range reduction is exact for. tests/webgpu.test.ts runs the same graph on WebGPU.
 */
import * as path from 'path';
import * as ort from 'onnxruntime-node';
import { cloneModel } from '../compiler/clone';
import { GraphBuilder } from '../compiler/builder';
import { DataType, DataTypeCode } from '../compiler/dtype';
import { Graph, Model, Value } from '../compiler/ir';
import { saveModel } from '../compiler/serde';
import { makeNormalizationsPrecise } from '../passes/precision/precise-normalization';
import { makeTrigonometryPrecise } from '../passes/precision/precise-trigonometry';
import { tempDir } from './support/fixture';
import { precisionErrors, precisionFeeds, precisionGraph, PRECISION_SIZE } from './support/precision-graphs';

async function run(model: Model, feeds: Record<string, ort.Tensor>) {
  const file = path.join(tempDir('hollowc-precise-'), 'm.onnx');
  saveModel(model, file);
  const session = await ort.InferenceSession.create(file, { executionProviders: ['cpu'] });
  try {
    return await session.run(feeds);
  } finally {
    await session.release();
  }
}

function rewritten(): Model {
  const model = cloneModel(precisionGraph(PRECISION_SIZE));
  expect(makeNormalizationsPrecise(model)).toEqual({ centered: 3, epsilonMoved: 1, left: 0 });
  expect(makeTrigonometryPrecise(model)).toEqual({ replaced: 2 });
  expect(model.graph.nodes.filter((n) => ['Sin', 'Cos'].includes(n.opType))).toEqual([]);
  // One epsilon for every InstanceNormalization (the WebGPU shader cache keys on shape alone).
  const epsilons = model.graph.nodes.filter((n) => n.opType === 'InstanceNormalization').map((n) => n.attrFloat('epsilon'));
  expect(epsilons).toEqual([1e-5, 1e-5]);
  return model;
}

test.each([1, 17, 250, 501, 999, -731])('timestep %d: rewritten normalizations and Sin/Cos equal their float64 values', async (t) => {
  const feeds = precisionFeeds(PRECISION_SIZE, 20, 1, t);
  const before = precisionErrors(await run(precisionGraph(PRECISION_SIZE), feeds), feeds);
  const after = precisionErrors(await run(rewritten(), feeds), feeds);
  console.log(`t ${t}: before ${JSON.stringify(before)}, after ${JSON.stringify(after)}`);
  // The CPU's own kernels lose to the mean too (2.4e-6 before centering); libm's sin is exact.
  expect(after.normalization).toBeLessThan(3e-7);
  expect(after.normalization).toBeLessThan(before.normalization);
  expect(after.trigonometry).toBeLessThan(2e-7);
});

test('left as they were: float16 and statistics-reading normalizations; an epsilon of 0 is not moved; Sin as a graph output keeps its name', async () => {
  const g = new Graph();
  const b = new GraphBuilder(g);
  const F = DataType.FLOAT;
  const x = g.addInput('x', { elemType: F, shape: [1, 2, 4] });
  const half = g.addInput('half', { elemType: DataType.FLOAT16, shape: [1, 2, 4] });
  const c = (n: number, v: number) => b.constant(new Float32Array(n).fill(v), [n]);
  const typed = (v: Value, elemType: DataTypeCode = F) => ((v.type = { elemType, shape: [1, 2, 4] }), v);
  const outs = [
    typed(
      b.op('InstanceNormalization', [
        half,
        b.constant(new Uint8Array(new Uint16Array(2).fill(0x3c00).buffer), [2], DataType.FLOAT16),
        b.constant(new Uint8Array(4), [2], DataType.FLOAT16),
      ]),
      DataType.FLOAT16,
    ),
    typed(b.op('InstanceNormalization', [x, c(2, 1), c(2, 0)], { epsilon: { f: 0 } })),
    typed(b.op('InstanceNormalization', [x, c(2, 1), c(2, 0)], { epsilon: { f: 1e-5 } })),
  ];
  const [ln, mean] = b.node('LayerNormalization', [x, c(4, 1), c(4, 0)], { axis: 2 }, { outputs: 2 });
  typed(ln);
  mean.type = { elemType: F, shape: [1, 2, 1] };
  const sin = g.addNode({ opType: 'Sin', inputs: [x], outputs: ['sin_out'], name: '/Sin' }).outputs[0];
  typed(sin);
  g.outputs = [...outs, ln, mean, sin];
  const model = new Model(g);
  model.irVersion = 8;
  model.opsetImports = [{ domain: '', version: 17 }];
  // float16 and the statistics-reading LayerNormalization are not centered; the epsilon-0 node is
  // centered but keeps epsilon 0.
  expect(makeNormalizationsPrecise(model)).toEqual({ centered: 2, epsilonMoved: 0, left: 2 });
  expect(model.graph.nodes.filter((n) => n.opType === 'InstanceNormalization').map((n) => n.attrFloat('epsilon', 1e-5))).toEqual([
    1e-5, 0, 1e-5,
  ]);
  expect(makeTrigonometryPrecise(model)).toEqual({ replaced: 1 });
  expect(model.graph.outputs[model.graph.outputs.length - 1].name).toBe('sin_out');
  const data = Float32Array.from({ length: 8 }, (_, i) => -40 + 13.7 * i);
  const got = await run(model, {
    x: new ort.Tensor('float32', data, [1, 2, 4]),
    half: new ort.Tensor('float16', new Uint16Array(8).fill(0x3c00), [1, 2, 4]),
  });
  (got.sin_out.data as Float32Array).forEach((y, i) => expect(Math.abs(y - Math.sin(data[i]))).toBeLessThan(2e-7));
});
