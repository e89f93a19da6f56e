/**
 * train.onnx as compile writes it: one session.run is one AdamW step on the LoRA tensors.
 * - on the fixture, several steps equal a plain-TS torch.optim.AdamW fed grads.onnx's gradients;
 * - a few hundred steps on one fixed batch drive the loss down (it learns);
 * - every paper preset (and hollow none) compiles to a train.onnx that runs on tiny sd15, sd21
 *   and sdxl.
 */
import * as path from 'path';
import * as ort from 'onnxruntime-node';
import { CompileManifest } from '../compiler/manifest';
import { compile } from '../passes/compile-unet';
import type { TrainingSettings } from '../compiler/manifest';
import { findLoraSites } from '../passes/lib/lora-sites';
import { loadModel } from '../compiler/serde';
import { buildUNet } from '../models/builder';
import { FAMILIES, FamilyName } from '../models/families';
import { presetsFor } from '../models/presets';
import { FIXTURE_MODEL, fixtureInputs, fixtureManifest, fixtureTensor, tempDir, trainingFor } from './support/fixture';
import { randomTensor, zeros } from './support/tensors';

const OPT = { betas: [0.9, 0.999] as const, eps: 1e-8, weightDecay: 0.01 };

function session(file: string) {
  return ort.InferenceSession.create(file, { executionProviders: ['cpu'], graphOptimizationLevel: 'basic' });
}

/** torch.optim.AdamW, one step, in float64. */
function adamwStep(p: Float64Array, g: Float32Array, m: Float64Array, v: Float64Array, step: number, lr: number): void {
  const [b1, b2] = OPT.betas;
  for (let i = 0; i < p.length; i++) {
    p[i] *= 1 - lr * OPT.weightDecay;
    m[i] = b1 * m[i] + (1 - b1) * g[i];
    v[i] = b2 * v[i] + (1 - b2) * g[i] * g[i];
    const mhat = m[i] / (1 - b1 ** step);
    const vhat = v[i] / (1 - b2 ** step);
    p[i] -= (lr * mhat) / (Math.sqrt(vhat) + OPT.eps);
  }
}

function trainFeeds(
  params: Map<string, ort.Tensor>,
  moments: Map<string, ort.Tensor>,
  step: number,
  lr: number,
): Record<string, ort.Tensor> {
  const feeds: Record<string, ort.Tensor> = {
    lr: new ort.Tensor('float32', Float32Array.of(lr), [1]),
    step: new ort.Tensor('float32', Float32Array.of(step), [1]),
  };
  for (const [name, t] of params) feeds[name] = t;
  for (const [name, t] of moments) feeds[name] = t;
  return feeds;
}

describe('fixture (39.2% cut): train.onnx steps = reference AdamW on grads.onnx gradients', () => {
  test('4 steps, lr 1e-2', async () => {
    const fixture = fixtureManifest();
    const out = tempDir();
    const training = trainingFor('sd15', { sample: [1, 4, 16, 16], timestep: [1], encoder_hidden_states: [1, 7, 32] }, 1, OPT);
    const m = compile({
      modelFile: FIXTURE_MODEL,
      outDir: out,
      lastKeptDown: '3-2',
      targets: fixture.lora.targets,
      lora: { rank: 4, alpha: 4 },
      emit: ['grads', 'train'],
      training,
    });
    const data = {
      ...fixtureInputs(1),
      hollow_activation: fixtureTensor('ref/hollow_activation.npy'),
      target: fixtureTensor('ref/target.npy'),
      loss_weight: new ort.Tensor('float32', Float32Array.of(1), [1]),
    };
    const names = m.lora.targets.filter((t) => t.trained).flatMap((t) => [t.lora_A, t.lora_B]);
    const params = new Map(names.map((p) => [p.name, fixtureTensor(`lora/${p.name.replace(/\.lora_([AB])\.weight$/, '.lora_$1')}.npy`)]));
    const moments = new Map<string, ort.Tensor>();
    for (const p of names) for (const k of ['exp_avg', 'exp_avg_sq']) moments.set(`${p.name}.${k}`, zeros(p.shape));
    const ref = new Map(
      names.map((p) => [
        p.name,
        {
          p: Float64Array.from(params.get(p.name)!.data as Float32Array),
          m: new Float64Array(p.shape.reduce((a, b) => a * b, 1)),
          v: new Float64Array(p.shape.reduce((a, b) => a * b, 1)),
        },
      ]),
    );
    const grads = await session(path.join(out, 'grads.onnx'));
    const train = await session(path.join(out, 'train.onnx'));
    const lr = 1e-2;
    let worst = 0;
    for (let step = 1; step <= 4; step++) {
      const g = await grads.run({ ...data, ...Object.fromEntries(params) });
      const r = await train.run({ ...data, ...trainFeeds(params, moments, step, lr) });
      expect((r.loss.data as Float32Array)[0]).toBeCloseTo((g.loss.data as Float32Array)[0], 6);
      for (const p of names) {
        const s = ref.get(p.name)!;
        adamwStep(s.p, g[`${p.name}.grad`].data as Float32Array, s.m, s.v, step, lr);
        const got = r[`${p.name}.updated`].data as Float32Array;
        // Measured against the step size: an AdamW step moves each element by about lr.
        for (let i = 0; i < got.length; i++) worst = Math.max(worst, Math.abs(got[i] - s.p[i]) / lr);
        params.set(p.name, r[`${p.name}.updated`]);
        moments.set(`${p.name}.exp_avg`, r[`${p.name}.exp_avg.updated`]);
        moments.set(`${p.name}.exp_avg_sq`, r[`${p.name}.exp_avg_sq.updated`]);
      }
    }
    await Promise.all([grads.release(), train.release()]);
    // eslint-disable-next-line no-console
    console.log(`AdamW: max |train.onnx - reference| = ${worst.toExponential(2)} x lr over 4 steps`);
    expect(worst).toBeLessThan(1e-3);
  });
});

