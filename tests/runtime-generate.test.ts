/**
 * Two-path sampling and LoRA export on compiled tiny models: the guidance rows feed the paths
 * as the paper says (checked against infer.onnx run by hand and against the original UNet), the
 * baked model samples like infer.onnx + LoRA, sampling is deterministic per seed, and exported
 * LoRA files round-trip with the expected peft/kohya keys. SDXL runs the whole workflow.
 */
import * as fs from 'fs';
import * as path from 'path';
import * as ort from 'onnxruntime-node';
import { bakeCompiled } from '../cli/api/bake';
import { compileFromSpec } from '../cli/api/compile-spec';
import { isLoraParam } from '../compiler/manifest';
import { exportLora } from '../runtime/train/export-lora';
import { readLoraFile } from '../runtime/formats/lora-file';
import { NoiseSchedule } from '../runtime/sampling/noise-schedule';
import { precompute } from '../runtime/store/precompute';
import { Sampler, generate } from '../runtime/sampling/two-path';
import { readSafetensors } from '../runtime/formats/safetensors';
import { createSession } from '../runtime/ort/session';
import { Store } from '../runtime/store/store';
import { loadTrainingData, readConditioning } from '../runtime/store/training-data';
import { train } from '../runtime/train/train';
import { randomArray, TinyFolder, tinyCompiled, writeData } from './runtime-fake-train';
import { maxAbsDiff, tempDir } from './support/fixture';

const TARGETS = 'lora targets "attn1.to_q" "attn2.to_k"';
let f: TinyFolder;
let data: string;

beforeAll(async () => {
  const dir = tempDir('hollowc-gen-');
  f = await tinyCompiled(dir, 'sd15', { batch: 1, preset: '39.2%', extraSpec: `${TARGETS}\noptimizer adamw lr 0.05\nseed 2` });
  data = writeData(path.join(dir, 'samples'), 'sd15', { instances: 2, classes: 1 });
  await precompute({ out: f.out, data: loadTrainingData(data), count: 4 });
  await train({ out: f.out, steps: 6 });
});

const prompts = () => ({
  prompt: readConditioning(path.join(data, 'instance_prompt.npy')),
  classPrompt: readConditioning(path.join(data, 'class_prompt.npy')),
});

