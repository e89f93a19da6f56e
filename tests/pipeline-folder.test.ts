/**
 * Tiny SD 1.5 / 2.1 / SDXL pipeline folders: built in optimum's layout, opened and validated by
 * the reader, models that run and fit together (text encoder widths = UNet cross-attention,
 * VAE latents = UNet sample), the CLI (`tokenize --json`, `model pipeline`), and broken folders.
 */
import * as fs from 'fs';
import * as path from 'path';
import * as ort from 'onnxruntime-node';
import { HollowcError } from '../compiler/errors';
import { FamilyName } from '../models/families';
import { buildPipeline } from '../models/builder/pipeline';
import { pipelineVariant } from '../models/pipeline-families';
import { textEmbedsDim } from '../models/builder/unet';
import { buildLayout } from '../models/layout';
import { openPipelineFolder, PipelineFolder } from '../runtime/text-to-image/pipeline-folder';
import { loadTokenizer } from '../runtime/text-to-image/tokenizer';
import { runModel, tempDir } from './support/fixture';
import { randomTensor } from './support/tensors';

let root: string;
const folders = new Map<FamilyName, string>();

beforeAll(async () => {
  root = tempDir('hollowc-pipeline-');
  for (const f of ['sd15', 'sd21', 'sdxl'] as const) {
    const dir = path.join(root, f);
    await buildPipeline(f, 'tiny', dir, { seed: 3 });
    folders.set(f, dir);
  }
});
afterAll(() => fs.rmSync(root, { recursive: true, force: true }));

const COMPONENTS = ['model_index.json', 'scheduler', 'text_encoder', 'tokenizer', 'unet', 'vae_decoder', 'vae_encoder'];

