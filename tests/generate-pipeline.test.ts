/**
 * `generate --model` (text to PNG on a pipeline folder), `embed`, the VAE encoder helper and
 * LoRA folding, on tiny builder pipelines (sd15, sd21 with its v-prediction config, sdxl).
 *
 * The correctness standard: with DDIM and given latents the result equals an independent
 * float64 reference written here from diffusers' StableDiffusion(XL)Pipeline and
 * DDIMScheduler.step (timesteps, alphas_cumprod from the config, CFG, v-prediction, VAE
 * scaling), running the same ONNX components directly through onnxruntime.
 */
import { runCli } from './support/cli';
import * as fs from 'fs';
import * as path from 'path';
import * as ort from 'onnxruntime-node';
import sharp from 'sharp';
import { saveModel, loadModel } from '../compiler/serde';
import { DataType } from '../compiler/dtype';
import { tensorFromTyped } from '../compiler/builder';
import { buildPipeline } from '../models/builder/pipeline';
import { Rng, fillNormal } from '../models/random';
import { findLoraSites } from '../passes/lib/lora-sites';
import { foldLoraWeights } from '../passes/fold/fold-lora';
import { fromHalfBits, toHalfBits } from '../runtime/formats/float16';
import { writeLoraFile, LoraModuleValues } from '../runtime/formats/lora-file';
import { readNpy, writeNpy } from '../runtime/formats/npy';
import { openPipelineFolder, PipelineFolder } from '../runtime/text-to-image/pipeline-folder';
import { configureScheduler, defaultSchedulerFor } from '../runtime/sampling/scheduler-config';
import { encodePrompts, textToImage } from '../runtime/text-to-image/text-to-image';
import { loadTokenizer } from '../runtime/text-to-image/tokenizer';
import { readConditioning } from '../runtime/store/training-data';
import { encodeImages, LATENT_SAMPLE } from '../runtime/text-to-image/vae';
import { SessionPool } from '../runtime/ort/session-pool';
import { compileFromSpec } from '../cli/api/compile-spec';
import { maxAbsDiff, runModel, tempDir } from './support/fixture';

type Family = 'sd15' | 'sd21' | 'sdxl';
let root: string;
const dirs = {} as Record<Family, string>;
const folders = {} as Record<Family, PipelineFolder>;

beforeAll(async () => {
  root = tempDir('hollowc-genpipe-');
  for (const f of ['sd15', 'sd21', 'sdxl'] as const) {
    dirs[f] = path.join(root, f);
    await buildPipeline(f, 'tiny', dirs[f], { seed: 5 });
    folders[f] = openPipelineFolder(dirs[f]);
  }
});
afterAll(() => fs.rmSync(root, { recursive: true, force: true }));

async function cli(...args: string[]): Promise<{ out: string; err: string; code: number }> {
  const r = await runCli(args);
  return { out: r.stdout, err: r.stderr, code: r.code };
}

const noise = (seed: number, n: number) => {
  const a = new Float32Array(n);
  fillNormal(new Rng(seed, 'test/noise'), a, 1);
  return a;
};

// ---------------------------------------------------------------------------------------------
// The independent reference (float64 wherever diffusers' math is ours to do)

async function refEncode(
  folder: PipelineFolder,
  text: string,
): Promise<{ ehs: Float64Array; T: number; D: number; pooled?: Float64Array }> {
  const xl = folder.textEncoders.length === 2;
  const parts: { data: Float32Array; d: number }[] = [];
  let pooled: Float64Array | undefined;
  for (let e = 0; e < folder.textEncoders.length; e++) {
    const ids = loadTokenizer(folder.tokenizers[e].dir).encode(text).inputIds;
    const r = await runModel(folder.textEncoders[e].model, {
      input_ids: new ort.Tensor('int64', BigInt64Array.from(ids.map(BigInt)), [1, 77]),
    });
    // SD: last_hidden_state; SDXL: hidden_states[-2] (hidden_states.0 = embeddings, .L = last layer)
    const layers = Number(folder.textEncoders[e].config.num_hidden_layers);
    const h = xl ? r[`hidden_states.${layers - 1}`] : r.last_hidden_state;
    parts.push({ data: h.data as Float32Array, d: h.dims[2] });
    if (xl && e === 1) pooled = Float64Array.from(r.text_embeds.data as Float32Array);
  }
  const D = parts.reduce((a, p) => a + p.d, 0);
  const ehs = new Float64Array(77 * D);
  for (let t = 0; t < 77; t++) {
    let at = 0;
    for (const p of parts) for (let k = 0; k < p.d; k++) ehs[t * D + at++] = p.data[t * p.d + k];
  }
  return { ehs, T: 77, D, pooled };
}