describe('generate', () => {
  test('finite latents of the training shape, the same per seed, other with another seed; every scheduler', async () => {
    const sampler = await Sampler.open({ out: f.out });
    try {
      expect(sampler.loraSource).toBe(path.join(f.out, 'lora.safetensors'));
      const base = { ...prompts(), steps: 5, guidance: 7.5, seed: 11 };
      const a = await sampler.sample({ ...base, scheduler: 'ddim' });
      expect(a.shape).toEqual([1, 4, 16, 16]);
      expect(a.timesteps).toEqual([801, 601, 401, 201, 1]);
      expect(a.latents.every(Number.isFinite)).toBe(true);
      const b = await sampler.sample({ ...base, scheduler: 'ddim' });
      expect(Buffer.from(b.latents.buffer).equals(Buffer.from(a.latents.buffer))).toBe(true);
      const c = await sampler.sample({ ...base, scheduler: 'ddim', seed: 12 });
      expect(maxAbsDiff(c.latents, a.latents)).toBeGreaterThan(0.1);
      for (const scheduler of ['euler_a', 'dpmpp_2m'] as const) {
        const r = await sampler.sample({ ...base, scheduler });
        const again = await sampler.sample({ ...base, scheduler });
        expect([
          scheduler,
          r.latents.every(Number.isFinite),
          Buffer.from(r.latents.buffer).equals(Buffer.from(again.latents.buffer)),
        ]).toEqual([scheduler, true, true]);
      }
      // a fresh session gives the same bytes
      const fresh = await generate({ out: f.out, ...base, scheduler: 'ddim' });
      expect(Buffer.from(fresh.latents.buffer).equals(Buffer.from(a.latents.buffer))).toBe(true);
    } finally {
      await sampler.release();
    }
  });

  test('one guided DDIM step = infer.onnx rows (negative|negative) and (prompt|class) combined by hand', async () => {
    const { prompt, classPrompt } = prompts();
    const negative = { encoderHiddenStates: { shape: [7, 32], data: randomArray(4, 'neg', 7 * 32) } };
    const noise = randomArray(4, 'noise', 1024);
    const g = 5;
    const r = await generate({
      out: f.out,
      prompt,
      classPrompt,
      negative,
      steps: 1,
      guidance: g,
      scheduler: 'ddim',
      seed: 0,
      initialNoise: noise,
    });
    expect(r.timesteps).toEqual([1]);

    const lora = readLoraFile(
      path.join(f.out, 'lora.safetensors'),
      f.manifest.lora.targets.filter((t) => t.trained).map((t) => t.module),
      4,
      4,
    );
    const feeds: Record<string, ort.Tensor> = {};
    for (const t of f.manifest.lora.targets.filter((x) => x.trained)) {
      feeds[t.lora_A.name] = new ort.Tensor('float32', lora.get(t.module)!.a.data, t.lora_A.shape);
      feeds[t.lora_B.name] = new ort.Tensor('float32', lora.get(t.module)!.b.data, t.lora_B.shape);
    }
    const session = await createSession(path.join(f.out, 'infer.onnx'));
    const row = async (two: Float32Array, one: Float32Array) =>
      (
        await session.run({
          ...feeds,
          sample: new ort.Tensor('float32', noise, [1, 4, 16, 16]),
          timestep: new ort.Tensor('float32', Float32Array.of(1), [1]),
          encoder_hidden_states: new ort.Tensor('float32', two, [1, 7, 32]),
          base_encoder_hidden_states: new ort.Tensor('float32', one, [1, 7, 32]),
        })
      ).out_sample.data as Float32Array;
    const uncond = await row(negative.encoderHiddenStates.data, negative.encoderHiddenStates.data);
    const cond = await row(prompt.encoderHiddenStates.data, classPrompt.encoderHiddenStates.data);
    await session.release();
    // DDIM from t = 1 to "t = -999" (abar_0 past the end): x_prev = sqrt(a0) x0 + sqrt(1 - a0) eps
    const ac = NoiseSchedule.forFamily('sd15').alphasCumprod;
    const want = noise.map((x, i) => {
      const eps = uncond[i] + g * (cond[i] - uncond[i]);
      const x0 = (x - Math.sqrt(1 - ac[1]) * eps) / Math.sqrt(ac[1]);
      return Math.sqrt(ac[0]) * x0 + Math.sqrt(1 - ac[0]) * eps;
    });
    expect(maxAbsDiff(r.latents, want)).toBeLessThan(1e-4);
    // the two rows differ: the prompts reach both paths
    expect(maxAbsDiff(uncond, cond)).toBeGreaterThan(1e-3);
  });

  test('with the untrained LoRA and prompt = class prompt, sampling equals the original UNet', async () => {
    const { classPrompt } = prompts();
    const noise = randomArray(4, 'noise2', 1024);
    const r = await generate({
      out: f.out,
      prompt: classPrompt,
      classPrompt,
      steps: 2,
      guidance: 1,
      scheduler: 'ddim',
      seed: 0,
      initialNoise: noise,
      lora: path.join(f.out, 'lora-init.safetensors'),
    });
    const session = await createSession(f.modelFile);
    const ac = NoiseSchedule.forFamily('sd15').alphasCumprod;
    let x = noise;
    for (const [t, prev] of [
      [501, 1],
      [1, -1],
    ]) {
      const out = (
        await session.run({
          sample: new ort.Tensor('float32', x, [1, 4, 16, 16]),
          timestep: new ort.Tensor('float32', Float32Array.of(t), [1]),
          encoder_hidden_states: new ort.Tensor('float32', classPrompt.encoderHiddenStates.data, [1, 7, 32]),
        })
      ).out_sample.data as Float32Array;
      const ap = prev >= 0 ? ac[prev] : ac[0];
      x = x.map((v, i) => {
        const x0 = (v - Math.sqrt(1 - ac[t]) * out[i]) / Math.sqrt(ac[t]);
        return Math.sqrt(ap) * x0 + Math.sqrt(1 - ap) * out[i];
      });
    }
    await session.release();
    expect(r.timesteps).toEqual([501, 1]);
    expect(maxAbsDiff(r.latents, x)).toBeLessThan(1e-4);
  });

  test('the baked model samples like infer.onnx with the LoRA', async () => {
    const baked = bakeCompiled(f.out, path.join(f.out, 'lora.safetensors'));
    const base = { out: f.out, ...prompts(), steps: 3, guidance: 3, scheduler: 'dpmpp_2m' as const, seed: 5 };
    const a = await generate(base);
    const b = await generate({ ...base, baked: baked.file });
    expect(b.loraSource).toBe(`baked into ${baked.file}`);
    expect(maxAbsDiff(a.latents, b.latents)).toBeLessThan(1e-3);
  });

  test('lora infer fp16: the sampler feeds the trained LoRA as float16, close to the fp32 folder', async () => {
    const dir = path.join(f.dir, 'fp16');
    fs.mkdirSync(dir, { recursive: true });
    const spec = path.join(dir, 'spec.hollow');
    fs.writeFileSync(spec, `${fs.readFileSync(path.join(f.dir, 'spec.hollow'), 'utf8')}lora infer fp16\n`);
    const out = path.join(dir, 'out');
    const m = compileFromSpec(f.modelFile, spec, { out });
    const lora = m.artifacts.infer!.inputs.filter((i) => isLoraParam(i.name));
    expect(lora.length).toBeGreaterThan(0);
    expect(lora.every((i) => i.dtype === 'float16')).toBe(true);
    const base = { ...prompts(), steps: 3, guidance: 3, scheduler: 'ddim' as const, seed: 5, lora: path.join(f.out, 'lora.safetensors') };
    const a = await generate({ out: f.out, ...base });
    const b = await generate({ out, ...base });
    expect(b.loraSource).toBe(base.lora);
    const d = maxAbsDiff(a.latents, b.latents);
    const scale = a.latents.reduce((m, x) => Math.max(m, Math.abs(x)), 0);
    // eslint-disable-next-line no-console
    console.log(
      `lora infer fp16, 3 DDIM steps of the tiny SD 1.5: max |fp16 - fp32| latents ${d.toExponential(2)} (max |latent| ${scale.toFixed(2)})`,
    );
    expect(d).toBeGreaterThan(0);
    expect(d).toBeLessThan(1e-4);
  });

  test('bad options are named', async () => {
    await expect(generate({ out: f.out, ...prompts(), steps: 3, guidance: 0.5, scheduler: 'ddim', seed: 0 })).rejects.toThrow(
      '--guidance must be a number >= 1, got 0.5',
    );
    await expect(generate({ out: f.out, ...prompts(), steps: 3, guidance: 2, scheduler: 'plms' as never, seed: 0 })).rejects.toThrow(
      'unknown scheduler "plms" (expected one of: ddim, euler_a, dpmpp_2m)',
    );
    await expect(generate({ out: f.out, ...prompts(), steps: 3, guidance: 2, scheduler: 'ddim', seed: 0, ep: 'cuda' })).rejects.toThrow(
      /cuda execution provider/,
    );
  });
});

