/**
 * The rewrites that shrink the training step's working memory, on the PyTorch fixture (a real
 * diffusers UNet, 39.2% cut): passes/memory/split-attention.ts (threshold 0, so that every self- and
 * cross-attention is split; with a small block size, into blocks of query rows too) and
 * passes/memory/slices-to-split.ts, chunk-feed-forward, band-conv-gradients and release-dead-buffers. Each is checked against the same
 * compile without it: grads.onnx gives the same loss and gradients bit for bit (heads never mix,
 * and a Split copies the elements the Slices copy), in sessions as the runtime opens them.
 */
import * as path from 'path';
import * as ort from 'onnxruntime-node';
import { Graph } from '../compiler/ir';
import { CompileManifest } from '../compiler/manifest';
import { loadModel } from '../compiler/serde';
import { constantOfValue, inferShapes, staticShape } from '../compiler/shape-inference';
import { revealShapes } from '../passes/memory/release-dead-buffers';
import { createSession, withArtifactConfig } from '../runtime/ort/session';
import { trainingSession } from '../runtime/train/step-session';
import { readNpy } from '../runtime/formats/npy';
import { FIXTURE_DIR, compileFixtureGrads, fixtureGradientStep, identicalOutputs, relativeError } from './support/fixture';

/** grads.onnx as the compiler typed it: the shapes release-dead-buffers hid from onnxruntime, inferred. */
function shapedGrads(dir: string): Graph {
  const model = loadModel(path.join(dir, 'grads.onnx'));
  revealShapes(model.graph);
  inferShapes(model);
  return model.graph;
}

/** grads.onnx of a fixture compile: its graph (as written) and one step's outputs on the fixture's LoRA. */
async function gradsOf(c: {
  out: string;
  m: CompileManifest;
}): Promise<{ g: Graph; dir: string; m: CompileManifest; result: ort.InferenceSession.OnnxValueMapType }> {
  const file = path.join(c.out, 'grads.onnx');
  const s = await createSession(file, withArtifactConfig(trainingSession({ session: { intraOpThreads: 1 } }), c.m.artifacts.grads));
  try {
    return { g: loadModel(file).graph, dir: c.out, m: c.m, result: await s.run(fixtureGradientStep(c.m).feeds) };
  } finally {
    await s.release();
  }
}

test('attention per head: the same loss and gradients as over all heads at once', async () => {
  const split = await gradsOf(compileFixtureGrads('fp32', 'hollowc-memory-', { splitAttentionAboveBytes: 0 }));
  const whole = await gradsOf(compileFixtureGrads('fp32', 'hollowc-memory-', { skipPasses: ['split-attention'] }));
  const forwardSoftmax = (graph: Graph) => graph.nodes.filter((n) => n.opType === 'Softmax' && !n.name.endsWith('/recompute'));
  // One softmax per head of each map ([batch·heads, tokens, keys] at batch 1).
  const heads = forwardSoftmax(shapedGrads(whole.dir)).map((n) => n.outputs[0].type!.shape![0] as number);
  expect(heads.length).toBeGreaterThan(0);
  expect(heads.every((h) => h > 1)).toBe(true);
  expect(forwardSoftmax(split.g).length).toBe(heads.reduce((a, h) => a + h, 0));
  for (const n of forwardSoftmax(split.g)) expect(n.name).toContain('/heads/');

  const identical = identicalOutputs(split.result, whole.result);
  // eslint-disable-next-line no-console
  console.log(`split-attention on the fixture: ${identical.length} of ${Object.keys(split.result).length} outputs bit for bit`);
  expect(identical.length).toBe(Object.keys(split.result).length);
  expect((split.result.loss.data as Float32Array)[0]).toBeGreaterThan(0);
});

