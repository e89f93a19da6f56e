/**
 * passes/rematerialize.ts on the PyTorch fixture (a real diffusers UNet, 39.2% cut): the saved
 * activations it recomputes (GEGLU, softmax, SiLU) are no longer read by the backward, the clones
 * sit after the forward, and grads.onnx computes the same loss and gradients bit for bit as
 * without the pass, in sessions as the runtime opens them (CSE off, so the clones stay clones).
 */
import * as path from 'path';
import * as ort from 'onnxruntime-node';
import { loadModel } from '../compiler/serde';
import { compile } from '../passes/compile';
import { createSession } from '../runtime/session';
import { trainingSession } from '../runtime/train-graph';
import { FIXTURE_MODEL, fixtureInputs, fixtureManifest, fixtureTensor, tempDir, trainingFor } from './support/fixture';

function compileGrads(skipPasses: string[]): string {
  const fixture = fixtureManifest();
  const out = tempDir('hollowc-remat-');
  compile({
    modelFile: FIXTURE_MODEL,
    outDir: out,
    lastKeptDown: '3-2',
    targets: fixture.lora.targets,
    lora: { rank: 4, alpha: 4 },
    emit: ['grads'],
    training: trainingFor('sd15', { sample: [1, 4, 16, 16], timestep: [1], encoder_hidden_states: [1, 7, 32] }),
    skipPasses,
  });
  return path.join(out, 'grads.onnx');
}

test('recomputed activations: the same loss and gradients bit for bit, the backward reads clones', async () => {
  const withPass = compileGrads([]);
  const without = compileGrads(['rematerialize', 'order-sinks']);
  const g = loadModel(withPass).graph;
  const clones = g.nodes.filter((n) => n.name.endsWith('/recompute'));
  const kinds = new Set(clones.map((n) => n.opType));
  for (const op of ['Softmax', 'Erf', 'Sigmoid', 'Div']) expect(kinds.has(op)).toBe(true);
  // Every clone comes after the loss's computation (the forward ends there; order-sinks moves the
  // `loss` output node itself to the end).
  const lossNode = g.nodes.find((n) => n.outputs.some((o) => o.name === 'loss'))!;
  const lossAt = g.nodes.indexOf(lossNode.inputs[0]!.producer!);
  expect(clones.every((n) => g.nodes.indexOf(n) > lossAt)).toBe(true);
  const softmax = g.nodes.filter((n) => n.opType === 'Softmax' && !n.name.endsWith('/recompute'));
  expect(softmax.length).toBeGreaterThan(0);
  // A forward softmax output is read by the forward only (P·V), the backward reads its clone.
  for (const n of softmax) expect(n.outputs[0].uses.every((u) => g.nodes.indexOf(u.node) <= lossAt)).toBe(true);

  const fixture = fixtureManifest();
  const feeds: Record<string, ort.Tensor> = {
    ...fixtureInputs(1),
    target: fixtureTensor('ref/target.npy'),
    loss_weight: new ort.Tensor('float32', Float32Array.of(1), [1]),
    hollow_activation: fixtureTensor('ref/hollow_activation.npy'),
  };
  const inputs = new Set(g.inputs.map((v) => v.name));
  for (const t of fixture.lora.targets as string[]) {
    for (const role of ['A', 'B']) {
      const name = `${t}.lora_${role}.weight`;
      // gaussian B too, so every gradient is non-trivial
      if (inputs.has(name)) feeds[name] = fixtureTensor(`lora/${t}.lora_${role}.npy`);
    }
  }
  const run = async (file: string) => {
    const s = await createSession(file, trainingSession({ session: { intraOpThreads: 1 } }));
    try {
      return await s.run(feeds);
    } finally {
      await s.release();
    }
  };
  const [a, b] = [await run(withPass), await run(without)];
  expect(Object.keys(a).sort()).toEqual(Object.keys(b).sort());
  for (const name of Object.keys(a))
    expect(Buffer.from((a[name].data as Float32Array).buffer).equals(Buffer.from((b[name].data as Float32Array).buffer))).toBe(true);
  expect((a.loss.data as Float32Array)[0]).toBeGreaterThan(0);
  // eslint-disable-next-line no-console
  console.log(
    `rematerialize on the fixture: ${clones.length} clones (${[...kinds].join(', ')}); ${Object.keys(a).length} outputs identical`,
  );
});