/** diffusers DDIM (eta 0) + the SD(XL) pipeline's CFG loop + VAE decode, in float64 around the ONNX calls. */
async function reference(
  folder: PipelineFolder,
  o: { prompt: string; steps: number; guidance: number; width: number; height: number; init: Float32Array; prediction?: string },
) {
  const cfg = folder.scheduler.config as Record<string, number | boolean | string>;
  const T = Number(cfg.num_train_timesteps);
  const betas = Array.from(
    { length: T },
    (_, i) =>
      (Math.sqrt(Number(cfg.beta_start)) + ((Math.sqrt(Number(cfg.beta_end)) - Math.sqrt(Number(cfg.beta_start))) * i) / (T - 1)) ** 2,
  );
  const abar: number[] = [];
  betas.reduce((p, b) => (abar.push(p * (1 - b)), p * (1 - b)), 1);
  const finalAbar = cfg.set_alpha_to_one ? 1 : abar[0];
  const ratio = Math.floor(T / o.steps);
  // set_timesteps, "leading": (arange(N) * ratio).round()[::-1] + steps_offset
  const timesteps = Array.from({ length: o.steps }, (_, i) => (o.steps - 1 - i) * ratio + Number(cfg.steps_offset ?? 0));
  const prediction = o.prediction ?? cfg.prediction_type;
  const xl = folder.textEncoders.length === 2;
  const cond = await refEncode(folder, o.prompt);
  const uncond = xl
    ? { ehs: new Float64Array(cond.ehs.length), pooled: new Float64Array(cond.pooled!.length) }
    : await refEncode(folder, '');
  const [h, w] = [o.height / 8, o.width / 8];
  const size = 4 * h * w;
  let x = Float64Array.from(o.init); // init_noise_sigma = 1 for DDIM
  const session = await ort.InferenceSession.create(folder.unet.model);
  const f32 = (a: ArrayLike<number>) => Float32Array.from(a);
  const cat = (a: ArrayLike<number>, b: ArrayLike<number>) => {
    const out = new Float32Array(a.length + b.length);
    out.set(f32(a));
    out.set(f32(b), a.length);
    return out;
  };
  try {
    for (const t of timesteps) {
      const feeds: Record<string, ort.Tensor> = {
        sample: new ort.Tensor('float32', cat(x, x), [2, 4, h, w]),
        timestep: new ort.Tensor('float32', Float32Array.of(t, t), [2]),
        encoder_hidden_states: new ort.Tensor('float32', cat(uncond.ehs, cond.ehs), [2, 77, cond.D]),
      };
      if (xl) {
        feeds.text_embeds = new ort.Tensor('float32', cat(uncond.pooled!, cond.pooled!), [2, cond.pooled!.length]);
        const ids = [o.height, o.width, 0, 0, o.height, o.width];
        feeds.time_ids = new ort.Tensor('float32', Float32Array.from([...ids, ...ids]), [2, 6]);
      }
      const out = (await session.run(feeds)).out_sample.data as Float32Array;
      const a = abar[t];
      const prev = t - ratio;
      const ap = prev >= 0 ? abar[prev] : finalAbar;
      const next = new Float64Array(size);
      for (let k = 0; k < size; k++) {
        const m = out[k] + o.guidance * (out[size + k] - out[k]);
        let x0: number;
        let eps: number;
        if (prediction === 'v_prediction') {
          x0 = Math.sqrt(a) * x[k] - Math.sqrt(1 - a) * m;
          eps = Math.sqrt(a) * m + Math.sqrt(1 - a) * x[k];
        } else {
          x0 = (x[k] - Math.sqrt(1 - a) * m) / Math.sqrt(a);
          eps = m;
        }
        next[k] = Math.sqrt(ap) * x0 + Math.sqrt(1 - ap) * eps;
      }
      x = next;
    }
  } finally {
    await session.release();
  }
  const scaling = Number(folder.vaeDecoder.config.scaling_factor);
  const dec = await runModel(folder.vaeDecoder.model, {
    latent_sample: new ort.Tensor('float32', f32(Array.from(x, (v) => v / scaling)), [1, 4, h, w]),
  });
  const image = Array.from(dec.sample.data as Float32Array, (v) => Math.min(1, Math.max(0, v / 2 + 0.5)));
  return { latents: x, image, timesteps };
}