describe('export-lora', () => {
  const q = 'down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q';

  test('peft: keys unet.<module>.lora_A/B.weight, values of the trained LoRA, round trip', () => {
    const file = path.join(f.dir, 'peft.safetensors');
    const r = exportLora({ out: f.out, format: 'peft', output: file });
    const trained = f.manifest.lora.targets.filter((t) => t.trained);
    expect(r.modules).toBe(trained.length);
    const { tensors, metadata } = readSafetensors(file);
    expect([...tensors.keys()]).toContain(`unet.${q}.lora_A.weight`);
    expect([...tensors.keys()]).toContain(`unet.${q}.lora_B.weight`);
    expect(tensors.size).toBe(2 * trained.length);
    expect(metadata).toMatchObject({ lora_rank: '4', lora_alpha: '4' });
    expect(tensors.get(`unet.${q}.lora_A.weight`)!.shape).toEqual([4, 16]);
    expect(tensors.get(`unet.${q}.lora_B.weight`)!.shape).toEqual([16, 4]);
    // same values as the trained file; B is no longer zero
    const trainedFile = readSafetensors(path.join(f.out, 'lora.safetensors')).tensors;
    for (const [k, t] of tensors) expect([k, Buffer.from(t.data).equals(Buffer.from(trainedFile.get(k)!.data))]).toEqual([k, true]);
    expect(new Float32Array(new Uint8Array(tensors.get(`unet.${q}.lora_B.weight`)!.data).buffer).some((x) => x !== 0)).toBe(true);
    // peft -> export -> read: identical
    const again = path.join(f.dir, 'peft2.safetensors');
    exportLora({ out: f.out, format: 'peft', output: again, from: file });
    expect(fs.readFileSync(again).equals(fs.readFileSync(file))).toBe(false); // metadata names the source
    const x = readLoraFile(file, [q], 4, 4).get(q)!;
    const y = readLoraFile(again, [q], 4, 4).get(q)!;
    expect([
      Buffer.from(x.a.data.buffer).equals(Buffer.from(y.a.data.buffer)),
      Buffer.from(x.b.data.buffer).equals(Buffer.from(y.b.data.buffer)),
    ]).toEqual([true, true]);
  });

  test('kohya: lora_unet_<path with _>.lora_down/.lora_up/.alpha, read back to the same values', () => {
    const file = path.join(f.dir, 'kohya.safetensors');
    exportLora({ out: f.out, format: 'kohya', output: file, from: 'checkpoint' });
    const { tensors, metadata } = readSafetensors(file);
    const base = 'lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q';
    expect(tensors.get(`${base}.lora_down.weight`)!.shape).toEqual([4, 16]);
    expect(tensors.get(`${base}.lora_up.weight`)!.shape).toEqual([16, 4]);
    expect(new Float32Array(new Uint8Array(tensors.get(`${base}.alpha`)!.data).buffer)).toEqual(Float32Array.of(4));
    expect(metadata).toMatchObject({ ss_network_dim: '4', ss_network_alpha: '4' });
    expect([...tensors.keys()].every((k) => /^lora_unet_[a-z0-9_]+\.(lora_down\.weight|lora_up\.weight|alpha)$/.test(k))).toBe(true);
    const fromKohya = readLoraFile(file, [q], 4, 4).get(q)!;
    const fromPeft = readLoraFile(path.join(f.out, 'lora.safetensors'), [q], 4, 4).get(q)!;
    expect(Buffer.from(fromKohya.b.data.buffer).equals(Buffer.from(fromPeft.b.data.buffer))).toBe(true);
    expect(Buffer.from(fromKohya.a.data.buffer).equals(Buffer.from(fromPeft.a.data.buffer))).toBe(true);
  });

  test('missing source is named', () => {
    expect(() =>
      exportLora({ out: f.out, format: 'peft', output: path.join(f.dir, 'x.safetensors'), from: path.join(f.dir, 'none.safetensors') }),
    ).toThrow(`${path.join(f.dir, 'none.safetensors')}: no such file`);
    expect(() => exportLora({ out: f.out, format: 'onnx' as never, output: 'x' })).toThrow(
      '--format must be one of diffusers, peft, kohya, got onnx',
    );
  });
});

