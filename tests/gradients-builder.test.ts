/**
 * The training pipeline of issue 5 on builder-made tiny UNets of every family (SD 1.5, SD 2.1
 * with linear projections, SDXL with text_time conditioning and multi-layer transformers):
 * the grads and train pipelines (specialize, loss, gradients of the attention LoRA tensors, AdamW). The gradient is checked
 * along a direction mixing it with a random one against a central difference of the graph's
 * own loss (batch 2, unequal loss weights), and the first AdamW step against its closed form.
 */
import * as path from 'path';
import * as ort from 'onnxruntime-node';
import { loadModel, saveModel } from '../compiler/serde';
import { buildUNet } from '../models/builder';
import { FAMILIES, FamilyName } from '../models/families';
import { presetsFor } from '../models/presets';
import { analyzeUNet } from '../passes/lib/analyze-unet';
import { ArtifactState } from '../passes/lib/artifact-state';
import { buildArtifact } from '../passes/artifact-passes';
import { findLoraSites } from '../passes/lib/lora-sites';
import { defaultTrainingSettings } from '../models/training-defaults';
import { normal, rng } from './support/gradient-check';
import { tempDir } from './support/fixture';

const ATTENTION = /\.attn[12]\.(to_q|to_k|to_v|to_out\.0)$/;
const BATCH = 2;
const ADAMW = { beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 1e-2 };

// sd15 at 39.2% is checked against torch on the exported fixture (gradients-fixture.test.ts).
const CASES: [string, FamilyName, string | null][] = [
  ['sd21-tiny, hollow none', 'sd21', null],
  ['sdxl-tiny, sdxl-mid cut', 'sdxl', 'sdxl-mid'],
];