describe('equals diffusers (DDIM, given latents)', () => {
  test.each(['sd15', 'sd21', 'sdxl'] as const)('%s: latents, timesteps and image match the float64 reference', async (f) => {
    const folder = folders[f];
    const o = { prompt: 'a photo of sks dog', steps: 3, guidance: 5, width: 128, height: 64 };
    const init = noise(7, 4 * 8 * 16);
    const ref = await reference(folder, { ...o, init });
    const r = await textToImage({ folder, ...o, scheduler: 'ddim', seed: 0, numImages: 1, initLatents: init });
    // the config's steps_offset 1: leading timesteps 667, 334, 1
    expect(r.timesteps).toEqual([667, 334, 1]);
    expect(ref.timesteps).toEqual(r.timesteps);
    expect(r.prediction).toBe(f === 'sd21' ? 'v_prediction' : 'epsilon');
    expect(r.latents.shape).toEqual([1, 4, 8, 16]);
    const scale = Math.max(...Array.from(ref.latents, Math.abs));
    expect(maxAbsDiff(r.latents.data, ref.latents)).toBeLessThan(1e-5 * Math.max(1, scale));
    expect(r.images!.dims).toEqual([1, 3, 64, 128]);
    expect(maxAbsDiff(r.images!.data, ref.image)).toBeLessThan(1e-5);
    if (f === 'sd21') {
      // the config's v_prediction matters: read as epsilon the result is another one
      const asEps = await reference(folder, { ...o, init, prediction: 'epsilon' });
      expect(maxAbsDiff(asEps.latents, ref.latents)).toBeGreaterThan(1e-2);
    }
  });
});

describe('generate --model (CLI)', () => {
  test.each(['sd15', 'sd21', 'sdxl'] as const)(
    '%s: a PNG of the requested size, the same bytes per seed, others with another seed',
    async (f) => {
      const out = path.join(root, `cli-${f}`);
      const args = [
        'generate',
        '--model',
        dirs[f],
        '--prompt',
        'a photo of a cat',
        '--width',
        '128',
        '--height',
        '64',
        '--steps',
        '2',
        '--seed',
        '3',
      ];
      const a = await cli(...args, '-o', path.join(out, 'a.png'));
      expect([a.code, a.err.includes('error')]).toEqual([0, false]);
      expect(a.out).toContain('generated 1 image 128x64');
      const meta = await sharp(path.join(out, 'a.png')).metadata();
      expect([meta.format, meta.width, meta.height, meta.channels]).toEqual(['png', 128, 64, 3]);
      await cli(...args, '-o', path.join(out, 'b.png'));
      expect(fs.readFileSync(path.join(out, 'b.png')).equals(fs.readFileSync(path.join(out, 'a.png')))).toBe(true);
      await cli(...args.slice(0, -1), '4', '-o', path.join(out, 'c.png'));
      expect(fs.readFileSync(path.join(out, 'c.png')).equals(fs.readFileSync(path.join(out, 'a.png')))).toBe(false);
    },
  );

  test('--init-latents is honoured (the seed then changes nothing under DDIM), --num-images writes image-<i>.png', async () => {
    const out = path.join(root, 'init');
    const init = noise(9, 2 * 4 * 8 * 8);
    fs.mkdirSync(out, { recursive: true });
    writeNpy(path.join(out, 'init.npy'), { dtype: 'float32', shape: [2, 4, 8, 8], data: init });
    const base = [
      'generate',
      '--model',
      dirs.sd15,
      '--prompt',
      'a dog',
      '--steps',
      '2',
      '--scheduler',
      'ddim',
      '--init-latents',
      path.join(out, 'init.npy'),
    ];
    const r = await cli(...base, '--seed', '1', '-o', path.join(out, 'img.png'), '--latents-out', path.join(out, 'l1.npy'));
    expect(r.code).toBe(0);
    expect(r.out).toContain('generated 2 images 64x64');
    expect(fs.existsSync(path.join(out, 'img-0.png')) && fs.existsSync(path.join(out, 'img-1.png'))).toBe(true);
    await cli(...base, '--seed', '2', '--latents-out', path.join(out, 'l2.npy'));
    const l1 = readNpy(path.join(out, 'l1.npy'));
    expect(l1.shape).toEqual([2, 4, 8, 8]);
    expect(Buffer.from(readNpy(path.join(out, 'l2.npy')).data.buffer).equals(Buffer.from(l1.data.buffer))).toBe(true);
    const lib = await textToImage({
      folder: folders.sd15,
      prompt: 'a dog',
      width: 64,
      height: 64,
      steps: 2,
      guidance: 7.5,
      scheduler: 'ddim',
      seed: 0,
      numImages: 2,
      initLatents: init,
      decode: false,
    });
    expect(maxAbsDiff(lib.latents.data, l1.data as Float32Array)).toBe(0);
    const seeded = await cli(
      'generate',
      '--model',
      dirs.sd15,
      '--prompt',
      'a dog',
      '--steps',
      '2',
      '--num-images',
      '2',
      '--width',
      '64',
      '--height',
      '64',
      '--latents-out',
      path.join(out, 'l3.npy'),
    );
    expect(seeded.code).toBe(0);
    expect(maxAbsDiff(readNpy(path.join(out, 'l3.npy')).data as Float32Array, l1.data as Float32Array)).toBeGreaterThan(0.01);
  });

  test('euler_a and dpmpp_2m run from the folder config; the default sampler follows its class', async () => {
    expect(defaultSchedulerFor('DDIMScheduler')).toBe('ddim');
    expect(defaultSchedulerFor('EulerAncestralDiscreteScheduler')).toBe('euler_a');
    expect(defaultSchedulerFor('PNDMScheduler')).toBe('ddim');
    for (const scheduler of ['euler_a', 'dpmpp_2m'] as const) {
      const r = await textToImage({
        folder: folders.sd21,
        prompt: 'x',
        width: 64,
        height: 64,
        steps: 3,
        guidance: 3,
        scheduler,
        seed: 2,
        numImages: 1,
      });
      expect([scheduler, r.latents.data.every(Number.isFinite), r.images!.data.every((v) => v >= 0 && v <= 1)]).toEqual([
        scheduler,
        true,
        true,
      ]);
    }
  });
});

