/**
 * The personalization page: loads a compiled folder (manifest, train.onnx, infer.onnx, weights,
 * store) with onnxruntime-web, trains the LoRA with train.onnx on WebGPU or WASM, draws the loss
 * live, samples with the two-path infer.onnx (decoded by the VAE decoder `hollowc web --model` serves,
 * else shown as a latent preview) and offers the LoRA as a peft safetensors download
 * (the format `hollowc export-lora --format peft` writes). Everything runs in the tab; the
 * server only serves files.
 *
 * URL parameters: folder (URL of the compiled folder, default `folder/`), ep (webgpu | wasm;
 * default: WebGPU when the browser gives an adapter, else WASM), steps (default 20), autorun=1,
 * sample_steps (default 10), guidance (default 3), seed (sampling seed, default 1), eval_batches
 * (batches of the loss-at-rest measure before and after training; default: the whole store).
 */
import type * as Ort from 'onnxruntime-web';
import { SAMPLE } from '../../../compiler/manifest';
import { encodeSafetensorsBytes } from '../../formats/safetensors-format';
import { loraFileTensors } from '../../formats/lora-format';
import { LORA_FILE_NAME, drawLossCurve } from './ui';
import { WebFolder, loadFolder } from './folder';
import { latentPreview, sampleLatents } from './sampler';
import { WebTrainer } from './trainer';
import { decodeSample, imageRgba, loadVaeDecoder } from './vae-decoder';
import { loadServedConditionings } from './served-conditionings';
import { familyFits, folderFit, gb } from '../memory-fit';
import type { OrtModule } from './tensors';

declare const ort: OrtModule;

type Backend = 'webgpu' | 'wasm';

export interface PageResult {
  backend?: Backend;
  losses: { step: number; loss: number }[];
  evalBefore?: number;
  evalAfter?: number;
  /** session.run seconds per training step. */
  stepSeconds: number[];
  sessionSeconds?: number;
  sampleSeconds?: number;
  /** The prompt sampled after training when the server gave one (hollowc web --prompt). */
  prompt?: string;
  /** The sampled latents [C, h, w]. */
  latents?: { shape: number[]; data: number[] };
  /** The latents decoded by the served VAE decoder (hollowc web --model): rgb planar [3, height, width] in [0, 1]. */
  image?: { width: number; height: number; rgb: number[] };
  done: boolean;
  error?: string;
}

const result: PageResult = { losses: [], stepSeconds: [], done: false };
(window as unknown as { hollowc: PageResult }).hollowc = result;

const $ = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;
const params = new URLSearchParams(location.search);

function status(text: string): void {
  $('status').textContent = text;
}

async function pickBackend(): Promise<{ backend: Backend; why: string }> {
  const asked = params.get('ep');
  if (asked === 'wasm') return { backend: 'wasm', why: 'asked for with ?ep=wasm' };
  if (asked && asked !== 'webgpu') throw new Error(`?ep=${asked}: the page runs on webgpu or wasm`);
  const gpu = (navigator as unknown as { gpu?: { requestAdapter(): Promise<unknown | null> } }).gpu;
  const adapter = gpu ? await gpu.requestAdapter().catch(() => null) : null;
  if (asked === 'webgpu') {
    if (!adapter)
      throw new Error(
        gpu
          ? 'WebGPU was asked for (?ep=webgpu) but the browser gives no adapter'
          : 'WebGPU was asked for (?ep=webgpu) but this browser has no navigator.gpu',
      );
    return { backend: 'webgpu', why: 'asked for with ?ep=webgpu' };
  }
  if (adapter) return { backend: 'webgpu', why: 'the browser has a WebGPU adapter' };
  return { backend: 'wasm', why: gpu ? 'the browser has WebGPU but no adapter' : 'the browser has no WebGPU' };
}

function sessionOptions(backend: Backend, folder: WebFolder, training: boolean): Ort.InferenceSession.SessionOptions {
  // A float16 export's artifacts carry session config entries (passes/precision/float16-weights.ts: their weight
  // Casts must not be folded into float32 copies); `extra` takes them split at the first dot.
  const config = folder.manifest.artifacts[training ? 'train' : 'infer']?.sessionConfig ?? {};
  const extra: Record<string, Record<string, string>> = {};
  for (const [key, value] of Object.entries(config))
    (extra[key.slice(0, key.indexOf('.'))] ??= {})[key.slice(key.indexOf('.') + 1)] = value;
  return {
    extra,
    executionProviders: [backend],
    logSeverityLevel: 3,
    externalData: folder.weights.map((w) => ({ path: w.path, data: w.data })),
    // As runtime/train/step-session.ts: 'basic' for the training graph, no memory pattern.
    graphOptimizationLevel: training ? 'basic' : 'all',
    enableMemPattern: !training,
  };
}

