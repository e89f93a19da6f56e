/**
 * What grads.onnx keeps from forward to backward on torch 1.13's opset-14 export (the sd15-tiny
 * fixture's model-opset14.onnx), where LayerNorm is written out (ReduceMean, Sub, Pow, ReduceMean,
 * Add, Sqrt, Div, Mul, Add) and the GEGLU halves are two Slices: passes/memory/rematerialize.ts
 * recomputes each norm's x − mean(x) and the GEGLU halves (in blocks of token rows, as
 * chunk-feed-forward cuts them) in the backward, so the export keeps what its opset-17 twin
 * (LayerNormalization) keeps but for each norm's standard deviation (one value a token), with the
 * same loss and gradients bit for bit as without the pass.
 */
import * as path from 'path';
import { Graph, Value } from '../compiler/ir';
import { CompileManifest } from '../compiler/manifest';
import { loadModel } from '../compiler/serde';
import { inferShapes, staticBytes } from '../compiler/shape-inference';
import { compile } from '../passes/compile-unet';
import { revealShapes } from '../passes/memory/release-dead-buffers';
import { createSession, withArtifactConfig } from '../runtime/ort/session';
import {
  FIXTURE_MODEL,
  FIXTURE_MODEL_OPSET14,
  FIXTURE_SHAPES,
  fixtureGradientStep,
  fixtureManifest,
  identicalOutputs,
  tempDir,
  trainingFor,
} from './support/fixture';

/** The fixture's level-0 GEGLU projection (256 tokens x 128 channels, 128 KiB) in blocks of 64 rows. */
const FF_CHUNK_BYTES = 32 * 1024;

function compileGrads(modelFile: string, skipPasses: string[] = []): { out: string; m: CompileManifest } {
  const fixture = fixtureManifest();
  const out = tempDir('hollowc-real-saved-');
  const m = compile({
    modelFile,
    outDir: out,
    lastKeptDown: '3-2',
    targets: fixture.lora.targets,
    lora: { rank: fixture.lora.rank, alpha: fixture.lora.alpha },
    emit: ['grads'],
    training: { ...trainingFor('sd15', FIXTURE_SHAPES), recompute: 'cheap' },
    feedForwardChunkBytes: FF_CHUNK_BYTES,
    skipPasses,
  });
  return { out, m };
}

/** grads.onnx with its shapes (release-dead-buffers hid them), and the forward values its backward reads. */
function savedValues(out: string): { g: Graph; saved: Value[] } {
  const model = loadModel(path.join(out, 'grads.onnx'));
  revealShapes(model.graph);
  inferShapes(model);
  const g = model.graph;
  // The forward ends with the loss (order-sinks moves only the `loss` output node itself to the end).
  const lossNode = g.nodes.find((n) => n.outputs.some((o) => o.name === 'loss'))!;
  const lossAt = g.nodes.indexOf(lossNode.inputs[0]!.producer!);
  const at = new Map(g.nodes.map((n, i) => [n, i]));
  const saved = g.nodes
    .slice(0, lossAt + 1)
    .flatMap((n) => n.outputs)
    .filter((v) => v.uses.some((u) => at.get(u.node)! > lossAt));
  return { g, saved };
}

const bytes = (values: Value[]) => values.reduce((a, v) => a + staticBytes(v)!, 0);

test('opset 14: the GEGLU halves and the norms’ x − mean(x) are recomputed; it keeps what opset 17 keeps but the norms’ std', () => {
  const written = savedValues(compileGrads(FIXTURE_MODEL_OPSET14).out);
  const fused = savedValues(compileGrads(FIXTURE_MODEL).out);
  const halves = written.g.nodes.filter((n) => n.opType === 'Split' && n.name.includes('/ff/net.0/') && !n.name.endsWith('/recompute'));
  // Two Slices made one Split per block of rows, in every transformer block.
  expect(halves.length).toBeGreaterThan(15);
  const centered = written.g.nodes.filter((n) => n.opType === 'Sub' && /\/norm\d\/Sub$/.test(n.name));
  expect(centered.length).toBe(45);
  const kept = (v: Value) => written.saved.includes(v);
  expect(
    halves
      .flatMap((n) => n.outputs)
      .filter(kept)
      .map((v) => v.name),
  ).toEqual([]);
  expect(
    centered
      .flatMap((n) => n.outputs)
      .filter(kept)
      .map((v) => v.name),
  ).toEqual([]);
  // What the backward reads instead: clones.
  expect(written.g.nodes.some((n) => n.opType === 'Split' && n.name.includes('/ff/net.0/') && n.name.endsWith('/recompute'))).toBe(true);
  expect(written.g.nodes.filter((n) => n.opType === 'Sub' && /\/norm\d\/Sub\/recompute$/.test(n.name)).length).toBeGreaterThan(0);

  // The standard deviations ([batch, tokens, 1], a value a token) are what the written-out form keeps more.
  const std = written.saved.filter((v) => v.producer!.opType === 'Sqrt');
  const [w, f] = [bytes(written.saved), bytes(fused.saved)];
  // eslint-disable-next-line no-console
  console.log(`saved from forward to backward: opset 14 ${w} bytes (${bytes(std)} of them the norms' std), opset 17 ${f} bytes`);
  expect(w - bytes(std)).toBeLessThanOrEqual(f + 1024);
});

test('opset 14: the same loss and gradients bit for bit as without rematerialize', async () => {
  const remat = compileGrads(FIXTURE_MODEL_OPSET14);
  const without = compileGrads(FIXTURE_MODEL_OPSET14, ['rematerialize', 'order-sinks']);
  const run = async (c: { out: string; m: CompileManifest }) => {
    const s = await createSession(
      path.join(c.out, 'grads.onnx'),
      withArtifactConfig({ intraOpThreads: 1, optimization: 'basic', memPattern: false }, c.m.artifacts.grads),
    );
    try {
      return await s.run(fixtureGradientStep(c.m).feeds);
    } finally {
      await s.release();
    }
  };
  const [a, b] = [await run(remat), await run(without)];
  expect(identicalOutputs(a, b)).toEqual(Object.keys(a));
  expect((a.loss.data as Float32Array)[0]).toBeGreaterThan(0);
});