test('attention in blocks of query rows: no whole map in the forward or the backward, the same loss and gradients', async () => {
  // The fixture's level-0 self-attention: 256 tokens, one head's map 256 KiB, so 8 blocks of 32 rows.
  const chunkBytes = 32 * 1024;
  const blocked = await gradsOf(
    compileFixtureGrads('fp32', 'hollowc-memory-', { splitAttentionAboveBytes: 0, attentionChunkBytes: chunkBytes }),
  );
  const perHead = await gradsOf(compileFixtureGrads('fp32', 'hollowc-memory-', { splitAttentionAboveBytes: 0 }));
  const softmaxOf = (graph: Graph) => graph.nodes.filter((n) => n.opType === 'Softmax');
  const graph = shapedGrads(blocked.dir);
  const maps = softmaxOf(graph).map((n) => staticShape(n.outputs[0])!);
  expect(maps.length).toBeGreaterThan(softmaxOf(perHead.g).length);
  for (const shape of maps) expect(shape.reduce((a, b) => a * b, 1) * 4).toBeLessThanOrEqual(chunkBytes);
  // A whole head's self-attention map is [.., tokens, tokens]; no value of any node, forward,
  // recomputed or gradient, has that shape.
  const tokens = 256;
  expect(maps.some((s) => s[s.length - 1] === tokens)).toBe(true);
  const whole = graph.nodes
    .flatMap((n) => n.outputs)
    .filter((v) => {
      const s = staticShape(v);
      return !!s && s.length >= 2 && s[s.length - 1] === tokens && s[s.length - 2] === tokens;
    });
  expect(whole.map((v) => v.name)).toEqual([]);

  // The forward is the same computation row by row; the gradients of k and v sum over the blocks
  // (one sum per block instead of one product over all rows), so they differ in float32 rounding.
  const step = fixtureGradientStep(blocked.m);
  const lossOf = (r: typeof blocked.result) => (r.loss.data as Float32Array)[0];
  expect(lossOf(blocked.result)).toBe(lossOf(perHead.result));
  const want = readNpy(path.join(FIXTURE_DIR, 'ref/loss.npy')).data[0] as number;
  expect(Math.abs(lossOf(blocked.result) - want) / want).toBeLessThan(1e-5);
  let [vsTorch, vsPerHead] = [0, 0];
  for (const p of step.params) {
    const got = blocked.result[`${p.name}.grad`].data as Float32Array;
    vsTorch = Math.max(vsTorch, relativeError(got, step.torchGradient(p)));
    vsPerHead = Math.max(vsPerHead, relativeError(got, perHead.result[`${p.name}.grad`].data as Float32Array));
  }
  // eslint-disable-next-line no-console
  console.log(
    `attention in blocks on the fixture: ${maps.length} maps of at most ${chunkBytes} bytes; gradients vs torch ${vsTorch.toExponential(2)}, vs per head ${vsPerHead.toExponential(2)} (max relative error per tensor)`,
  );
  expect(vsTorch).toBeLessThan(1e-3);
  expect(vsPerHead).toBeLessThan(1e-5);
});

test('GEGLU halves by one Split: one Concat in the backward instead of padded halves, the same gradients', async () => {
  const split = await gradsOf(compileFixtureGrads('fp32', 'hollowc-memory-'));
  const sliced = await gradsOf(compileFixtureGrads('fp32', 'hollowc-memory-', { skipPasses: ['slices-to-split'] }));
  const gegluPads = (graph: Graph) => graph.nodes.filter((n) => n.opType === 'Pad' && n.name.includes('ff/net.0')).length;
  expect(gegluPads(sliced.g)).toBeGreaterThan(0);
  expect(gegluPads(split.g)).toBe(0);
  const gegluSplits = split.g.nodes.filter((n) => n.opType === 'Split' && n.name.includes('ff/net.0') && !n.name.endsWith('/recompute'));
  expect(gegluSplits.length).toBe(gegluPads(sliced.g) / 2);
  // The projection is recomputed once per GEGLU for both halves (rematerialize shares its clone).
  const projections = split.g.nodes.filter(
    (n) => n.opType === 'MatMul' && n.name.includes('ff/net.0/proj') && n.name.endsWith('/recompute'),
  );
  expect(projections.length).toBe(gegluSplits.length);
  expect(identicalOutputs(split.result, sliced.result).length).toBe(Object.keys(split.result).length);
});

test('feed-forwards in blocks of token rows: no full-width tensor left, each block recomputed once, the same loss and gradients', async () => {
  // The fixture's level-0 GEGLU projection: 256 tokens x 128 channels (128 KiB); blocks of 32 KiB are 64 rows.
  const chunkBytes = 32 * 1024;
  const blocked = await gradsOf(compileFixtureGrads('fp32', 'hollowc-memory-', { feedForwardChunkBytes: chunkBytes }));
  const whole = await gradsOf(compileFixtureGrads('fp32', 'hollowc-memory-', { skipPasses: ['chunk-feed-forward'] }));
  const projections = (graph: Graph, recomputed: boolean) =>
    graph.nodes.filter((n) => n.opType === 'MatMul' && n.name.includes('ff/net.0/proj') && n.name.endsWith('/recompute') === recomputed);
  const graph = shapedGrads(blocked.dir);
  const widths = projections(graph, false).map((n) => staticShape(n.outputs[0])!);
  expect(widths.length).toBeGreaterThan(projections(whole.g, false).length);
  for (const shape of widths) expect(shape.reduce((a, b) => a * b, 1) * 4).toBeLessThanOrEqual(chunkBytes);
  // Each block's projection is recomputed once in the backward (rematerialize), not kept.
  expect(projections(blocked.g, true).length).toBe(widths.length);
  // Every row is computed by the same kernels from the same numbers.
  const lossOf = (r: typeof blocked.result) => (r.loss.data as Float32Array)[0];
  expect(lossOf(blocked.result)).toBe(lossOf(whole.result));
  const step = fixtureGradientStep(blocked.m);
  let vsWhole = 0;
  for (const p of step.params)
    vsWhole = Math.max(
      vsWhole,
      relativeError(blocked.result[`${p.name}.grad`].data as Float32Array, whole.result[`${p.name}.grad`].data as Float32Array),
    );
  // eslint-disable-next-line no-console
  console.log(
    `feed-forward in blocks on the fixture: ${widths.length} projections of at most ${chunkBytes} bytes; gradients vs whole ${vsWhole.toExponential(2)}`,
  );
  expect(vsWhole).toBeLessThan(1e-6);
});