function showMemory(folder: WebFolder): void {
  const fit = folderFit(folder.manifest);
  const list = $('memory-list');
  const item = (text: string, ok: boolean) => {
    const li = document.createElement('li');
    li.textContent = text;
    li.className = ok ? 'fits' : 'no-fit';
    list.appendChild(li);
  };
  item(fit.infer.verdict, fit.infer.fits[0].fits);
  item(fit.train.verdict, fit.train.fits[0].fits);
  for (const f of familyFits()) item(f.verdict, f.fits[0].fits);
  $('memory-note').textContent =
    `onnxruntime-web's WASM build is wasm32: one memory of at most 4 GiB for every session of the page (weights are copied into it; each .onnx file must also stay under 2 GB, weights go as externalData). Rule used: weights + ${25}% headroom. This folder's weights: ${folder.weights.map((w) => `${w.path} ${gb(w.data.byteLength)}`).join(', ')}.`;
}

/** The sample into the canvas (its CSS scales it up, pixelated). */
function drawSample({ rgba, width, height }: { rgba: Uint8ClampedArray; width: number; height: number }): void {
  const canvas = $<HTMLCanvasElement>('sample');
  canvas.width = width;
  canvas.height = height;
  canvas.getContext('2d')!.putImageData(new ImageData(rgba as Uint8ClampedArray<ArrayBuffer>, width, height), 0, 0);
}

function offerDownload(trainer: WebTrainer, folder: WebFolder): void {
  const m = folder.manifest;
  const { tensors, metadata } = loraFileTensors(
    'peft',
    { rank: m.lora.rank, alpha: m.lora.alpha, modules: trainer.loraModules() },
    { hollowc_steps: String(trainer.step), hollowc_seed: String(trainer.seed) },
  );
  const bytes = encodeSafetensorsBytes(tensors, metadata);
  const link = $<HTMLAnchorElement>('download');
  link.href = URL.createObjectURL(new Blob([bytes as Uint8Array<ArrayBuffer>], { type: 'application/octet-stream' }));
  link.download = LORA_FILE_NAME;
  link.textContent = `Download the LoRA (${LORA_FILE_NAME}, peft keys, ${(bytes.byteLength / 1024).toFixed(1)} KiB, step ${trainer.step})`;
  link.hidden = false;
}

