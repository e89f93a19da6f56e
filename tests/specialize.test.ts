/**
 * Static specialization of the sd15-tiny fixture: fixed shapes, folded shape arithmetic, far
 * fewer nodes, and the same numbers as the original export in onnxruntime.
 */
import * as path from 'path';
import * as ort from 'onnxruntime-node';
import { DataType } from '../compiler/dtype';
import { GraphBuilder } from '../compiler/builder';
import { Graph, Model } from '../compiler/ir';
import { loadModel, saveModel } from '../compiler/serde';
import { assertValidGraph } from '../compiler/verify';
import { specializeShapes } from '../passes/structure/specialize-shapes';
import { inferShapes } from '../compiler/shape-inference';
import { FIXTURE_MODEL, FIXTURE_MODEL_OPSET14, fixtureInputs, maxAbsDiff, runModel, tempDir } from './support/fixture';

const SHAPES = {
  1: { sample: [1, 4, 16, 16], timestep: [1], encoder_hidden_states: [1, 7, 32] },
  2: { sample: [2, 4, 16, 16], timestep: [2], encoder_hidden_states: [2, 7, 32] },
} as const;

function opHistogram(m: Model): Record<string, number> {
  const h: Record<string, number> = {};
  for (const n of m.graph.nodes) h[n.opType] = (h[n.opType] ?? 0) + 1;
  return h;
}

async function runOnce(file: string, feeds: Record<string, ort.Tensor>[], optimize: boolean): Promise<Float32Array[]> {
  const session = await ort.InferenceSession.create(file, {
    executionProviders: ['cpu'],
    graphOptimizationLevel: optimize ? 'all' : 'disabled',
  });
  try {
    const out: Float32Array[] = [];
    for (const f of feeds) out.push((await session.run(f)).out_sample.data as Float32Array);
    return out;
  } finally {
    await session.release();
  }
}

describe.each([
  ['opset 17', FIXTURE_MODEL],
  ['opset 14', FIXTURE_MODEL_OPSET14],
])('specializeShapes on sd15-tiny (%s)', (_label, file) => {
  const dir = tempDir();
  let plainReference: Float32Array[] = [];
  let optimizedReference: Float32Array[] = [];

  beforeAll(async () => {
    // One session of the original (dynamic-shape) export serves both batch sizes.
    plainReference = await runOnce(file, [fixtureInputs(1), fixtureInputs(2)], false);
    optimizedReference = await runOnce(file, [fixtureInputs(1), fixtureInputs(2)], true);
  });

  it.each([1, 2] as const)('batch %d: same outputs, far fewer nodes, static shapes everywhere', async (batch) => {
    const model = loadModel(file);
    const result = specializeShapes(model, { ...SHAPES[batch] } as unknown as Record<string, number[]>);
    assertValidGraph(model.graph, 'specializeShapes');
    const hist = opHistogram(model);
    // eslint-disable-next-line no-console
    console.log(
      `${path.basename(file)} batch ${batch}: ${result.nodesBefore} -> ${result.nodesAfter} nodes (${result.folded} values folded, ${result.simplified} no-ops dropped); left: ${JSON.stringify(hist)}`,
    );
    expect(result.nodesAfter).toBeLessThan(result.nodesBefore * 0.3);
    for (const op of ['Shape', 'Gather', 'ConstantOfShape', 'Equal', 'Where', 'Expand', 'Cast']) expect(hist[op]).toBeUndefined();
    for (const v of model.graph.values.values()) {
      expect(v.type?.shape?.every((d) => typeof d === 'number')).toBe(true);
    }
    expect(model.graph.outputs[0].type?.shape).toEqual([...SHAPES[batch].sample]);
    const out = path.join(dir, `specialized-${batch}.onnx`);
    saveModel(model, out);
    const feeds = fixtureInputs(batch);
    // Without onnxruntime's graph optimizations both graphs run the same kernels on the same
    // numbers; with them (the default), different fusions may round differently.
    const [plain] = await runOnce(out, [feeds], false);
    const [optimized] = await runOnce(out, [feeds], true);
    const diffPlain = maxAbsDiff(plain, plainReference[batch - 1]);
    const diffOptimized = maxAbsDiff(optimized, optimizedReference[batch - 1]);
    // eslint-disable-next-line no-console
    console.log(
      `  max abs diff vs original export: ${diffPlain.toExponential(3)} (both without ORT graph optimizations), ${diffOptimized.toExponential(3)} (both with)`,
    );
    expect(diffPlain).toBe(0);
    expect(diffOptimized).toBeLessThanOrEqual(1e-6);
  });
});

