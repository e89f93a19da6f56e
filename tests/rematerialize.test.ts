/**
 * passes/rematerialize.ts on the PyTorch fixture (a real diffusers UNet, 39.2% cut): the saved
 * activations it recomputes (GEGLU, softmax, SiLU, the residual sums) are no longer read by the
 * backward, the clones sit after the forward, and grads.onnx computes the same loss and gradients
 * bit for bit as without the pass, in sessions as the runtime opens them (CSE off, so the clones
 * stay clones).
 */
import * as path from 'path';
import { isWeightView } from '../compiler/flops';
import { loadModel } from '../compiler/serde';
import { createSession } from '../runtime/ort/session';
import { trainingSession } from '../runtime/train/step-graph';
import { compileFixtureGrads, fixtureGradientStep, identicalOutputs } from './support/fixture';

test('recomputed activations: the same loss and gradients bit for bit, the backward reads clones', async () => {
  const compiled = compileFixtureGrads('fp32', 'hollowc-remat-');
  const withPass = path.join(compiled.out, 'grads.onnx');
  const without = path.join(
    compileFixtureGrads('fp32', 'hollowc-remat-', { skipPasses: ['rematerialize', 'order-sinks'] }).out,
    'grads.onnx',
  );
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

  // A transformer block's residual sums h + to_out(attention) are read by the backward through
  // clones that recompute to_out's projection from the kept attention output. All but the first
  // block's first: no gradient flows above the first LoRA layer, so nothing keeps that block's h
  // (proj_in's output), and recomputing the sum would keep h instead, a tensor of the same size.
  const residualSums = g.nodes.filter((n) => n.opType === 'Add' && /transformer_blocks\.\d+\/Add(_1)?$/.test(n.name));
  expect(residualSums.length).toBeGreaterThan(2);
  const keptSums = residualSums.filter((n) => n.outputs[0].uses.some((u) => g.nodes.indexOf(u.node) > lossAt));
  expect(keptSums.map((n) => n.name)).toEqual(['/down_blocks.0/attentions.0/transformer_blocks.0/Add']);
  expect(clones.some((n) => n.opType === 'MatMul' && n.name.includes('/to_out.0/') && isWeightView(n.inputs[1]))).toBe(true);

  const feeds = fixtureGradientStep(compiled.m).feeds;
  const run = async (file: string) => {
    const s = await createSession(file, trainingSession({ session: { intraOpThreads: 1 } }));
    try {
      return await s.run(feeds);
    } finally {
      await s.release();
    }
  };
  const [a, b] = [await run(withPass), await run(without)];
  expect(identicalOutputs(a, b).length).toBe(Object.keys(a).length);
  expect((a.loss.data as Float32Array)[0]).toBeGreaterThan(0);
  // eslint-disable-next-line no-console
  console.log(
    `rematerialize on the fixture: ${clones.length} clones (${[...kinds].join(', ')}); ${Object.keys(a).length} outputs identical`,
  );
});