function unetFeeds(family: FamilyName, batch: number, seed: number): Record<string, ort.Tensor> {
  const shapes = FAMILIES[family].tiny.shapes;
  const b = (s: readonly number[]) => [batch, ...s.slice(1)];
  const feeds: Record<string, ort.Tensor> = {
    sample: randomTensor(seed, 'sample', b(shapes.sample)),
    timestep: new ort.Tensor(
      'float32',
      Float32Array.from({ length: batch }, (_, i) => 300 + 250 * i),
      [batch],
    ),
    encoder_hidden_states: randomTensor(seed, 'ehs', b(shapes.encoder_hidden_states)),
  };
  if (shapes.text_embeds) feeds.text_embeds = randomTensor(seed, 'text', b(shapes.text_embeds));
  if (shapes.time_ids)
    feeds.time_ids = new ort.Tensor(
      'float32',
      Float32Array.from({ length: batch * 6 }, () => 64),
      [batch, 6],
    );
  return feeds;
}

function initialState(m: CompileManifest, seed: number) {
  const params = new Map<string, ort.Tensor>();
  const moments = new Map<string, ort.Tensor>();
  for (const t of m.lora.targets.filter((x) => x.trained)) {
    params.set(t.lora_A.name, randomTensor(seed, t.lora_A.name, t.lora_A.shape, 0.1));
    params.set(t.lora_B.name, zeros(t.lora_B.shape));
    for (const p of [t.lora_A, t.lora_B]) for (const k of ['exp_avg', 'exp_avg_sq']) moments.set(`${p.name}.${k}`, zeros(p.shape));
  }
  return { params, moments };
}

async function trainSteps(
  m: CompileManifest,
  file: string,
  data: Record<string, ort.Tensor>,
  steps: number,
  lr: number,
): Promise<number[]> {
  const s = await session(file);
  const { params, moments } = initialState(m, 3);
  const losses: number[] = [];
  for (let step = 1; step <= steps; step++) {
    const r = await s.run({ ...data, ...trainFeeds(params, moments, step, lr) });
    losses.push((r.loss.data as Float32Array)[0]);
    for (const name of params.keys()) {
      params.set(name, r[`${name}.updated`]);
      moments.set(`${name}.exp_avg`, r[`${name}.exp_avg.updated`]);
      moments.set(`${name}.exp_avg_sq`, r[`${name}.exp_avg_sq.updated`]);
    }
  }
  await s.release();
  return losses;
}

const ATTENTION = /\.attn[12]\.(to_q|to_k|to_v|to_out\.0)$/;

