/**
 * `gradients fp16` (passes/training/expose-gradients.ts, runtime/train/step-runner.ts): grads.onnx
 * hands each gradient over as float16 scaled by the tensor's own largest magnitude, with that scale
 * as a float32 output. Checked: the spec line; on the PyTorch fixture (39.2%) every widened
 * gradient within float16's rounding of grads.onnx's float32 one and within 1e-3 of PyTorch's; zero
 * gradients stay zero; on the tiny builder UNet with `train base` beside LoRA, training follows the
 * float32-gradient run and a killed, resumed run ends bit for bit where a straight one does.
 */
import * as fs from 'fs';
import * as path from 'path';
import { compileSpec } from '../cli/api/compile-spec';
import { checkSpecFile } from '../cli/api/spec';
import { loadUNet } from '../cli/api/unet';
import { widenHalvesInto } from '../compiler/float16';
import { FLOAT16_GRADIENT_PEAK, gradientName, gradientScaleName } from '../compiler/manifest';
import { SpecError, parseSpec } from '../dsl';
import { buildUNet } from '../models/builder';
import { FAMILIES } from '../models/families';
import { personalizeSpec } from '../runtime/personalize/spec';
import type { PipelineFolder } from '../runtime/text-to-image/pipeline-folder';
import { readSafetensors } from '../runtime/formats/safetensors';
import { loadTrainingData } from '../runtime/store/training-data';
import { precompute } from '../runtime/store/precompute';
import { TRAINED_BASE_FILE } from '../runtime/train/base-weights';
import { CHECKPOINT_FILE } from '../runtime/train/checkpoint';
import { train } from '../runtime/train/train';
import { writeData } from './runtime-fake-train';
import { compileFixtureGrads, fixtureGradientStep, relativeError, runModel, tempDir, tinyTrainBaseSpec } from './support/fixture';

const SPEC = `model sd15
hollow preset "39.2%"
emit grads
`;

test('gradients fp32 | fp16 parses, defaults to fp32, and needs grads.onnx', () => {
  expect(parseSpec(SPEC, 'a.hollow').gradients.value).toBe('fp32');
  expect(parseSpec(`${SPEC}gradients fp16\n`, 'a.hollow').gradients.value).toBe('fp16');
  const error = (text: string) => {
    try {
      parseSpec(text, 'a.hollow');
    } catch (e) {
      return e as SpecError;
    }
    throw new Error('no error');
  };
  const noGrads = error('model sd15\nhollow preset "39.2%"\nemit precompute train\ngradients fp16\n');
  expect(noGrads.message).toMatch(/"gradients fp16" sets how grads.onnx outputs the gradients, but this spec does not emit grads/);
  expect([noGrads.line, noGrads.col]).toEqual([4, 11]);
  const bad = error(`${SPEC}gradients int8\n`);
  expect(bad.message).toMatch(/expected "fp32" or "fp16" after "gradients", found "int8"/);
  expect([bad.line, bad.col]).toEqual([4, 11]);
});

test('personalize --gradients fp16 writes the spec line', () => {
  const folder = { family: 'sd15', tokenizers: [{ maxLength: 77 }], unet: { config: { cross_attention_dim: 768 } } } as unknown as PipelineFolder;
  const choices = { preset: '39.2%', lora: { rank: 4, alpha: 4 }, trainBase: [], optimizerState: 'fp32' as const, seed: 0, latent: [4, 64, 64] };
  const text = personalizeSpec(folder, { ...choices, gradients: 'fp16' });
  expect(text.split('\n')).toContain('gradients fp16');
  expect(parseSpec(text, 'run.hollow').gradients.value).toBe('fp16');
  expect(personalizeSpec(folder, { ...choices, gradients: 'fp32' })).not.toMatch(/gradients/);
});

