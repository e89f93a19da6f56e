/**
 * `hollowc web` and the browser page (runtime/web/browser), end to end in headless Chromium
 * (Debian's /usr/bin/chromium driven by playwright-core; never a downloaded browser): the page
 * trains a tiny sd15 compile with the compiler's own train.onnx on WASM, and on WebGPU over
 * SwiftShader, and must (1) lower the loss over the store, (2) offer a LoRA equal to what
 * `hollowc train` writes for the same 20 steps and seed, to 1e-4 relative, (3) log no console
 * errors; a screenshot after training is saved and its layout checked. Served with --model (the tiny
 * pipeline the UNet comes from), the page decodes its sample with that pipeline's vae_decoder and
 * must draw what runtime/text-to-image/vae.ts decodes from the same latents.
 *
 * Without chromium (or, for WebGPU, without an adapter) the browser tests skip, except under CI
 * (env CI set), where they fail: CI installs chromium, which ships SwiftShader.
 *
 * The spec keeps the WebGPU run short (SwiftShader runs each kernel on the CPU): 8x8 latents, the
 * deepest preset, LoRA on the six attention layers of up_blocks.3 (so the backward stops there),
 * AdamW eps 1e-6.
 * With the default eps 1e-8 some LoRA gradients of this random tiny model are ~1e-9, under
 * float32 round-off, and Adam turns that round-off into full-size updates: two CPU runs with 1
 * and 2 threads then differ by 4e-3 after 20 steps; with eps 1e-6 they differ by 1e-5.
 */
import type { ChildProcess } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import type { Page } from 'playwright-core';
import { compileFromSpec } from '../cli/api/compile-spec';
import { buildPipeline } from '../models/builder';
import { convertToFloat16InPlace } from '../models/builder/float16';
import { precompute } from '../runtime/store/precompute';
import { readSafetensors, toFloat32 } from '../runtime/formats/safetensors';
import { loadTrainingData } from '../runtime/store/training-data';
import { train } from '../runtime/train/train';
import { familyFits, folderFit } from '../runtime/web/memory-fit';
import { openPipelineFolder } from '../runtime/text-to-image/pipeline-folder';
import { decodeLatents } from '../runtime/text-to-image/vae';
import { startWebServer as startLibraryServer } from '../runtime/web/server';
import { refused } from './support/cli';
import { writeData } from './runtime-fake-train';
import { tempDir } from './support/fixture';
import { worstRelative } from './support/webgpu';
import { CHROMIUM, IN_CI, launchChromium, startWebServer, watchedPage } from './support/browser';

const STEPS = 20;

/** A compiled folder with a store, `hollowc train`'s LoRA for it, and `hollowc web` serving it. */
interface Served {
  dir: string;
  out: string;
  /** The tiny sd15 pipeline folder whose UNet was compiled. */
  pipeline: string;
  reference: { lora: string; stepSeconds: number; losses: number[] };
  url: string;
}

let dir: string;
let out: string;
let pipeline: string;
let reference: Served['reference'];
let url: string;
const servers: ChildProcess[] = [];

const startServer = (folder: string, args: string[] = []) => startWebServer(folder, args, servers);

/** The tiny sd15 pipeline's UNet (float16: as optimum's --dtype fp16 export writes it) compiled, precomputed, trained by the CLI and served. */
async function serveFolder(float16: boolean): Promise<Served> {
  const dir = tempDir(float16 ? 'hollowc-web-fp16-' : 'hollowc-web-');
  const pipeline = path.join(dir, 'pipeline');
  await buildPipeline('sd15', 'tiny', pipeline, { seed: 5 });
  const file = path.join(pipeline, 'unet', 'model.onnx');
  if (float16) convertToFloat16InPlace(file);
  const spec = path.join(dir, 'spec.hollow');
  fs.writeFileSync(
    spec,
    [
      'model sd15',
      'hollow preset "84.3%"',
      'shape sample [1, 4, 8, 8]',
      'shape timestep [1]',
      'shape encoder_hidden_states [1, 7, 32]',
      'lora rank 4',
      'lora targets "up_blocks.3.attentions.*.attn1.to_q" "up_blocks.3.attentions.*.attn2.to_v"',
      'optimizer adamw lr 1e-2 eps 1e-6',
      'seed 3',
      'emit precompute train infer',
      '',
    ].join('\n'),
  );
  const out = path.join(dir, 'out');
  compileFromSpec(file, spec, { out });
  await precompute({
    out,
    data: loadTrainingData(writeData(path.join(dir, 'samples'), 'sd15', { instances: 2, classes: 2, latent: 8 })),
    count: 6,
  });
  // The reference: `hollowc train` (onnxruntime-node, CPU) on a copy, 20 steps, the spec's seed.
  const ref = path.join(dir, 'ref');
  fs.mkdirSync(ref);
  fs.cpSync(out, ref, { recursive: true });
  const r = await train({ out: ref, steps: STEPS });
  const reference = { lora: r.loraFile, stepSeconds: r.stepSeconds / r.losses.length, losses: r.losses.map((l) => l.loss) };

  return { dir, out, pipeline, reference, url: await startServer(out) };
}