describe('specializeShapes errors', () => {
  function tinyModel(build: (b: GraphBuilder, g: Graph) => void, opset = 17): Model {
    const g = new Graph();
    const m = new Model(g);
    m.opsetImports = [{ domain: '', version: opset }];
    build(new GraphBuilder(g), g);
    return m;
  }

  it('names the op and node it cannot infer', () => {
    const m = tinyModel((b, g) => {
      const x = g.addInput('x', { elemType: DataType.FLOAT, shape: ['n', 3] });
      g.outputs.push(b.within('block').op('Frobnicate', [x]));
    });
    expect(() => specializeShapes(m, { x: [2, 3] })).toThrow(
      'shape inference: Frobnicate node "/block/Frobnicate": no shape rule for op Frobnicate',
    );
  });

  it('refuses a symbolic input without a shape, a wrong rank and an unknown input name', () => {
    const make = () =>
      tinyModel((b, g) => {
        const x = g.addInput('x', { elemType: DataType.FLOAT, shape: ['n', 3] });
        g.outputs.push(b.op('Relu', [x]));
      });
    expect(() => specializeShapes(make(), {})).toThrow('specialize: input x has dims [n, 3]; give its shape');
    expect(() => specializeShapes(make(), { x: [2, 3, 4] })).toThrow('input x has rank 2, shape [2,3,4] has rank 3');
    expect(() => specializeShapes(make(), { x: [2, 4] })).toThrow('input x has fixed dim 1 = 3');
    expect(() => specializeShapes(make(), { x: [2, 3], y: [1] })).toThrow('the graph has no input named "y"');
  });

  it('folds a Reshape target computed from Shape/Gather/Concat and reports a bad reshape with the node', () => {
    const m = tinyModel((b, g) => {
      const x = g.addInput('x', { elemType: DataType.FLOAT, shape: ['n', 6] });
      const s = b.op('Shape', [x]);
      const n = b.op('Unsqueeze', [b.op('Gather', [s, b.scalar(0, DataType.INT64)], { axis: 0 }), b.int64s([0])]);
      const target = b.op('Concat', [n, b.int64s([2, -1])], { axis: 0 });
      g.outputs.push(b.within('r').op('Reshape', [x, target]));
    });
    const r = specializeShapes(m, { x: [4, 6] });
    expect(m.graph.nodes.map((n) => n.opType)).toEqual(['Constant', 'Reshape']);
    expect(m.graph.outputs[0].type?.shape).toEqual([4, 2, 3]);
    expect(r.nodesBefore).toBe(8);

    const bad = tinyModel((b, g) => {
      const x = g.addInput('x', { elemType: DataType.FLOAT, shape: [4, 6] });
      g.outputs.push(b.within('r').op('Reshape', [x, b.int64s([5, -1])]));
    });
    expect(() => inferShapes(bad)).toThrow('Reshape node "/r/Reshape": /r/Reshape: cannot reshape [4,6] to [5,-1]');
  });

  it('runs the folded result in onnxruntime (Range, ConstantOfShape, Where, Expand, Slice)', async () => {
    const m = tinyModel((b, g) => {
      const x = g.addInput('x', { elemType: DataType.FLOAT, shape: ['n', 'k'] });
      const s = b.op('Shape', [x]);
      const k = b.op('Gather', [s, b.scalar(1, DataType.INT64)], { axis: 0 });
      const r = b.op('Cast', [b.op('Range', [b.scalar(0, DataType.INT64), k, b.scalar(1, DataType.INT64)])], { to: DataType.FLOAT });
      const ones = b.op('ConstantOfShape', [b.op('Shape', [x])], {
        value: {
          name: '',
          dataType: DataType.FLOAT,
          dims: [1],
          data: { kind: 'inline', bytes: new Uint8Array(Float32Array.of(1).buffer) },
        },
      });
      const mask = b.op('Equal', [b.op('Shape', [x]), b.int64s([2, 5])]);
      const target = b.op('Where', [mask, b.int64s([1, 1]), b.op('Shape', [x])]);
      const e = b.op('Expand', [r, target]);
      const sl = b.op('Slice', [e, b.int64s([1]), b.int64s([1000]), b.int64s([1]), b.int64s([2])]);
      g.outputs.push(b.op('Add', [b.op('Mul', [x, ones]), b.op('ReduceSum', [sl, b.int64s([1])], { keepdims: 1 })]));
    });
    specializeShapes(m, { x: [3, 5] });
    expect(m.graph.nodes.map((n) => n.opType).filter((o) => o !== 'Constant')).toEqual(['Add']);
    const dir = tempDir();
    saveModel(m, path.join(dir, 'm.onnx'));
    const x = Float32Array.from({ length: 15 }, (_, i) => i / 4);
    const out = await runModel(path.join(dir, 'm.onnx'), { x: new ort.Tensor('float32', x, [3, 5]) });
    // Range(0..5)=[0..4], Slice 1::2 -> [1, 3], sum 4.
    expect(Array.from(out[m.graph.outputs[0].name].data as Float32Array)).toEqual(Array.from(x, (v) => v + 4));
  });
});