test('convolution input gradients in bands of rows: every column buffer under the limit, the same loss and gradients', async () => {
  // The fixture's widest input gradient: its last up block's first resnet (96 channels in, 3x3, 16x16);
  // 8 KiB of column buffer per band is 2 input rows with the halo.
  const colBytes = 8 * 1024;
  const banded = await gradsOf(compileFixtureGrads('fp32', 'hollowc-memory-', { convGradientColBytes: colBytes }));
  const whole = await gradsOf(compileFixtureGrads('fp32', 'hollowc-memory-', { skipPasses: ['band-conv-gradients'] }));
  const graph = shapedGrads(banded.dir);
  const transposed = (graph: Graph) => graph.nodes.filter((n) => n.opType === 'ConvTranspose');
  expect(transposed(graph).length).toBeGreaterThan(transposed(whole.g).length);
  // Strided ones (the downsamplers' gradients) are left whole.
  for (const n of transposed(graph).filter((t) => t.attrInts('strides', [1, 1]).every((d) => d === 1))) {
    const [x, w] = [staticShape(n.inputs[0]!)!, staticShape(n.inputs[1]!)!];
    expect(w[1] * w[2] * w[3] * x[2] * x[3] * 4).toBeLessThanOrEqual(Math.max(colBytes, w[1] * w[2] * w[3] * w[2] * x[3] * 4));
  }
  const lossOf = (r: typeof banded.result) => (r.loss.data as Float32Array)[0];
  expect(lossOf(banded.result)).toBe(lossOf(whole.result));
  const step = fixtureGradientStep(banded.m);
  let [vsWhole, vsTorch] = [0, 0];
  for (const p of step.params) {
    const got = banded.result[`${p.name}.grad`].data as Float32Array;
    vsWhole = Math.max(vsWhole, relativeError(got, whole.result[`${p.name}.grad`].data as Float32Array));
    vsTorch = Math.max(vsTorch, relativeError(got, step.torchGradient(p)));
  }
  // eslint-disable-next-line no-console
  console.log(
    `convolution gradients in bands on the fixture: ${transposed(graph).length} ConvTranspose; gradients vs whole ${vsWhole.toExponential(2)}, vs torch ${vsTorch.toExponential(2)}`,
  );
  expect(vsWhole).toBeLessThan(1e-5);
  expect(vsTorch).toBeLessThan(1e-3);
});

test('tensors freed as they die (release-dead-buffers): no static shape left for onnxruntime, the arena asked for, the same loss and gradients', async () => {
  const unplanned = await gradsOf(compileFixtureGrads('fp32', 'hollowc-memory-'));
  const planned = await gradsOf(compileFixtureGrads('fp32', 'hollowc-memory-', { skipPasses: ['release-dead-buffers'] }));
  expect(unplanned.m.artifacts.grads!.cpuArena).toBe(true);
  expect(planned.m.artifacts.grads!.cpuArena).toBeUndefined();
  const shapeReaders = (graph: Graph) =>
    graph.nodes.filter((n) => ['Reshape', 'Expand', 'ConstantOfShape'].includes(n.opType) && !n.name.startsWith('/opaque-shape/'));
  const constantShapes = (graph: Graph) =>
    shapeReaders(graph).filter((n) => constantOfValue(n.inputs[n.opType === 'ConstantOfShape' ? 0 : 1]!) !== undefined).length;
  expect(constantShapes(planned.g)).toBeGreaterThan(100);
  expect(shapeReaders(unplanned.g).length).toBe(shapeReaders(planned.g).length);
  expect(constantShapes(unplanned.g)).toBe(0);
  // Nor value infos onnxruntime would merge back; shape inference stops at the first opaque shape.
  expect([...planned.g.values.values()].some((v) => v.hasValueInfo)).toBe(true);
  expect([...unplanned.g.values.values()].some((v) => v.hasValueInfo)).toBe(false);
  const written = loadModel(path.join(unplanned.dir, 'grads.onnx'));
  expect(() => inferShapes(written)).toThrow('is not a compile-time constant');
  revealShapes(written.graph);
  expect(() => inferShapes(written)).not.toThrow();
  // The kernels see the same shapes and numbers.
  expect(identicalOutputs(unplanned.result, planned.result).length).toBe(Object.keys(planned.result).length);
});