async function run(): Promise<void> {
  const button = $<HTMLButtonElement>('train');
  button.disabled = true;
  const steps = Math.max(1, Number($<HTMLInputElement>('steps').value) || 20);
  const base = new URL(params.get('folder') ?? 'folder/', location.href).href;
  $('folder').textContent = base;
  ort.env.wasm.wasmPaths = new URL('ort/', location.href).href;
  // onnxruntime's warnings (e.g. shape ops placed on the CPU under WebGPU) reach the console as errors.
  ort.env.logLevel = 'error';
  const { backend, why } = await pickBackend();
  result.backend = backend;
  $('backend').textContent = `${backend === 'webgpu' ? 'WebGPU' : 'WASM'} (${why})`;

  status('loading the folder');
  const folder = await loadFolder(base, (what) => status(`loading ${what}`));
  showMemory(folder);
  const m = folder.manifest;
  $('model').textContent =
    `${m.family}, cut after ${m.cut?.lastKeptDown ?? 'none'} (${m.cut ? (100 * m.cut.fraction).toFixed(1) : 0}% hollowed), LoRA rank ${m.lora.rank} on ${m.lora.targets.filter((t) => t.trained).length} modules, store ${folder.store.count} records`;

  status('creating the train.onnx session');
  let t0 = performance.now();
  const trainSession = await ort.InferenceSession.create(await folder.artifact('train'), sessionOptions(backend, folder, true));
  result.sessionSeconds = (performance.now() - t0) / 1000;
  // ?lr= overrides the spec's (personalize passes its --lr to train, not into the spec)
  const lr = params.get('lr') ? Number(params.get('lr')) : m.training.lr;
  const trainer = new WebTrainer(ort, trainSession, m, folder.store, folder.initialLora, m.training.seed, lr);
  status('loss before training (lr = 0 over the store)');
  const evalBatches = params.get('eval_batches') ? Number(params.get('eval_batches')) : undefined;
  result.evalBefore = await trainer.lossAtRest(evalBatches);
  for (let s = 0; s < steps; s++) {
    const r = await trainer.trainStep();
    result.losses.push({ step: r.step, loss: r.loss });
    result.stepSeconds.push(r.seconds);
    drawLossCurve($('loss-curve') as unknown as SVGSVGElement, result.losses);
    const later = result.stepSeconds.slice(1);
    const mean = later.length ? later.reduce((a, b) => a + b, 0) / later.length : r.seconds;
    $('step-time').textContent =
      `${(1000 * mean).toFixed(1)} ms per step (session.run, mean of steps 2..${r.step}; step 1 ${(1000 * result.stepSeconds[0]).toFixed(1)} ms)`;
    status(`step ${r.step}/${steps}: loss ${r.loss.toFixed(5)}`);
  }
  result.evalAfter = await trainer.lossAtRest(evalBatches);
  $('eval').textContent =
    `loss over the store at rest: ${result.evalBefore.toFixed(5)} before, ${result.evalAfter.toFixed(5)} after ${trainer.step} steps`;
  offerDownload(trainer, folder);
  await trainSession.release();

  status('sampling with infer.onnx (two paths, trained LoRA)');
  t0 = performance.now();
  const inferSession = await ort.InferenceSession.create(await folder.artifact('infer'), sessionOptions(backend, folder, false));
  const latentShape = (m.artifacts.train!.inputs.find((i) => i.name === SAMPLE)?.shape.slice(1) ??
    folder.store.header.latentShape) as number[];
  const sampleSteps = Number(params.get('sample_steps') ?? 10);
  const served = await loadServedConditionings(location.href);
  result.prompt = served.prompt?.text;
  const latents = await sampleLatents(ort, inferSession, m, {
    prompt: served.prompt?.conditioning ?? folder.store.conditioningFor('instance'),
    negative: served.negative,
    classPrompt: folder.store.conditioningFor('class'),
    steps: sampleSteps,
    guidance: Number(params.get('guidance') ?? 3),
    scheduler: 'ddim',
    seed: Number(params.get('seed') ?? 1),
    latentShape,
    timeIds: folder.store.header.timeIds ? Float32Array.from(folder.store.header.timeIds) : undefined,
    lora: trainer.values(),
    onStep: (i, n) => status(`sampling: step ${i}/${n}`),
  });
  await inferSession.release();
  result.sampleSeconds = (performance.now() - t0) / 1000;
  result.latents = { shape: latentShape, data: Array.from(latents) };
  const sampled =
    `${served.prompt ? `"${served.prompt.text}" (hollowc web --prompt), ` : "the store's instance prompt, "}DDIM, ${sampleSteps} steps, ` +
    `guidance ${params.get('guidance') ?? 3} against ${served.negative ? 'the encoded ""' : 'zeros'}, latents [${latentShape}]`;
  const vae = await loadVaeDecoder(location.href, (what) => status(`loading ${what}`));
  if (vae) {
    status('decoding the sample with vae_decoder');
    t0 = performance.now();
    const vaeSession = await ort.InferenceSession.create(vae.model, {
      executionProviders: [backend],
      logSeverityLevel: 3,
      externalData: vae.weights.map((w) => ({ path: w.path, data: w.data })),
    });
    const image = await decodeSample(ort, vaeSession, vae, latents, latentShape);
    await vaeSession.release();
    result.image = { width: image.width, height: image.height, rgb: Array.from(image.rgb) };
    drawSample({ rgba: imageRgba(image), width: image.width, height: image.height });
    $('sample-note').textContent =
      `${sampled}, VAE-decoded to ${image.width}x${image.height} with the served vae_decoder (scaling factor ${vae.scalingFactor}); sampling ${result.sampleSeconds.toFixed(1)} s, decoding ${((performance.now() - t0) / 1000).toFixed(1)} s`;
  } else {
    drawSample(latentPreview(latents, latentShape));
    $('sample-note').textContent =
      `${sampled} shown with a linear latent-to-RGB preview (a compiled folder has no VAE: serve one with hollowc web --model <pipeline folder>), ${result.sampleSeconds.toFixed(1)} s`;
  }
  status(`done: ${trainer.step} steps on ${backend === 'webgpu' ? 'WebGPU' : 'WASM'}`);
  result.done = true;
}

function fail(e: unknown): void {
  const message = e instanceof Error ? e.message : String(e);
  result.error = message;
  result.done = true;
  status(`error: ${message}`);
  $('status').className = 'error';
  console.error(`hollowc: ${message}`);
}

window.addEventListener('DOMContentLoaded', () => {
  const stepsInput = $<HTMLInputElement>('steps');
  if (params.get('steps')) stepsInput.value = params.get('steps')!;
  $('train').addEventListener('click', () => run().catch(fail));
  if (params.get('autorun') === '1') run().catch(fail);
});