test('SDXL tiny: precompute with text_embeds and time_ids, train, generate', async () => {
  const dir = tempDir('hollowc-sdxl-');
  const x = await tinyCompiled(dir, 'sdxl', { batch: 1, preset: 'sdxl-mid', extraSpec: `${TARGETS}\noptimizer adamw lr 0.05` });
  const samples = writeData(path.join(dir, 'samples'), 'sdxl', { instances: 2, classes: 0 });
  const pc = await precompute({ out: x.out, data: loadTrainingData(samples), count: 3 });
  expect(pc.records).toBe(3);
  const { store } = Store.open(pc.storeDir, { readOnly: true });
  expect(store.header.timeIds).toEqual([128, 128, 0, 0, 128, 128]);
  expect(store.conditioning(0).textEmbeds!.shape).toEqual([24]);
  expect(store.header.activationShape[0]).toBe(48);
  store.close();
  const t = await train({ out: x.out, steps: 4 });
  expect(t.losses.every((l) => Number.isFinite(l.loss))).toBe(true);
  const g = await generate({
    out: x.out,
    prompt: readConditioning(path.join(samples, 'instance_prompt.npy')),
    classPrompt: readConditioning(path.join(samples, 'class_prompt.npy')),
    steps: 3,
    guidance: 4,
    scheduler: 'euler_a',
    seed: 1,
  });
  expect(g.shape).toEqual([1, 4, 16, 16]);
  expect(g.latents.every(Number.isFinite)).toBe(true);
});