describe('layout and reader', () => {
  test.each(['sd15', 'sd21', 'sdxl'] as const)('%s tiny opens with the reader', (f) => {
    const dir = folders.get(f)!;
    const extra = f === 'sdxl' ? ['text_encoder_2', 'tokenizer_2'] : [];
    expect(fs.readdirSync(dir).sort()).toEqual([...COMPONENTS, ...extra].sort());
    for (const m of ['unet', 'text_encoder', 'vae_encoder', 'vae_decoder', ...extra.filter((e) => e.startsWith('text'))]) {
      expect(fs.readdirSync(path.join(dir, m)).sort()).toEqual(['config.json', 'model.onnx', 'model.onnx_data']);
    }
    const p = openPipelineFolder(dir);
    expect(p.family).toBe(f);
    expect(p.pipelineClass).toBe(f === 'sdxl' ? 'StableDiffusionXLPipeline' : 'StableDiffusionPipeline');
    expect(p.scalingFactor).toBe(f === 'sdxl' ? 0.13025 : 0.18215);
    expect(p.scheduler.className).toBe({ sd15: 'PNDMScheduler', sd21: 'DDIMScheduler', sdxl: 'EulerDiscreteScheduler' }[f]);
    expect(p.scheduler.predictionType).toBe(f === 'sd21' ? 'v_prediction' : 'epsilon');
    expect(p.tokenizers.map((t) => t.padToken)).toEqual({ sd15: ['<|endoftext|>'], sd21: ['!'], sdxl: ['<|endoftext|>', '!'] }[f]);
    expect(p.textEncoders.map((t) => t.inputs.map((i) => `${i.name}:${i.dtype}`))).toEqual(p.textEncoders.map(() => ['input_ids:int64']));
    expect(p.timestep).toEqual({ dtype: 'float32', rank: 1 });
    expect(p.unet.inputs.map((i) => i.name)).toEqual(
      f === 'sdxl'
        ? ['sample', 'timestep', 'encoder_hidden_states', 'text_embeds', 'time_ids']
        : ['sample', 'timestep', 'encoder_hidden_states'],
    );
    expect(p.vaeDecoder.outputs.map((o) => o.name)).toEqual(['sample']);
    expect(p.unet.config._class_name).toBe('UNet2DConditionModel');
  });

  test('configs of the real models fit together (full and tiny)', () => {
    for (const f of ['sd15', 'sd21', 'sdxl'] as const) {
      for (const size of ['tiny', 'full'] as const) {
        const v = pipelineVariant(f, size);
        const layout = buildLayout(v.unet.config);
        const width = v.textEncoders.reduce((a, t) => a + t.config.hidden_size, 0);
        expect([f, size, width]).toEqual([f, size, layout.resolved.crossAttentionDims[0]]);
        if (f === 'sdxl') expect(v.textEncoders[1].config.projection_dim).toBe(textEmbedsDim(layout));
        expect(v.vae.latent_channels).toBe(v.unet.config.in_channels);
      }
    }
  });

  test('sdxl: tokenize -> both encoders -> UNet -> VAE decoder runs', async () => {
    const p = openPipelineFolder(folders.get('sdxl')!);
    const ids = [loadTokenizer(p.tokenizers[0].dir), loadTokenizer(p.tokenizers[1].dir)].map(
      (t) => new ort.Tensor('int64', t.encodeBatch(['a photo of sks dog']), [1, 77]),
    );
    const te1 = await runModel(p.textEncoders[0].model, { input_ids: ids[0] });
    const te2 = await runModel(p.textEncoders[1].model, { input_ids: ids[1] });
    // SDXL: penultimate hidden states of both encoders, concatenated on channels
    const h1 = te1[`hidden_states.${pipelineVariant('sdxl', 'tiny').textEncoders[0].config.num_hidden_layers - 1}`];
    const h2 = te2[`hidden_states.${pipelineVariant('sdxl', 'tiny').textEncoders[1].config.num_hidden_layers - 1}`];
    const [d1, d2] = [h1.dims[2], h2.dims[2]];
    const context = new Float32Array(77 * (d1 + d2));
    for (let s = 0; s < 77; s++) {
      context.set((h1.data as Float32Array).subarray(s * d1, (s + 1) * d1), s * (d1 + d2));
      context.set((h2.data as Float32Array).subarray(s * d2, (s + 1) * d2), s * (d1 + d2) + d1);
    }
    const unet = await runModel(p.unet.model, {
      sample: randomTensor(1, 'latent', [1, 4, 8, 8]),
      timestep: new ort.Tensor('float32', Float32Array.of(999), [1]),
      encoder_hidden_states: new ort.Tensor('float32', context, [1, 77, d1 + d2]),
      text_embeds: te2.text_embeds,
      time_ids: new ort.Tensor('float32', Float32Array.of(64, 64, 0, 0, 64, 64), [1, 6]),
    });
    expect(unet.out_sample.dims).toEqual([1, 4, 8, 8]);
    const image = await runModel(p.vaeDecoder.model, { latent_sample: unet.out_sample });
    expect(image.sample.dims).toEqual([1, 3, 64, 64]);
    expect((image.sample.data as Float32Array).every(Number.isFinite)).toBe(true);
  });
});