describe('scheduler config', () => {
  const sd = () => ({ ...(folders.sd15.scheduler.config as Record<string, unknown>) });
  test('keys the config has win, missing keys take the sampler class defaults (as from_config does)', () => {
    const ddim = configureScheduler(sd(), 'ddim');
    expect(ddim.options).toEqual({ prediction: 'epsilon', spacing: 'leading', stepsOffset: 1, setAlphaToOne: false });
    expect(ddim.make(4).timesteps).toEqual([751, 501, 251, 1]);
    // EulerAncestralDiscreteScheduler's default spacing is linspace when the config does not say
    expect(configureScheduler(sd(), 'euler_a').options.spacing).toBe('linspace');
    const bare = { beta_start: 0.00085, beta_end: 0.012, beta_schedule: 'scaled_linear' };
    expect(configureScheduler(bare, 'ddim').options).toEqual({
      prediction: 'epsilon',
      spacing: 'leading',
      stepsOffset: 0,
      setAlphaToOne: true,
      clipSampleRange: 1,
    });
    expect(configureScheduler(bare, 'ddim').make(4).timesteps).toEqual([750, 500, 250, 0]);
    expect(configureScheduler({ ...sd(), timestep_spacing: 'trailing' }, 'ddim').make(4).timesteps).toEqual([999, 749, 499, 249]);
  });

  test('set_alpha_to_one and clip_sample change the last DDIM step as diffusers does', () => {
    const x = Float32Array.of(0.5, -3);
    const eps = Float32Array.of(0.1, 0.2);
    const step = (cfg: Record<string, unknown>) => {
      const s = configureScheduler(cfg, 'ddim').make(2);
      return s.step(eps, 1, x, () => new Float32Array(2));
    };
    const abar0 = configureScheduler(sd(), 'ddim').schedule.alphasCumprod[0];
    const a = configureScheduler(sd(), 'ddim').schedule.alphasCumprod[1];
    const x0 = (v: number, e: number) => (v - Math.sqrt(1 - a) * e) / Math.sqrt(a);
    expect(step(sd())[1]).toBeCloseTo(Math.sqrt(abar0) * x0(-3, 0.2) + Math.sqrt(1 - abar0) * 0.2, 5);
    expect(step({ ...sd(), set_alpha_to_one: true })[1]).toBeCloseTo(x0(-3, 0.2), 5);
    expect(step({ ...sd(), set_alpha_to_one: true, clip_sample: true })[1]).toBeCloseTo(-1, 6);
  });

  test('unsupported settings are refused by name', () => {
    expect(() => configureScheduler({ ...sd(), rescale_betas_zero_snr: true }, 'ddim')).toThrow(
      'rescale_betas_zero_snr true is not supported',
    );
    expect(() => configureScheduler({ ...sd(), use_karras_sigmas: true }, 'dpmpp_2m')).toThrow('use_karras_sigmas');
    expect(() => configureScheduler({ ...sd(), prediction_type: 'sample' }, 'ddim')).toThrow('prediction_type "sample"');
  });
});

