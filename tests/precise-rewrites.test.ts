/**
 * passes/precise-normalization.ts and passes/precise-trigonometry.ts on the CPU provider: the
 * rewritten graph computes what the original computes (float64 references), for SD's shapes of
 * input: groups whose mean is 20 deviations from zero, and Sin/Cos of timestep × frequency up to
 * the 6400 the range reduction is exact for. tests/webgpu.test.ts runs the same graph on WebGPU.
 */
import * as path from 'path';
import * as ort from 'onnxruntime-node';
import { cloneModel } from '../compiler/clone';
import { Model } from '../compiler/ir';
import { saveModel } from '../compiler/serde';
import { makeNormalizationsPrecise } from '../passes/precise-normalization';
import { makeTrigonometryPrecise } from '../passes/precise-trigonometry';
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

test.each([1, 17, 250, 501, 999])('timestep %d: rewritten normalizations and Sin/Cos equal their float64 values', async (t) => {
  const feeds = precisionFeeds(PRECISION_SIZE, 20, 1, t);
  const before = precisionErrors(await run(precisionGraph(PRECISION_SIZE), feeds), feeds);
  const after = precisionErrors(await run(rewritten(), feeds), feeds);
  console.log(`t ${t}: before ${JSON.stringify(before)}, after ${JSON.stringify(after)}`);
  // The CPU's own kernels lose to the mean too (2.4e-6 before centering); libm's sin is exact.
  expect(after.normalization).toBeLessThan(3e-7);
  expect(after.normalization).toBeLessThan(before.normalization);
  expect(after.trigonometry).toBeLessThan(2e-7);
});