beforeAll(async () => {
  ({ dir, out, pipeline, reference, url } = await serveFolder(false));
}, 120000);

afterAll(() => {
  for (const s of servers) s.kill('SIGTERM');
});

test('hollowc web serves the page, onnxruntime-web and only the folder files the page reads, on 127.0.0.1', async () => {
  expect(url).toMatch(/^http:\/\/127\.0\.0\.1:/);
  const get = (p: string) => fetch(new URL(p, url));
  const page = await get('/');
  expect(page.status).toBe(200);
  expect(page.headers.get('cross-origin-embedder-policy')).toBe('require-corp');
  expect(await page.text()).toContain('id="loss-curve"');
  const js = await get('/page.js');
  expect(js.headers.get('content-type')).toMatch(/javascript/);
  expect((await js.text()).length).toBeGreaterThan(1000);
  expect((await get('/ort/ort.webgpu.min.js')).status).toBe(200);
  expect((await get('/ort/ort-wasm-simd-threaded.jsep.wasm')).headers.get('content-type')).toBe('application/wasm');
  for (const f of [
    'manifest.json',
    'train.onnx',
    'infer.onnx',
    'model.onnx_data',
    'lora-init.safetensors',
    'store/store.json',
    'store/records.bin',
    'store/conditioning.safetensors',
  ]) {
    expect([f, (await get(`/folder/${f}`)).status]).toEqual([f, 200]);
  }
  for (const f of [
    '/folder/../spec.hollow',
    '/folder/%2e%2e/spec.hollow',
    '/folder/train/checkpoint.safetensors',
    '/ort/..%2fpackage.json',
    '/folder/store/../../spec.hollow',
  ]) {
    expect([f, (await get(f)).status]).toEqual([f, 404]);
  }
  expect((await fetch(new URL('/', url), { method: 'POST' })).status).toBe(405);
});

test('the page states what fits in wasm32: this tiny model does, full SD 1.5/2.1 only in float16, SDXL not at all', () => {
  const manifest = JSON.parse(fs.readFileSync(path.join(out, 'manifest.json'), 'utf8'));
  expect(folderFit(manifest).infer.fits[0].fits).toBe(true);
  const [sd15, sd21, sdxl] = familyFits();
  for (const f of [sd15, sd21]) expect(f.fits.map((x) => x.fits)).toEqual([false, true]);
  expect(sdxl.fits.map((x) => x.fits)).toEqual([false, false]);
  expect(sdxl.verdict).toMatch(/does not fit in wasm32/);
});

interface PageResult {
  backend: string;
  losses: { step: number; loss: number }[];
  evalBefore: number;
  evalAfter: number;
  stepSeconds: number[];
  sessionSeconds: number;
  sampleSeconds: number;
  latents?: { shape: number[]; data: number[] };
  image?: { width: number; height: number; rgb: number[] };
  done: boolean;
  error?: string;
}

const launch = (backend: 'wasm' | 'webgpu') => launchChromium(backend, dir);

async function hasAdapter(page: Page): Promise<boolean> {
  return page.evaluate(async () => {
    const gpu = (globalThis as unknown as { navigator: { gpu?: { requestAdapter(): Promise<unknown> } } }).navigator.gpu;
    return !!(gpu && (await gpu.requestAdapter()));
  });
}