describe('bad folders', () => {
  /** A fresh copy of the sd15 folder to break. */
  function copy(name: string): string {
    const dir = path.join(root, name);
    fs.cpSync(folders.get('sd15')!, dir, { recursive: true });
    return dir;
  }
  const fails = (dir: string, text: string) => {
    let err: unknown;
    try {
      openPipelineFolder(dir);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(HollowcError);
    expect((err as Error).message).not.toContain('\n');
    expect((err as Error).message).toContain(text);
  };

  test('missing components are named', () => {
    for (const [rm, text] of [
      ['text_encoder', 'no text_encoder/model.onnx'],
      ['vae_decoder/model.onnx', 'no vae_decoder/model.onnx'],
      ['unet/config.json', 'no unet/config.json'],
      ['tokenizer', 'no tokenizer/'],
      ['tokenizer/vocab.json', 'tokenizer/ has no vocab.json'],
      ['model_index.json', 'no model_index.json'],
      ['scheduler', 'no scheduler/scheduler_config.json'],
      ['unet/model.onnx_data', 'does not exist'],
    ] as const) {
      const dir = copy(`missing-${rm.replace(/\W/g, '-')}`);
      fs.rmSync(path.join(dir, rm), { recursive: true });
      fails(dir, text);
    }
  });

  test('unknown scheduler, bad JSON, sdxl without its second encoder', () => {
    const dir = copy('bad-scheduler');
    const file = path.join(dir, 'scheduler', 'scheduler_config.json');
    fs.writeFileSync(file, JSON.stringify({ ...JSON.parse(fs.readFileSync(file, 'utf8')), _class_name: 'MagicScheduler' }));
    fails(dir, 'unknown scheduler _class_name "MagicScheduler"');
    fs.writeFileSync(file, '{');
    fails(dir, 'scheduler/scheduler_config.json is not valid JSON');
    const xl = path.join(root, 'xl-broken');
    fs.cpSync(folders.get('sdxl')!, xl, { recursive: true });
    fs.rmSync(path.join(xl, 'text_encoder_2'), { recursive: true });
    fails(xl, 'no text_encoder_2/model.onnx');
    fails(path.join(root, 'nowhere'), 'not found');
  });

  test('building over a foreign folder is refused; over a pipeline folder replaces it', async () => {
    const foreign = path.join(root, 'foreign');
    fs.mkdirSync(foreign);
    fs.writeFileSync(path.join(foreign, 'keep.txt'), 'mine');
    await expect(buildPipeline('sd15', 'tiny', foreign)).rejects.toThrow('not a pipeline folder');
    expect(fs.readdirSync(foreign)).toEqual(['keep.txt']);
    const again = copy('rebuilt');
    fs.writeFileSync(path.join(again, 'stale.txt'), 'old');
    await buildPipeline('sd21', 'tiny', again);
    expect(openPipelineFolder(again).family).toBe('sd21');
    expect(fs.existsSync(path.join(again, 'stale.txt'))).toBe(false);
    expect(fs.readdirSync(root).filter((n) => n.includes('.tmp-') || n.includes('.old-'))).toEqual([]);
    await expect(buildPipeline('sd3', 'tiny', path.join(root, 'x'))).rejects.toThrow('unknown model family "sd3"');
  });
});

describe('CLI', () => {
  async function run(args: string[]): Promise<{ out: string; err: string; code: number }> {
    let out = '';
    let err = '';
    const o = jest.spyOn(process.stdout, 'write').mockImplementation((s: string | Uint8Array) => ((out += String(s)), true));
    const e = jest.spyOn(process.stderr, 'write').mockImplementation((s: string | Uint8Array) => ((err += String(s)), true));
    const l = jest.spyOn(console, 'log').mockImplementation((...a: unknown[]) => void (out += `${a.join(' ')}\n`));
    try {
      const { main } = await import('../cli/main');
      const code = await main(['node', 'hollowc', ...args]);
      return { out, err, code };
    } finally {
      o.mockRestore();
      e.mockRestore();
      l.mockRestore();
    }
  }

  test('tokenize --json prints exactly one JSON object', async () => {
    const r = await run(['tokenize', path.join(folders.get('sd21')!, 'tokenizer'), 'a photo of a cat', '--json']);
    expect(r.code).toBe(0);
    const lines = r.out.trim().split('\n');
    expect(lines).toHaveLength(1);
    const obj = JSON.parse(lines[0]);
    expect(Object.keys(obj)).toEqual(['input_ids']);
    expect(obj.input_ids).toHaveLength(77);
    expect(obj.input_ids.slice(0, 8)).toEqual([49406, 320, 1125, 539, 320, 2368, 49407, 0]);
  });

  test('tokenize on a folder without vocab: one line, exit 1', async () => {
    const empty = path.join(root, 'empty-tokenizer');
    fs.mkdirSync(empty);
    const r = await run(['tokenize', empty, 'x', '--json']);
    expect(r.code).toBe(1);
    expect(r.out).toBe('');
    expect(r.err.trim().split('\n')).toHaveLength(1);
    expect(r.err).toContain(`${empty}: tokenizer folder has no vocab.json`);
  });

  test('model build --pipeline --tiny writes a folder the reader opens; size is required', async () => {
    const out = path.join(root, 'cli-sd15');
    const r = await run(['model', 'build', 'sd15', '--tiny', '--pipeline', '-o', out]);
    expect(r.code).toBe(0);
    expect(r.out).toContain('built sd15-tiny pipeline');
    expect(openPipelineFolder(out).family).toBe('sd15');
    const bad = await run(['model', 'build', 'sd15', '--pipeline', '-o', path.join(root, 'cli-none')]);
    expect(bad.code).toBe(1);
    expect(bad.err).toContain('say which size');
  });
});
