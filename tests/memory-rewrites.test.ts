/**
 * The rewrites that shrink the training step's working memory, on the PyTorch fixture (a real
 * diffusers UNet, 39.2% cut): passes/split-attention.ts (threshold 0, so that every self- and
 * cross-attention is split) and passes/slices-to-split.ts. Each is checked against the same
 * compile without it: grads.onnx gives the same loss and gradients bit for bit (heads never mix,
 * and a Split copies the elements the Slices copy), in sessions as the runtime opens them.
 */
import * as path from 'path';
import * as ort from 'onnxruntime-node';
import { Graph } from '../compiler/ir';
import { loadModel } from '../compiler/serde';
import { compile } from '../passes/compile';
import { createSession } from '../runtime/session';
import { trainingSession } from '../runtime/train-graph';
import { FIXTURE_MODEL, fixtureInputs, fixtureManifest, fixtureTensor, tempDir, trainingFor } from './support/fixture';

function compileGrads(options: { skipPasses?: string[]; splitAttentionAboveBytes?: number }): string {
  const fixture = fixtureManifest();
  const out = tempDir('hollowc-memory-');
  compile({
    modelFile: FIXTURE_MODEL,
    outDir: out,
    lastKeptDown: '3-2',
    targets: fixture.lora.targets,
    lora: { rank: 4, alpha: 4 },
    emit: ['grads'],
    training: trainingFor('sd15', { sample: [1, 4, 16, 16], timestep: [1], encoder_hidden_states: [1, 7, 32] }),
    ...options,
  });
  return path.join(out, 'grads.onnx');
}

async function runGrads(file: string, g: Graph): Promise<ort.InferenceSession.OnnxValueMapType> {
  const fixture = fixtureManifest();
  const feeds: Record<string, ort.Tensor> = {
    ...fixtureInputs(1),
    target: fixtureTensor('ref/target.npy'),
    loss_weight: new ort.Tensor('float32', Float32Array.of(1), [1]),
    hollow_activation: fixtureTensor('ref/hollow_activation.npy'),
  };
  const inputs = new Set(g.inputs.map((v) => v.name));
  for (const t of fixture.lora.targets as string[])
    for (const role of ['A', 'B']) {
      const name = `${t}.lora_${role}.weight`;
      // gaussian B too, so every gradient is non-trivial
      if (inputs.has(name)) feeds[name] = fixtureTensor(`lora/${t}.lora_${role}.npy`);
    }
  const s = await createSession(file, trainingSession({ session: { intraOpThreads: 1 } }));
  try {
    return await s.run(feeds);
  } finally {
    await s.release();
  }
}

/** Outputs of `a` equal to those of `b` bit for bit. */
function identicalOutputs(a: ort.InferenceSession.OnnxValueMapType, b: ort.InferenceSession.OnnxValueMapType): string[] {
  expect(Object.keys(a).sort()).toEqual(Object.keys(b).sort());
  return Object.keys(a).filter((name) => {
    const [x, y] = [a[name].data as Float32Array, b[name].data as Float32Array];
    return Buffer.from(x.buffer, x.byteOffset, x.byteLength).equals(Buffer.from(y.buffer, y.byteOffset, y.byteLength));
  });
}

test('attention per head: the same loss and gradients as over all heads at once', async () => {
  const split = compileGrads({ splitAttentionAboveBytes: 0 });
  const whole = compileGrads({ skipPasses: ['split-attention'] });
  const g = loadModel(split).graph;
  const wholeGraph = loadModel(whole).graph;
  const forwardSoftmax = (graph: Graph) => graph.nodes.filter((n) => n.opType === 'Softmax' && !n.name.endsWith('/recompute'));
  // One softmax per head of each map ([batch·heads, tokens, keys] at batch 1).
  const heads = forwardSoftmax(wholeGraph).map((n) => n.outputs[0].type!.shape![0] as number);
  expect(heads.length).toBeGreaterThan(0);
  expect(heads.every((h) => h > 1)).toBe(true);
  expect(forwardSoftmax(g).length).toBe(heads.reduce((a, h) => a + h, 0));
  for (const n of forwardSoftmax(g)) expect(n.name).toContain('/heads/');

  const [a, b] = [await runGrads(split, g), await runGrads(whole, wholeGraph)];
  const identical = identicalOutputs(a, b);
  // eslint-disable-next-line no-console
  console.log(`split-attention on the fixture: ${identical.length} of ${Object.keys(a).length} outputs bit for bit`);
  expect(identical.length).toBe(Object.keys(a).length);
  expect((a.loss.data as Float32Array)[0]).toBeGreaterThan(0);
});

test('GEGLU halves by one Split: one Concat in the backward instead of padded halves, the same gradients', async () => {
  const split = compileGrads({});
  const sliced = compileGrads({ skipPasses: ['slices-to-split'] });
  const [g, slicedGraph] = [loadModel(split).graph, loadModel(sliced).graph];
  const gegluPads = (graph: Graph) => graph.nodes.filter((n) => n.opType === 'Pad' && n.name.includes('ff/net.0')).length;
  expect(gegluPads(slicedGraph)).toBeGreaterThan(0);
  expect(gegluPads(g)).toBe(0);
  const gegluSplits = g.nodes.filter((n) => n.opType === 'Split' && n.name.includes('ff/net.0') && !n.name.endsWith('/recompute'));
  expect(gegluSplits.length).toBe(gegluPads(slicedGraph) / 2);
  // The projection is recomputed once per GEGLU for both halves (rematerialize shares its clone).
  const projections = g.nodes.filter((n) => n.opType === 'MatMul' && n.name.includes('ff/net.0/proj') && n.name.endsWith('/recompute'));
  expect(projections.length).toBe(gegluSplits.length);

  const [a, b] = [await runGrads(split, g), await runGrads(sliced, slicedGraph)];
  expect(identicalOutputs(a, b).length).toBe(Object.keys(a).length);
});
