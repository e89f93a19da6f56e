/**
 * The first stage of issue 32's pipeline: a small SD-shaped VAE trained from scratch on the world's
 * images (models/world) by hollowc's own training. The builder joins encoder and decoder into one
 * autoencoder graph, compile-graph makes its gradients graph (MSE reconstruction + a small KL
 * term), runtime/train/graph-train.ts runs host AdamW on it, and the trained encoder and decoder are
 * written into a pipeline folder as `vae_encoder/` and `vae_decoder/` (optimum layout), where
 * runtime/text-to-image's encode and decode read them. Everything is a function of the seed.
 *
 * The loss: mean((x̂ − x)²) + klWeight · mean(KL(q(z|x) ‖ N(0, 1))), z sampled in the graph from
 * the encoder's mean and logvar. z is sampled because the runtime's encode samples it (diffusers'
 * DiagonalGaussianDistribution): trained on z = mean, logvar would stay at its random init and the
 * runtime's sampled noise would spoil every encode. The KL term keeps the latents' scale in check
 * for the UNet that will diffuse them; it is kept small (1e-5 per element against the per-pixel
 * MSE) so that it costs little reconstruction (the seed-0 run ends with KL 6.4 per element,
 * latent std 2.3).
 *
 * Measured (tests/bench/train-vae.ts, seed 0, 12000 steps of 8, 1621 s on 2 cores shared with
 * other runs): MSE 0.52 -> 0.0035; on 100 held-out scenes decode(encode()) reads background 100%,
 * object color 100%, object kind 82% (the drawn originals: 97%). 10 of the first 12 kind misses
 * are stars (9 small) whose points blur into a blob read as a circle. 3000 steps gave 48% (KL
 * weight 1e-4), 8000 steps 65%.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import * as ort from 'onnxruntime-node';
import { replaceFolder, writeFileAtomic } from '../../compiler/atomic-files';
import { HollowcError } from '../../compiler/errors';
import { loadModel } from '../../compiler/serde';
import { buildAutoencoder, buildVaeGraph, LATENT_NOISE, RECONSTRUCTION } from '../../models/builder/vae';
import { buildPipeline } from '../../models/builder/pipeline';
import { VirtualWeightSink } from '../../models/builder/weights';
import { DIFFUSERS_VERSION } from '../../models/pipeline-families';
import { Rng, fillNormal } from '../../models/random';
import { VAE_SD15_TINY, VaeConfig, vaeParameterCount, vaeScaleFactor } from '../../models/vae-config';
import { Scene, drawScene, sampleScene } from '../../models/world';
import { compileGraph } from '../../passes/compile-graph';
import { GraphStep, trainGraph, writeTrainedExport } from '../../runtime/train/graph-train';
import type { ParamState } from '../../runtime/train/checkpoint';
import type { GraphTrainingManifest } from '../../compiler/manifest';

/**
 * The world's VAE: SD's blocks (resnets, mid-block attention, 4 latent channels) at widths that
 * train in minutes on 2 cores, on 32 px images. Three blocks, so a factor of 4: the latents are
 * 8 x 8, as SD's factor 8 gives on 64 px images, at a quarter of the pixels to train on.
 */
export const WORLD_VAE: VaeConfig = {
  ...VAE_SD15_TINY,
  down_block_types: ['DownEncoderBlock2D', 'DownEncoderBlock2D', 'DownEncoderBlock2D'],
  up_block_types: ['UpDecoderBlock2D', 'UpDecoderBlock2D', 'UpDecoderBlock2D'],
  block_out_channels: [8, 16, 32],
  layers_per_block: 1,
  norm_num_groups: 8,
  sample_size: 32,
};

/** Training scenes use seeds 0, 1, ...; held-out scenes start here, so the two never share a seed. */
export const HELD_OUT_SEED = 1_000_000;

export interface TrainVaeOptions {
  /** Pipeline folder that gets `vae_encoder/` and `vae_decoder/` (a tiny SD 1.5 pipeline is built around them when it has no model_index.json). */
  out: string;
  /** Where the graph-training folder goes (default: a temporary folder, removed after). */
  work?: string;
  seed?: number;
  config?: VaeConfig;
  /** Image side in pixels (default the config's sample_size). */
  size?: number;
  steps?: number;
  batch?: number;
  /** Peak learning rate: linear warmup over `warmup` steps, cosine decay to a tenth at the end. */
  lr?: number;
  warmup?: number;
  klWeight?: number;
  /** Distinct training scenes, drawn once (default 2048). */
  scenes?: number;
  threads?: number;
  log?: (line: string) => void;
  onStep?: (s: GraphStep) => void;
}