function compareLora(file: string, referenceLora: string): { worst: number; tensor: string; tensors: number } {
  const got = readSafetensors(file);
  const want = readSafetensors(referenceLora);
  expect([...got.tensors.keys()].sort()).toEqual([...want.tensors.keys()].sort());
  expect(got.metadata).toEqual(want.metadata);
  let worst = { worst: 0, tensor: '', tensors: want.tensors.size };
  for (const [name, t] of want.tensors) {
    const g = got.tensors.get(name)!;
    expect([name, g.dtype, g.shape]).toEqual([name, t.dtype, t.shape]);
    const { rel } = worstRelative(toFloat32(g), toFloat32(t));
    if (rel > worst.worst) worst = { ...worst, worst: rel, tensor: name };
  }
  return worst;
}

async function trainInPage(backend: 'wasm' | 'webgpu', query: string, served?: Served): Promise<void> {
  const ctx = served ?? { dir, url, reference };
  const tag = served ? `${backend}-fp16` : backend;
  const launched = await launch(backend);
  if (!launched) return console.warn(`skipped: no ${CHROMIUM}`);
  const { context } = launched;
  try {
    const { page, problems } = await watchedPage(context);
    if (backend === 'webgpu') {
      await page.goto(ctx.url);
      if (!(await hasAdapter(page))) {
        if (IN_CI) throw new Error('no WebGPU adapter in chromium under CI (SwiftShader flags, libvulkan1?)');
        return console.warn('skipped: chromium gives no WebGPU adapter here');
      }
    }
    const started = Date.now();
    await page.goto(`${ctx.url}?ep=${backend}&steps=${STEPS}&autorun=1&${query}`);
    await page.waitForFunction(() => (globalThis as unknown as { hollowc?: { done: boolean } }).hollowc?.done, null, {
      timeout: 170000,
      polling: 500,
    });
    const r = (await page.evaluate(() => (globalThis as unknown as { hollowc: unknown }).hollowc)) as PageResult;
    const wall = (Date.now() - started) / 1000;

    const shot = path.join(ctx.dir, `page-${tag}.png`);
    await page.screenshot({ path: shot, fullPage: true });
    console.log(`screenshot after training (${tag}): ${shot}`);
    expect(r.error).toBeUndefined();
    expect(r.backend).toBe(backend);
    expect(await page.textContent('#backend')).toMatch(backend === 'webgpu' ? /^WebGPU/ : /^WASM/);
    // served without --model: no VAE, the latent preview
    expect(r.image).toBeUndefined();
    expect(await page.textContent('#sample-note')).toMatch(/latent-to-RGB preview/);

    // The loss at rest (lr = 0; WASM: the whole store, WebGPU: its first batch) fell, and every step's loss is the CLI's.
    expect(r.losses).toHaveLength(STEPS);
    expect(r.evalAfter).toBeLessThan(r.evalBefore);
    r.losses.forEach((l, i) => expect(Math.abs(l.loss - ctx.reference.losses[i])).toBeLessThan(1e-4 * Math.abs(ctx.reference.losses[i])));

    // The download is the LoRA `hollowc train` wrote, to 1e-4 relative per tensor.
    const [download] = await Promise.all([page.waitForEvent('download'), page.click('#download')]);
    expect(download.suggestedFilename()).toBe('lora.safetensors');
    const file = path.join(ctx.dir, `lora-${tag}.safetensors`);
    await download.saveAs(file);
    const cmp = compareLora(file, ctx.reference.lora);
    expect(cmp.worst).toBeLessThan(1e-4);

    // Layout: the loss curve (with its line) and the sample are on screen with a size.
    for (const sel of ['#loss-curve', '#sample', '#download', '#memory-list']) {
      const box = await page.locator(sel).boundingBox();
      expect([sel, !!box && box.width > 50 && box.height > 10]).toEqual([sel, true]);
    }
    expect(await page.locator('#loss-curve polyline').count()).toBe(1);
    expect(await page.locator('#memory-list li').count()).toBe(5);
    const curve = (await page.locator('#loss-curve').boundingBox())!;
    const sample = (await page.locator('#sample').boundingBox())!;
    expect(curve.x + curve.width <= sample.x || curve.y + curve.height <= sample.y).toBe(true); // no overlap

    expect(problems).toEqual([]);
    const later = r.stepSeconds.slice(1);
    const mean = later.reduce((a, b) => a + b, 0) / later.length;
    console.log(
      `${tag}: session ${r.sessionSeconds.toFixed(1)} s, step ${(1000 * mean).toFixed(1)} ms (session.run, mean of steps 2..${STEPS}; step 1 ${(1000 * r.stepSeconds[0]).toFixed(0)} ms) ` +
        `vs onnxruntime-node CPU ${(1000 * ctx.reference.stepSeconds).toFixed(1)} ms per step; sample ${r.sampleSeconds.toFixed(1)} s; ` +
        `loss at rest ${r.evalBefore.toFixed(5)} -> ${r.evalAfter.toFixed(5)}; LoRA worst relative ${cmp.worst.toExponential(2)} (${cmp.tensors} tensors); page wall ${wall.toFixed(0)} s`,
    );
  } finally {
    await context.close();
  }
}