describe('embed', () => {
  test('writes the conditioning readConditioning reads (SDXL with text_embeds), equal to the encoders run by hand', async () => {
    const file = path.join(root, 'emb', 'dog.npy');
    const r = await cli('embed', '--model', dirs.sdxl, '--prompt', 'a photo of a dog', '-o', file);
    expect(r.code).toBe(0);
    expect(fs.existsSync(path.join(root, 'emb', 'dog.text_embeds.npy'))).toBe(true);
    const c = readConditioning(file);
    const ref = await refEncode(folders.sdxl, 'a photo of a dog');
    expect(c.encoderHiddenStates.shape).toEqual([77, ref.D]);
    expect(ref.D).toBe(40); // 16 + 24: both encoders' widths
    expect(maxAbsDiff(c.encoderHiddenStates.data, ref.ehs)).toBeLessThan(1e-6);
    expect(maxAbsDiff(c.textEmbeds!.data, ref.pooled!)).toBeLessThan(1e-6);
    expect(Math.max(...Array.from(c.textEmbeds!.data, Math.abs))).toBeGreaterThan(1e-3);
    const sd = path.join(root, 'emb', 'sd.npy');
    expect((await cli('embed', '--model', dirs.sd21, '--prompt', 'a dog', '-o', sd)).code).toBe(0);
    expect(readConditioning(sd).textEmbeds).toBeUndefined();
    expect(readNpy(sd).shape).toEqual([1, 77, 24]);
  });
});

describe('VAE encode', () => {
  const image = (n: number, side: number) => ({
    data: noise(3, n * 3 * side * side).map((v) => Math.tanh(v)),
    dims: [n, 3, side, side] as const,
  });

  test('latent_parameters: mean + exp(logvar/2)·eps with the seeded stream, times the scaling factor, at two sizes', async () => {
    for (const side of [32, 48]) {
      const img = image(2, side);
      const z = await encodeImages(folders.sdxl, img, { seed: 4 });
      expect(z.shape).toEqual([2, 4, side / 8, side / 8]);
      const params = await runModel(folders.sdxl.vaeEncoder.model, {
        sample: new ort.Tensor('float32', img.data.slice(0, 3 * side * side), [1, 3, side, side]),
      });
      const p = params.latent_parameters.data as Float32Array;
      const size = 4 * (side / 8) ** 2;
      const eps = new Float32Array(2 * size);
      fillNormal(new Rng(4, 'vae/encode'), eps, 1);
      const want = Array.from(
        { length: size },
        (_, k) => (p[k] + Math.exp(0.5 * Math.min(20, Math.max(-30, p[size + k]))) * eps[k]) * 0.13025,
      );
      expect(maxAbsDiff(z.data.subarray(0, size), want)).toBeLessThan(1e-6);
    }
  });

  test('latent_sample (older exports): taken as is, scaled once', async () => {
    const dir = path.join(root, 'sample-variant');
    fs.cpSync(dirs.sd15, dir, { recursive: true });
    const file = path.join(dir, 'vae_encoder', 'model.onnx');
    const m = loadModel(file);
    const g = m.graph;
    const params = g.outputs[0];
    const c = (name: string, v: number[]) =>
      g.addInitializer(tensorFromTyped(name, BigInt64Array.from(v.map(BigInt)), [v.length], DataType.INT64));
    const slice = g.addNode({ opType: 'Slice', inputs: [params, c('s0', [1]), c('s1', [5]), c('s2', [1])], outputs: [LATENT_SAMPLE] });
    slice.outputs[0].type = { elemType: DataType.FLOAT, shape: ['batch', 4, 'h', 'w'] };
    g.outputs = [slice.outputs[0]];
    saveModel(m, file, { externalData: 'inline', referenceInPlace: true });
    const folder = openPipelineFolder(dir);
    expect(folder.vaeEncoder.outputs.map((o) => o.name)).toEqual([LATENT_SAMPLE]);
    const img = image(1, 32);
    const z = await encodeImages(folder, img, { seed: 4 });
    const p = (await runModel(folders.sd15.vaeEncoder.model, { sample: new ort.Tensor('float32', img.data, [1, 3, 32, 32]) }))
      .latent_parameters.data as Float32Array;
    // channels 1..4 of the parameters (mean channels 1-3, logvar channel 0): no noise, scaled once
    const want = Array.from({ length: 4 * 16 }, (_, k) => p[16 + k] * 0.18215);
    expect(maxAbsDiff(z.data, want)).toBeLessThan(1e-7);
  });
});