export interface TrainVaeResult {
  pipeline: string;
  config: VaeConfig;
  parameters: number;
  log: GraphStep[];
  /** Seconds: drawing the scenes, compiling, training, writing. */
  seconds: { draw: number; compile: number; train: number; write: number };
  /** Standard deviation of the sampled latents of 256 training scenes; scaling_factor is its inverse. */
  latentStd: number;
}

/** An image's RGB bytes (HWC) as [3, S, S] floats in [-1, 1], written at `offset` of `out`. */
export function imageToChw(pixels: Uint8Array, size: number, out: Float32Array, offset = 0): void {
  const plane = size * size;
  for (let i = 0; i < plane; i++) for (let c = 0; c < 3; c++) out[offset + c * plane + i] = (pixels[i * 3 + c] / 255) * 2 - 1;
}

/** `scenes` drawn at `size`, as one [N, 3, S, S] batch in [-1, 1]. */
export async function drawScenes(scenes: readonly Scene[], size: number): Promise<Float32Array> {
  const plane = 3 * size * size;
  const out = new Float32Array(scenes.length * plane);
  for (let i = 0; i < scenes.length; i++) imageToChw(await drawScene(scenes[i], size), size, out, i * plane);
  return out;
}

function stopwatch(): () => number {
  const t = process.hrtime.bigint();
  return () => Number(process.hrtime.bigint() - t) / 1e9;
}

const json = (obj: unknown) => JSON.stringify(obj, null, 2) + '\n';