test("the page trains 20 steps on WASM in headless Chromium: loss falls, the LoRA equals hollowc train's, no console errors", async () => {
  await trainInPage('wasm', 'sample_steps=10');
}, 180000);

test("the page trains 20 steps on WebGPU (SwiftShader) in headless Chromium: loss falls, the LoRA equals hollowc train's, no console errors", async () => {
  // SwiftShader takes seconds per run: the loss at rest on one batch, one sampling step at guidance 1.
  await trainInPage('webgpu', 'eval_batches=1&sample_steps=1&guidance=1');
}, 180000);

test("a float16 export's folder (optimum --dtype fp16): the page trains 20 steps on WASM, the LoRA equals hollowc train's on it", async () => {
  const served = await serveFolder(true);
  const manifest = JSON.parse(fs.readFileSync(path.join(served.out, 'manifest.json'), 'utf8'));
  expect(manifest.artifacts.train.inputs.find((i: { name: string }) => i.name === 'sample').dtype).toBe('float16');
  await trainInPage('wasm', 'sample_steps=10', served);
}, 300000);

describe('hollowc web --model <pipeline folder>: the sample decoded by its VAE', () => {
  let vaeUrl: string;
  beforeAll(async () => {
    vaeUrl = await startServer(out, ['--model', pipeline]);
  }, 60000);

  test("serves the pipeline's vae_decoder model, weights and config, and nothing else of the pipeline", async () => {
    const get = (base: string, p: string) => fetch(new URL(p, base));
    for (const f of ['vae_decoder/model.onnx', 'vae_decoder/model.onnx_data', 'vae_decoder/config.json'])
      expect([f, (await get(vaeUrl, `/model/${f}`)).status]).toEqual([f, 200]);
    expect((await get(vaeUrl, '/model/vae_decoder/model.onnx_data')).headers.get('content-length')).toBe(
      String(fs.statSync(path.join(pipeline, 'vae_decoder', 'model.onnx_data')).size),
    );
    for (const f of [
      '/model/unet/model.onnx',
      '/model/vae_encoder/model.onnx',
      '/model/model_index.json',
      '/model/vae_decoder/../unet/model.onnx',
      '/model/vae_decoder/%2e%2e/unet/model.onnx',
      '/model/vae_decoder/',
    ])
      expect([f, (await get(vaeUrl, f)).status]).toEqual([f, 404]);
    // this folder's store was precomputed at 7 tokens and the pipeline's text encoder pads to 77, so
    // no negative can be served: the page guides with zeros (tests/demo serves a matching one)
    expect(await (await get(vaeUrl, '/model.json')).json()).toEqual({ vae_decoder: { weights: ['model.onnx_data'] }, negative: false });
    expect((await get(vaeUrl, '/model/prompt.safetensors')).status).toBe(404);
    // without --model: nothing under /model/, and the page is told so
    expect(await (await get(url, '/model.json')).json()).toEqual({});
    expect((await get(url, '/model/vae_decoder/model.onnx')).status).toBe(404);
  });

  test('--prompt is refused without --model, empty, or encoded to another shape than the folder trains on', async () => {
    const text = 'a photo of sks dog on a beach';
    await refused(['web', out, '--port', '0', '--prompt', text], '--prompt needs --model');
    await refused(['web', out, '--port', '0', '--model', pipeline, '--prompt', ' '], '--prompt is empty');
    // the folder was compiled for 7 tokens, the pipeline's text encoder pads to 77 (tests/demo serves a matching one)
    const stderr = await refused(
      ['web', out, '--port', '0', '--model', pipeline, '--prompt', text],
      'gives [77,32], the store was precomputed with [7,32]',
    );
    expect(stderr).toContain(pipeline);
  });

  test("--model whose text encoder does not give the store's shape: a warning naming the folder and both shapes, and no negative", async () => {
    const warnings: string[] = [];
    const server = await startLibraryServer({ out, port: 0, model: pipeline, warn: (w) => warnings.push(w) });
    try {
      expect(warnings).toEqual([
        `${pipeline}: this pipeline's text encoder gives [77,32], the store was precomputed with [7,32]: the page guides with zeros as the negative, not the encoded "" the pipeline trained on`,
      ]);
    } finally {
      await server.close();
    }
  });

  test('refuses a folder without vae_decoder/model.onnx, naming the folder', async () => {
    const noVae = path.join(dir, 'no-vae');
    fs.mkdirSync(path.join(noVae, 'unet'), { recursive: true });
    fs.copyFileSync(path.join(pipeline, 'model_index.json'), path.join(noVae, 'model_index.json'));
    const stderr = await refused(['web', out, '--port', '0', '--model', noVae], 'no vae_decoder/model.onnx');
    expect(stderr).toContain(noVae);
  });

  test('the page trains on WASM, decodes the sample with vae_decoder and draws what vae.ts decodes from the same latents', async () => {
    const launched = await launch('wasm');
    if (!launched) return console.warn(`skipped: no ${CHROMIUM}`);
    const { context } = launched;
    try {
      const { page, problems } = await watchedPage(context);
      await page.goto(`${vaeUrl}?ep=wasm&steps=3&autorun=1&sample_steps=2&eval_batches=1`);
      await page.waitForFunction(() => (globalThis as unknown as { hollowc?: { done: boolean } }).hollowc?.done, null, {
        timeout: 120000,
        polling: 500,
      });
      const r = (await page.evaluate(() => (globalThis as unknown as { hollowc: unknown }).hollowc)) as PageResult;
      const shot = path.join(dir, 'page-wasm-vae.png');
      await page.screenshot({ path: shot, fullPage: true });
      console.log(`screenshot with the VAE-decoded sample: ${shot}`);
      expect(r.error).toBeUndefined();
      expect(r.losses).toHaveLength(3);

      // onnxruntime-node's decode of the page's latents (the UNet's scale) is the page's image.
      const { shape, data } = r.latents!;
      const want = await decodeLatents(openPipelineFolder(pipeline), { data: Float32Array.from(data), shape: [1, ...shape] });
      const image = r.image!;
      expect([1, 3, image.height, image.width]).toEqual(want.dims);
      let worst = 0;
      want.data.forEach((v, i) => (worst = Math.max(worst, Math.abs(v - image.rgb[i]))));
      expect(worst).toBeLessThan(1e-3);
      // mostly unclamped values: a flat or saturated image would match too easily
      const interior = image.rgb.filter((v) => v > 0 && v < 1).length / image.rgb.length;
      expect(interior).toBeGreaterThan(0.5);
      expect(await page.textContent('#sample-note')).toMatch(/VAE-decoded to \d+x\d+/);

      // The canvas holds the image at its size (CSS scales it up), byte for byte.
      const canvas = await page.evaluate(() => {
        const c = (globalThis as unknown as { document: { getElementById(id: string): unknown } }).document.getElementById('sample') as {
          width: number;
          height: number;
          getContext(k: '2d'): { getImageData(x: number, y: number, w: number, h: number): { data: ArrayLike<number> } };
        };
        return { width: c.width, height: c.height, rgba: Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data) };
      });
      expect([canvas.width, canvas.height]).toEqual([image.width, image.height]);
      const plane = image.width * image.height;
      let off = 0;
      for (let p = 0; p < plane; p++)
        for (let k = 0; k < 3; k++) off = Math.max(off, Math.abs(canvas.rgba[4 * p + k] - Math.round(255 * image.rgb[k * plane + p])));
      expect(off).toBe(0);
      expect(new Set(canvas.rgba).size).toBeGreaterThan(10);
      const box = (await page.locator('#sample').boundingBox())!;
      expect(box.width).toBeGreaterThan(2 * image.width); // scaled up (pixelated), not drawn at 1:1
      expect(problems).toEqual([]);
      console.log(
        `VAE in the page: ${image.width}x${image.height} from latents [${shape}], worst |page - vae.ts| ${worst.toExponential(2)}, ${(100 * interior).toFixed(0)}% of values unclamped`,
      );
    } finally {
      await context.close();
    }
  }, 150000);
});