describe('--lora and --run', () => {
  let sites: { module: string; inFeatures: number; outFeatures: number }[];
  const TARGETS = /attn1\.to_q$|attn2\.to_v$/;
  const loraSet = (rank: number, bScale: number): { rank: number; alpha: number; modules: LoraModuleValues[] } => ({
    rank,
    alpha: 2,
    modules: sites.map((s, i) => ({
      module: s.module,
      a: { shape: [rank, s.inFeatures], data: noise(10 + i, rank * s.inFeatures).map((v) => v * 0.5) },
      b: { shape: [s.outFeatures, rank], data: noise(50 + i, s.outFeatures * rank).map((v) => v * bScale) },
    })),
  });
  beforeAll(() => {
    sites = findLoraSites(loadModel(folders.sd15.unet.model).graph).filter((s) => TARGETS.test(s.module));
  });

  const gen = (extra: string[], file: string) =>
    cli(
      'generate',
      '--model',
      dirs.sd15,
      '--prompt',
      'a photo of sks dog',
      '--steps',
      '2',
      '--seed',
      '1',
      '--width',
      '64',
      '--height',
      '64',
      '-o',
      file,
      '--latents-out',
      file.replace('.png', '.npy'),
      ...extra,
    );

  test('a B = 0 LoRA gives the same bytes as none; a nonzero one changes the image and equals the LoRA run as graph inputs', async () => {
    const out = path.join(root, 'lora');
    fs.mkdirSync(out, { recursive: true });
    expect(sites.length).toBeGreaterThanOrEqual(4);
    writeLoraFile(path.join(out, 'zero.safetensors'), 'peft', loraSet(2, 0));
    writeLoraFile(path.join(out, 'lora.safetensors'), 'kohya', loraSet(2, 0.5));
    expect((await gen([], path.join(out, 'none.png'))).code).toBe(0);
    const zero = await gen(['--lora', path.join(out, 'zero.safetensors')], path.join(out, 'zero.png'));
    expect(zero.out).toContain(`folded into ${sites.length} layers`);
    expect(fs.readFileSync(path.join(out, 'zero.png')).equals(fs.readFileSync(path.join(out, 'none.png')))).toBe(true);
    const r = await gen(['--lora', path.join(out, 'lora.safetensors')], path.join(out, 'lora.png'));
    expect([r.code, r.out.includes('(kohya)')]).toEqual([0, true]);
    const folded = readNpy(path.join(out, 'lora.npy')).data as Float32Array;
    expect(maxAbsDiff(folded, readNpy(path.join(out, 'none.npy')).data as Float32Array)).toBeGreaterThan(1e-3);
    expect(fs.readFileSync(path.join(out, 'lora.png')).equals(fs.readFileSync(path.join(out, 'none.png')))).toBe(false);
    // the no-temporary-files promise
    expect(fs.readdirSync(path.dirname(folders.sd15.unet.model)).sort()).toEqual(['config.json', 'model.onnx', 'model.onnx_data']);

    // Independent route: compile with `hollow none` (LoRA as low-rank branches fed as inputs) and sample through --run.
    const spec = path.join(out, 'none.hollow');
    fs.writeFileSync(
      spec,
      'model sd15\nhollow none\nshape sample [1, 4, 8, 8]\nshape encoder_hidden_states [1, 77, 32]\nlora rank 2 alpha 2\nlora targets "attn1.to_q" "attn2.to_v"\nemit infer\n',
    );
    const compiled = path.join(out, 'compiled');
    compileFromSpec(folders.sd15.unet.model, spec, { out: compiled });
    const viaRun = await gen(
      ['--run', compiled, '--class-prompt', 'a photo of a dog', '--lora', path.join(out, 'lora.safetensors')],
      path.join(out, 'run.png'),
    );
    expect(viaRun.code).toBe(0);
    expect(maxAbsDiff(readNpy(path.join(out, 'run.npy')).data as Float32Array, folded)).toBeLessThan(1e-4);
  });

  test('folding on one layer: W + scale·B·A, the other weights untouched', () => {
    const g = loadModel(folders.sd15.unet.model).graph;
    const site = findLoraSites(g).find((s) => TARGETS.test(s.module))!;
    const before = new Map([...g.initializers()].map((v) => [v.name, v.initializer]));
    const a = { shape: [1, site.inFeatures], data: Float32Array.from({ length: site.inFeatures }, (_, i) => i + 1) };
    const b = { shape: [site.outFeatures, 1], data: Float32Array.from({ length: site.outFeatures }, (_, o) => (o % 3) - 1) };
    const w0 = site.node.inputs[1]!.initializer!;
    const { folded } = foldLoraWeights(g, (m) => (m === site.module ? { a, b, scale: 0.25 } : undefined));
    expect(folded).toEqual([site.module]);
    const changed = [...g.initializers()].filter((v) => before.get(v.name) !== v.initializer).map((v) => v.name);
    expect(changed).toEqual([w0.name]);
    const read = (t: typeof w0) => new Float32Array(new Uint8Array(require('../compiler/serde').readTensorBytes(t)).buffer);
    const W = read(w0);
    const W2 = read(site.node.inputs[1]!.initializer!);
    // MatMul stores [in, out]
    for (const [i, o] of [
      [0, 0],
      [3, 1],
      [site.inFeatures - 1, site.outFeatures - 1],
    ]) {
      expect(W2[i * site.outFeatures + o]).toBeCloseTo(W[i * site.outFeatures + o] + 0.25 * b.data[o] * a.data[i], 5);
    }
  });

  test('--run on a 39.2% compiled folder: with its untrained LoRA and the prompt as class prompt it samples the base model; a session pool gives the same images, each graph opened once', async () => {
    const out = path.join(root, 'run39');
    fs.mkdirSync(out, { recursive: true });
    const spec = path.join(out, 'dog.hollow');
    fs.writeFileSync(
      spec,
      'model sd15\nhollow preset "39.2%"\nshape sample [1, 4, 8, 8]\nshape encoder_hidden_states [1, 77, 32]\nlora rank 2 alpha 2\nlora targets "attn1.to_q" "attn2.to_v"\nemit precompute infer\n',
    );
    compileFromSpec(folders.sd15.unet.model, spec, { out: path.join(out, 'c') });
    const r = await gen(['--run', path.join(out, 'c'), '--class-prompt', 'a photo of sks dog'], path.join(out, 'run.png'));
    expect(r.code).toBe(0);
    expect(r.out).toContain('two-path infer.onnx');
    const meta = await sharp(path.join(out, 'run.png')).metadata();
    expect([meta.width, meta.height]).toEqual([64, 64]);
    await gen([], path.join(out, 'plain.png'));
    expect(
      maxAbsDiff(readNpy(path.join(out, 'run.npy')).data as Float32Array, readNpy(path.join(out, 'plain.npy')).data as Float32Array),
    ).toBeLessThan(1e-4);
    const noClass = await gen(['--run', path.join(out, 'c')], path.join(out, 'x.png'));
    expect([noClass.code, noClass.err.trim().split('\n').length]).toEqual([1, 1]);
    expect(noClass.err).toContain('give --class-prompt');

    // a session pool: the same images, each graph opened once across calls, all released at close
    const pool = new SessionPool();
    const once = (run: boolean, seed: number, session = {}) =>
      textToImage({
        folder: folders.sd15,
        prompt: 'a photo of sks dog',
        width: 64,
        height: 64,
        steps: 2,
        guidance: 7.5,
        scheduler: 'ddim',
        seed,
        numImages: 1,
        session,
        ...(run && { run: { out: path.join(out, 'c'), classPrompt: 'a photo of a dog' } }),
      });
    const alone = [await once(false, 1), await once(true, 2)];
    const pooled = [await once(false, 1, { pool }), await once(true, 2, { pool }), await once(false, 1, { pool })];
    // text encoder, unet, vae decoder; infer.onnx
    expect(pool.size).toBe(4);
    expect(
      pooled.map((r) => Buffer.from(r.images!.data.buffer).equals(Buffer.from(alone[r === pooled[1] ? 1 : 0].images!.data.buffer))),
    ).toEqual([true, true, true]);
    expect(maxAbsDiff(alone[0].images!.data, alone[1].images!.data)).toBeGreaterThan(0);
    await pool.close();
    expect(pool.size).toBe(0);
    await expect(once(false, 1, { pool })).rejects.toThrow('SessionPool used after close()');
  });
});