describe.each(['sd15', 'sd21', 'sdxl'] as FamilyName[])('%s tiny: train.onnx for every preset and hollow none', (family) => {
  const dir = tempDir(`hollowc-train-${family}-`);
  let modelFile: string;
  let targets: string[];
  const shapes = FAMILIES[family].tiny.shapes;
  const batch = 2;
  const options: TrainingSettings = trainingFor(
    family,
    { ...Object.fromEntries(Object.entries(shapes).map(([k, v]) => [k, [batch, ...(v as number[]).slice(1)]])), timestep: [batch] },
    batch,
    OPT,
  );

  beforeAll(async () => {
    modelFile = (await buildUNet(FAMILIES[family].tiny.config, { outDir: dir, seed: 11 })).file;
    targets = findLoraSites(loadModel(modelFile).graph)
      .map((s) => s.module)
      .filter((m) => ATTENTION.test(m));
  });

  const cuts: [string, string | null][] = [...presetsFor(family).map((p) => [p.name, p.lastKeptDown] as [string, string]), ['none', null]];
  test.each(cuts)('%s: one step runs, loss finite, every LoRA tensor moves', async (name, after) => {
    const out = path.join(dir, `out-${name.replace('%', '')}`);
    const m = compile({
      modelFile,
      outDir: out,
      lastKeptDown: after,
      targets,
      lora: { rank: 2, alpha: 2 },
      emit: ['precompute', 'train'].filter((a) => after !== null || a !== 'precompute') as ('precompute' | 'train')[],
      training: options,
    });
    const data = unetFeeds(family, batch, 21);
    if (after !== null) {
      const pre = await session(path.join(out, 'precompute.onnx'));
      data.hollow_activation = (await pre.run(unetFeeds(family, batch, 21))).hollow_activation;
      await pre.release();
    }
    data.target = randomTensor(22, 'target', data.sample.dims as number[]);
    data.loss_weight = new ort.Tensor('float32', Float32Array.of(1, 0.5), [2]);
    const s = await session(path.join(out, 'train.onnx'));
    const { params, moments } = initialState(m, 4);
    // B starts at 0, so the first step moves B only (dL/dA = 0): take two steps.
    let r = await s.run({ ...data, ...trainFeeds(params, moments, 1, 1e-3) });
    const first = new Map(params);
    for (const k of params.keys()) params.set(k, r[`${k}.updated`]);
    for (const k of moments.keys()) moments.set(k, r[`${k}.updated`]);
    r = await s.run({ ...data, ...trainFeeds(params, moments, 2, 1e-3) });
    await s.release();
    expect(Number.isFinite((r.loss.data as Float32Array)[0])).toBe(true);
    let unmoved = 0;
    for (const [k, t] of first) {
      const before = t.data as Float32Array;
      const after2 = r[`${k}.updated`].data as Float32Array;
      if (before.every((x, i) => x === after2[i])) unmoved++;
    }
    expect(unmoved).toBe(0);
  });

  if (family === 'sd15') {
    test('learning: on a target a LoRA can reach, 200 steps cut the 39.2% hollowed-net loss tenfold', async () => {
      const out = path.join(dir, 'learn');
      const m = compile({
        modelFile,
        outDir: out,
        lastKeptDown: '3-2',
        targets,
        lora: { rank: 4, alpha: 4 },
        emit: ['precompute', 'forward', 'train'],
        training: options,
      });
      const data = unetFeeds(family, batch, 31);
      const pre = await session(path.join(out, 'precompute.onnx'));
      data.hollow_activation = (await pre.run(unetFeeds(family, batch, 31))).hollow_activation;
      await pre.release();
      // The target is what the hollowed net predicts with another ("teacher") LoRA.
      const teacher: Record<string, ort.Tensor> = {};
      for (const t of m.lora.targets.filter((x) => x.trained))
        for (const p of [t.lora_A, t.lora_B]) teacher[p.name] = randomTensor(77, p.name, p.shape, 0.3);
      const forward = await session(path.join(out, 'forward.onnx'));
      data.target = (await forward.run({ ...data, ...teacher })).out_sample;
      await forward.release();
      data.loss_weight = new ort.Tensor('float32', Float32Array.of(1, 1), [2]);
      const losses = await trainSteps(m, path.join(out, 'train.onnx'), data, 200, 1e-2);
      const first = losses[0];
      const last = losses.slice(-10).reduce((a, b) => a + b, 0) / 10;
      // eslint-disable-next-line no-console
      console.log(`learning test: loss ${first.toExponential(3)} -> ${last.toExponential(3)} after 200 steps`);
      expect(last).toBeLessThan(0.1 * first);
    });
  }
});