describe('grads.onnx of the PyTorch fixture (39.2%) with float16 gradient outputs', () => {
  const compiled = (gradients: 'fp32' | 'fp16') => compileFixtureGrads('fp32', `hollowc-grad-${gradients}-`, { gradients });
  let b: ReturnType<typeof compiled>;
  beforeAll(() => {
    b = compiled('fp16');
  }, 300_000);

  test('every gradient within float16 rounding of the float32 output and 1e-3 of PyTorch; the manifest says float16', async () => {
    const a = compiled('fp32');
    expect(b.m.training.optimizer.gradients).toBe('fp16');
    const step = fixtureGradientStep(b.m);
    const outputs = new Map(b.m.artifacts.grads!.outputs.map((o) => [o.name, o]));
    const [want, got] = [
      await runModel(path.join(a.out, 'grads.onnx'), step.feeds),
      await runModel(path.join(b.out, 'grads.onnx'), step.feeds),
    ];
    expect(got.loss.data[0]).toBe(want.loss.data[0]);
    for (const p of step.params) {
      expect(outputs.get(gradientName(p.name))!.dtype).toBe('float16');
      expect(outputs.get(gradientScaleName(p.name))).toMatchObject({ dtype: 'float32', shape: [] });
      const g32 = want[gradientName(p.name)].data as Float32Array;
      const largest = g32.reduce((m, x) => Math.max(m, Math.abs(x)), 0);
      const scale = (got[gradientScaleName(p.name)].data as Float32Array)[0];
      expect(scale).toBeCloseTo(largest / FLOAT16_GRADIENT_PEAK, 12);
      const g16 = widenHalvesInto(got[gradientName(p.name)].data as Uint16Array, new Float32Array(g32.length), scale);
      // round to nearest with 11 significant bits: half an ulp, 2^-11 of the value, above float16's normals
      for (let i = 0; i < g32.length; i++) expect(Math.abs(g16[i] - g32[i])).toBeLessThanOrEqual(2 ** -11 * Math.abs(g32[i]) + 2 ** -40 * largest);
      expect(relativeError(g16, step.torchGradient(p))).toBeLessThan(1e-3);
    }
  }, 300_000);

  test('a zero gradient (lora_A while every B is zero) comes back as zeros, not NaN', async () => {
    const step = fixtureGradientStep(b.m);
    for (const p of step.params.filter((q) => q.role === 'B')) (step.feeds[p.name].data as Float32Array).fill(0);
    const got = await runModel(path.join(b.out, 'grads.onnx'), step.feeds);
    for (const p of step.params.filter((q) => q.role === 'A')) {
      const scale = (got[gradientScaleName(p.name)].data as Float32Array)[0];
      const g = widenHalvesInto(got[gradientName(p.name)].data as Uint16Array, new Float32Array(got[gradientName(p.name)].data.length), scale);
      expect(g.every((x) => x === 0)).toBe(true);
    }
  }, 300_000);
});

describe('training with float16 gradients: train base beside LoRA on the tiny SD 1.5', () => {
  const v = FAMILIES.sd15.tiny;
  let dir: string;
  const folders = new Map<string, string>();
  beforeAll(async () => {
    dir = tempDir('hollowc-grad16-train-');
    const unetFile = (await buildUNet(v.config, { outDir: path.join(dir, 'model'), seed: 3 })).file;
    const dataDir = writeData(path.join(dir, 'samples'), 'sd15', { instances: 3, classes: 0 });
    for (const [name, extra] of [
      ['fp32', []],
      ['fp16', ['gradients fp16']],
    ] as const) {
      const spec = path.join(dir, `${name}.hollow`);
      fs.writeFileSync(spec, tinyTrainBaseSpec(['optimizer adamw lr 1e-3', 'emit precompute grads', ...extra]));
      const out = path.join(dir, name);
      const unet = loadUNet(unetFile);
      compileSpec(unet, checkSpecFile(unet, spec), { out });
      await precompute({ out, data: loadTrainingData(dataDir), count: 4 });
      folders.set(name, out);
    }
  }, 300_000);

  /** A copy of a compiled folder to train in (artifacts and store hard-linked). */
  const copyOf = (name: string, tag: string): string => {
    const dst = path.join(dir, tag);
    fs.cpSync(folders.get(name)!, dst, { recursive: true });
    fs.rmSync(path.join(dst, 'train'), { recursive: true, force: true });
    return dst;
  };

  test('the losses follow the float32-gradient run to 1e-3 over 8 steps', async () => {
    const a = await train({ out: copyOf('fp32', 'curve-fp32'), steps: 8 });
    const b = await train({ out: copyOf('fp16', 'curve-fp16'), steps: 8 });
    const [x, y] = [a.losses.map((l) => l.loss), b.losses.map((l) => l.loss)];
    expect(y.length).toBe(8);
    expect(y[0]).toBe(x[0]);
    const worst = Math.max(...y.map((loss, i) => Math.abs(loss - x[i]) / x[i]));
    // float16's 2^-11 rounding of each gradient, through AdamW's normalized update: 6.6e-7 measured
    expect(worst).toBeLessThan(1e-5);
    // the weights moved (the losses change), and the float16 gradients moved them differently
    expect(new Set(y).size).toBeGreaterThan(1);
    expect(y.some((loss, i) => loss !== x[i])).toBe(true);
  }, 300_000);

  test('a run killed after a checkpoint and resumed ends bit for bit as a straight one', async () => {
    const straight = copyOf('fp16', 'straight');
    await train({ out: straight, steps: 6, checkpointEvery: 2 });
    const killed = copyOf('fp16', 'killed');
    await expect(
      train({
        out: killed,
        steps: 6,
        checkpointEvery: 2,
        onStep: (s) => {
          if (s.step === 3) throw new Error('simulated kill');
        },
      }),
    ).rejects.toThrow('simulated kill');
    await train({ out: killed, steps: 6, checkpointEvery: 2, resume: true });
    const bytes = (root: string, rel: string) => fs.readFileSync(path.join(root, rel));
    expect(bytes(killed, TRAINED_BASE_FILE).equals(bytes(straight, TRAINED_BASE_FILE))).toBe(true);
    expect(bytes(killed, path.join('train', CHECKPOINT_FILE)).equals(bytes(straight, path.join('train', CHECKPOINT_FILE)))).toBe(true);
    expect(readSafetensors(path.join(straight, TRAINED_BASE_FILE)).tensors.size).toBeGreaterThan(0);
  }, 300_000);
});