export async function trainVae(o: TrainVaeOptions): Promise<TrainVaeResult> {
  const seed = o.seed ?? 0;
  const config = o.config ?? WORLD_VAE;
  const size = o.size ?? config.sample_size;
  const f = vaeScaleFactor(config);
  if (size % f !== 0) throw new HollowcError(`image size ${size} is not a multiple of the VAE's factor ${f}`);
  const steps = o.steps ?? 12000;
  const batch = o.batch ?? 8;
  const peak = o.lr ?? 5e-3;
  const warmup = o.warmup ?? 50;
  const klWeight = o.klWeight ?? 1e-5;
  const log = o.log ?? (() => {});
  for (const [name, value] of [
    ['steps', steps],
    ['batch', batch],
    ['scenes', o.scenes ?? 1],
  ] as const)
    if (!(Number.isInteger(value) && value > 0)) throw new HollowcError(`trainVae: ${name} must be a positive integer, got ${value}`);
  if (!(peak > 0) || !(klWeight >= 0)) throw new HollowcError(`trainVae: lr must be > 0 and klWeight >= 0, got ${peak} and ${klWeight}`);
  // refused now rather than after the training: buildPipeline will not replace a folder that is not a pipeline
  if (fs.existsSync(o.out) && fs.readdirSync(o.out).length > 0 && !fs.existsSync(path.join(o.out, 'model_index.json')))
    throw new HollowcError('output folder exists and is not a pipeline folder (no model_index.json); refusing to replace it', o.out);
  const latent = [batch, config.latent_channels, size / f, size / f];

  let clock = stopwatch();
  const scenes = Array.from({ length: o.scenes ?? 2048 }, (_, i) => sampleScene(i));
  const images = await drawScenes(scenes, size);
  const draw = clock();
  log(`${scenes.length} training scenes drawn at ${size} px in ${draw.toFixed(1)} s`);

  const work = o.work ?? fs.mkdtempSync(path.join(os.tmpdir(), 'hollowc-vae-'));
  const built = path.join(work, 'autoencoder');
  const graph = path.join(work, 'graph');
  try {
    clock = stopwatch();
    buildAutoencoder(config, { outDir: built, seed });
    const metadata = { 'hollowc.vae_config': JSON.stringify(config) };
    compileGraph({
      model: loadModel(path.join(built, 'model.onnx')),
      label: `world VAE ${JSON.stringify(config.block_out_channels)}`,
      outDir: graph,
      shapes: { sample: [batch, 3, size, size], [LATENT_NOISE]: latent },
      loss: { prediction: RECONSTRUCTION, target: 'sample', kl: { output: 'latent_parameters', weight: klWeight } },
      exports: {
        vae_encoder: {
          model: buildVaeGraph(config, 'encoder', new VirtualWeightSink()).model,
          metadata: { ...metadata, 'hollowc.vae_part': 'encoder' },
        },
        vae_decoder: {
          model: buildVaeGraph(config, 'decoder', new VirtualWeightSink()).model,
          metadata: { ...metadata, 'hollowc.vae_part': 'decoder' },
        },
      },
      optimizer: { betas: [0.9, 0.999], eps: 1e-8, weightDecay: 0 },
      log,
    });
    const compile = clock();

    clock = stopwatch();
    const order = new Rng(seed, 'vae/batches');
    const noise = new Rng(seed, 'vae/noise');
    const plane = 3 * size * size;
    const lr = (t: number) =>
      t <= warmup ? (peak * t) / warmup : peak * (0.1 + 0.45 * (1 + Math.cos((Math.PI * (t - warmup)) / Math.max(1, steps - warmup))));
    const feeds = (): Record<string, ort.Tensor> => {
      const x = new Float32Array(batch * plane);
      for (let b = 0; b < batch; b++) {
        const i = order.next() % scenes.length;
        x.set(images.subarray(i * plane, (i + 1) * plane), b * plane);
      }
      const z = new Float32Array(latent.reduce((a, d) => a * d, 1));
      fillNormal(noise, z, 1);
      return { sample: new ort.Tensor('float32', x, [batch, 3, size, size]), [LATENT_NOISE]: new ort.Tensor('float32', z, latent) };
    };
    const run = await trainGraph({ dir: graph, steps, lr, feeds, intraOpThreads: o.threads, onStep: o.onStep });
    const train = clock();

    clock = stopwatch();
    const latentStd = await latentSpread(
      graph,
      run.manifest,
      run.params,
      images.subarray(0, Math.min(256, scenes.length) * plane),
      size,
      seed,
      o.threads,
    );
    const vaeJson = {
      ...config,
      sample_size: size,
      scaling_factor: Number((1 / latentStd).toPrecision(5)),
      _diffusers_version: DIFFUSERS_VERSION,
    };
    if (!fs.existsSync(path.join(o.out, 'model_index.json'))) await buildPipeline('sd15', 'tiny', o.out, { seed });
    for (const name of ['vae_encoder', 'vae_decoder']) {
      const tmp = fs.mkdtempSync(path.join(o.out, `.${name}-`));
      writeTrainedExport(graph, run.manifest, name, run.params, tmp);
      writeFileAtomic(path.join(tmp, 'config.json'), json(vaeJson));
      replaceFolder(tmp, path.join(o.out, name));
    }
    const write = clock();
    log(`trained VAE written to ${o.out} (scaling_factor ${vaeJson.scaling_factor})`);
    return {
      pipeline: o.out,
      config,
      parameters: vaeParameterCount(config),
      log: run.log,
      seconds: { draw, compile, train, write },
      latentStd,
    };
  } finally {
    if (!o.work) fs.rmSync(work, { recursive: true, force: true });
  }
}

/** The standard deviation of sampled latents z = mean + exp(logvar/2)·ε of `images`, with the trained encoder. */
async function latentSpread(
  graph: string,
  manifest: GraphTrainingManifest,
  params: readonly ParamState[],
  images: Float32Array,
  size: number,
  seed: number,
  threads?: number,
): Promise<number> {
  const dir = fs.mkdtempSync(path.join(graph, '.encoder-'));
  try {
    const file = writeTrainedExport(graph, manifest, 'vae_encoder', params, dir);
    const session = await ort.InferenceSession.create(file, threads ? { intraOpNumThreads: threads } : {});
    const n = images.length / (3 * size * size);
    const r = await session.run({ sample: new ort.Tensor('float32', images, [n, 3, size, size]) });
    await session.release();
    const p = r.latent_parameters.data as Float32Array;
    const [, c2, h, w] = r.latent_parameters.dims;
    const c = c2 / 2;
    const eps = new Float32Array(n * c * h * w);
    fillNormal(new Rng(seed, 'vae/spread'), eps, 1);
    let sum = 0;
    let sq = 0;
    for (let i = 0, k = 0; i < n; i++)
      for (let j = 0; j < c * h * w; j++, k++) {
        const logvar = Math.min(20, Math.max(-30, p[i * c2 * h * w + c * h * w + j]));
        const z = p[i * c2 * h * w + j] + Math.exp(0.5 * logvar) * eps[k];
        sum += z;
        sq += z * z;
      }
    const count = n * c * h * w;
    return Math.sqrt(sq / count - (sum / count) ** 2);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}