describe.each(CASES)('training graph on %s', (_label, family, preset) => {
  it('differentiates, steps AdamW, and its gradient matches a central difference of its loss', async () => {
    const dir = tempDir(`hollowc-train-${family}-`);
    const modelFile = (await buildUNet(FAMILIES[family].tiny.config, { outDir: dir, seed: 11 })).file;
    const source = loadModel(modelFile);
    const analysis = analyzeUNet(source.graph, modelFile);
    const lastKept = preset ? presetsFor(family).find((p) => p.name === preset)!.lastKeptDown : null;
    const cut = lastKept ? analysis.cuts.find((c) => c.lastKeptDown === lastKept)! : null;
    const targets = findLoraSites(source.graph)
      .map((s) => s.module)
      .filter((m) => ATTENTION.test(m));
    const tiny = FAMILIES[family].tiny.shapes as unknown as Record<string, readonly number[] | undefined>;
    const shapes: Record<string, number[]> = { timestep: [BATCH] };
    for (const [name, s] of Object.entries(tiny)) if (s) shapes[name] = [BATCH, ...s.slice(1)];
    const training = {
      ...defaultTrainingSettings(family),
      batch: BATCH,
      shapes,
      optimizer: { betas: [ADAMW.beta1, ADAMW.beta2] as [number, number], eps: ADAMW.eps, weightDecay: ADAMW.weightDecay },
    };
    const inputs: ArtifactState = { analysis, cut, targets, lora: { rank: 2, alpha: 4 }, training, label: modelFile };
    // The gradients come from grads.onnx, the AdamW step from train.onnx: both through their pipelines.
    const grads = buildArtifact('grads', source, inputs);
    const trainStep = buildArtifact('train', source, inputs);
    const model = grads.model;
    const params = grads.state.loraParams!;
    const specialized = grads.passes.find((r) => r.pass === 'specialize-shapes')!;
    const differentiated = grads.passes.find((r) => r.pass === 'differentiate')!;
    expect(model.graph.nodes.every((n) => n.domain === '')).toBe(true);
    expect(trainStep.model.graph.nodes.every((n) => n.domain === '')).toBe(true);
    const file = path.join(dir, 'grads.onnx');
    saveModel(model, file);
    const trainFile = path.join(dir, 'train.onnx');
    saveModel(trainStep.model, trainFile);

    const gauss = normal(rng(99));
    const tensor = (dims: number[], std = 1) =>
      new ort.Tensor(
        'float32',
        Float32Array.from({ length: dims.reduce((a, b) => a * b, 1) }, () => std * gauss()),
        dims,
      );
    const feeds: Record<string, ort.Tensor> = {};
    for (const v of trainStep.model.graph.inputs) {
      const dims = v.type!.shape as number[];
      if (v.name === 'timestep') feeds[v.name] = new ort.Tensor('float32', Float32Array.of(211, 808), dims);
      else if (v.name === 'time_ids')
        feeds[v.name] = new ort.Tensor(
          'float32',
          Float32Array.from({ length: 12 }, (_, i) => [128, 128, 0, 0, 128, 128][i % 6]),
          dims,
        );
      else if (v.name === 'loss_weight') feeds[v.name] = new ort.Tensor('float32', Float32Array.of(1, 0.5), dims);
      else if (v.name === 'lr') feeds[v.name] = new ort.Tensor('float32', Float32Array.of(1e-3), dims);
      else if (v.name === 'step') feeds[v.name] = new ort.Tensor('float32', Float32Array.of(1), dims);
      else if (v.name.endsWith('.exp_avg') || v.name.endsWith('.exp_avg_sq'))
        feeds[v.name] = new ort.Tensor('float32', new Float32Array(dims.reduce((a, b) => a * b, 1)), dims);
      else feeds[v.name] = tensor(dims, v.name.includes('.lora_') ? 0.1 : 1);
    }
    // 'basic' optimizations: 'all' takes ~2x longer to set up on these 10k-node graphs.
    const session = await ort.InferenceSession.create(file, { executionProviders: ['cpu'], graphOptimizationLevel: 'basic' });
    const trainSession = await ort.InferenceSession.create(trainFile, { executionProviders: ['cpu'], graphOptimizationLevel: 'basic' });
    try {
      const out = await session.run(Object.fromEntries(session.inputNames.map((n) => [n, feeds[n]])));
      const stepped = await trainSession.run(Object.fromEntries(trainSession.inputNames.map((n) => [n, feeds[n]])));
      // Directional derivative along a random unit direction u over all LoRA tensors:
      // <∇L, u> vs (L(θ + h·u) − L(θ − h·u)) / 2h.
      const h = 1e-2;
      // u = normalize(ĝ + r̂) for a random r: a wrong gradient shows unless its error is orthogonal to both.
      const norm2 = (xs: Float32Array[]) => Math.sqrt(xs.reduce((a, u) => a + u.reduce((b, x) => b + x * x, 0), 0));
      const grads = params.map((p) => out[`${p.name}.grad`].data as Float32Array);
      const random = params.map((p) => Float32Array.from(feeds[p.name].data as Float32Array, () => gauss()));
      const [gn, rn] = [norm2(grads), norm2(random)];
      const directions = grads.map((g, k) => g.map((x, i) => x / gn + random[k][i] / rn));
      const norm = norm2(directions);
      let analytic = 0;
      const plus = { ...feeds };
      const minus = { ...feeds };
      params.forEach((p, k) => {
        const theta = feeds[p.name].data as Float32Array;
        const g = out[`${p.name}.grad`].data as Float32Array;
        const u = directions[k].map((x) => x / norm);
        for (let i = 0; i < u.length; i++) analytic += g[i] * u[i];
        plus[p.name] = new ort.Tensor(
          'float32',
          Float32Array.from(theta, (t, i) => t + h * u[i]),
          feeds[p.name].dims,
        );
        minus[p.name] = new ort.Tensor(
          'float32',
          Float32Array.from(theta, (t, i) => t - h * u[i]),
          feeds[p.name].dims,
        );
      });
      const lossAt = async (f: Record<string, ort.Tensor>) => (await session.run(f, ['loss'])).loss.data[0] as number;
      const numeric = ((await lossAt(plus)) - (await lossAt(minus))) / (2 * h);
      const relative = Math.abs(numeric - analytic) / Math.abs(analytic);

      // AdamW at step 1: m = (1−β1)·g, v = (1−β2)·g², bias corrections 1−β1 and 1−β2.
      let adamErr = 0;
      for (const p of params) {
        const theta = feeds[p.name].data as Float32Array;
        const g = out[`${p.name}.grad`].data as Float32Array;
        const updated = stepped[`${p.name}.updated`].data as Float32Array;
        for (let i = 0; i < g.length; i++) {
          const m = (1 - ADAMW.beta1) * g[i];
          const v = (1 - ADAMW.beta2) * g[i] * g[i];
          const want =
            theta[i] * (1 - 1e-3 * ADAMW.weightDecay) -
            ((1e-3 / (1 - ADAMW.beta1)) * m) / (Math.sqrt(v) / Math.sqrt(1 - ADAMW.beta2) + ADAMW.eps);
          adamErr = Math.max(adamErr, Math.abs(updated[i] - want));
        }
      }
      // eslint-disable-next-line no-console
      console.log(
        `${_label}: ${specialized.summary}; ${differentiated.summary}; ${params.length} LoRA tensors; ` +
          `loss ${out.loss.data[0]}; directional derivative ${analytic.toPrecision(6)} vs central difference ${numeric.toPrecision(6)} (rel err ${relative.toExponential(2)}); AdamW step-1 max abs err ${adamErr.toExponential(2)}`,
      );
      expect(relative).toBeLessThan(2e-3);
      expect(adamErr).toBeLessThan(1e-6);
    } finally {
      await session.release();
      await trainSession.release();
    }
  });
});