describe('bad input: one line, exit 1', () => {
  const oneLine = (r: { code: number; err: string; out: string }, text: string) => {
    expect(r.code).toBe(1);
    expect(r.out).toBe('');
    const lines = r.err.trim().split('\n');
    expect(lines).toHaveLength(1);
    expect(lines[0]).toContain(text);
  };
  const png = () => path.join(root, 'bad.png');

  test('a folder missing a component, an unknown scheduler class', async () => {
    const dir = path.join(root, 'broken');
    fs.cpSync(dirs.sd15, dir, { recursive: true });
    fs.rmSync(path.join(dir, 'vae_decoder', 'model.onnx'));
    oneLine(await cli('generate', '--model', dir, '--prompt', 'x', '-o', png()), 'no vae_decoder/model.onnx');
    const sched = path.join(root, 'sched');
    fs.cpSync(dirs.sd15, sched, { recursive: true });
    const file = path.join(sched, 'scheduler', 'scheduler_config.json');
    fs.writeFileSync(file, JSON.stringify({ ...JSON.parse(fs.readFileSync(file, 'utf8')), _class_name: 'MagicScheduler' }));
    oneLine(await cli('generate', '--model', sched, '--prompt', 'x', '-o', png()), 'unknown scheduler _class_name "MagicScheduler"');
  });

  test('incompatible flags', async () => {
    const m = ['generate', '--model', dirs.sd15];
    oneLine(
      await cli(...m, '--prompt', 'x', '--prompt-embeds', 'e.npy', '-o', png()),
      '--prompt-embeds is for generate <out> (embeddings); with --model use --prompt',
    );
    oneLine(await cli(...m, '--prompt', 'x', '--latents-in', 'e.npy', '-o', png()), 'with --model use --init-latents');
    oneLine(await cli(...m, '-o', png()), 'needs --prompt');
    oneLine(await cli(...m, '--prompt', 'x'), 'give -o image.png');
    oneLine(await cli(...m, '--prompt', 'x', '--class-prompt', 'y', '-o', png()), '--class-prompt is the base path');
    oneLine(
      await cli(...m, '--prompt', 'x', '--width', '60', '-o', png()),
      '--width 60: the UNet takes latent sides that are multiples of 8 (images: multiples of 64); nearest: 64',
    );
    oneLine(
      await cli('generate', root, '--prompt', 'x', '--prompt-embeds', 'e.npy', '--latents-out', 'l.npy'),
      '--prompt needs --model <pipeline folder>',
    );
    oneLine(await cli('generate', root, '--model', dirs.sd15, '--prompt', 'x', '-o', png()), `give the compiled folder as --run ${root}`);
    oneLine(await cli('generate', '--prompt-embeds', 'e.npy', '--latents-out', 'l.npy'), 'give a compiled folder');
  });
});

test('float16 conversion rounds to nearest even and round-trips halves', () => {
  expect([toHalfBits(1), toHalfBits(-2), toHalfBits(65504), toHalfBits(1e6), toHalfBits(2 ** -24), toHalfBits(0)]).toEqual([
    0x3c00, 0xc000, 0x7bff, 0x7c00, 0x0001, 0,
  ]);
  // 1 + 2^-11 lies halfway between 1 and 1 + 2^-10: to even (1)
  expect(toHalfBits(1 + 2 ** -11)).toBe(0x3c00);
  expect(toHalfBits(1 + 3 * 2 ** -11)).toBe(0x3c02);
  for (const h of [0x0001, 0x03ff, 0x3c00, 0x3555, 0xbbff, 0x7bff]) expect(toHalfBits(fromHalfBits(h))).toBe(h);
});

test('prompts encode as the tiny families need them', async () => {
  const [c] = await encodePrompts(folders.sd21, ['a dog']);
  expect(c.encoderHiddenStates.shape).toEqual([77, 24]);
  expect(c.textEmbeds).toBeUndefined();
});
