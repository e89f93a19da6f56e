/**
 * `generate --model` as a library function: prompts in, PNG (or latents) out on a pipeline folder,
 * optionally through a compiled folder's two-path graph (`run`) or with a LoRA folded into the UNet.
 */
import * as fs from 'fs';
import * as path from 'path';
import { HollowcError } from '../../compiler/errors';
import { checkCompiledFrom } from '../../compiler/model-identity';
import { latentMultipleOfConfig, latentShapeProblem, sideProblem } from '../../models/latent-sizes';
import { loadManifest } from '../../runtime/ort/artifacts';
import { savePng } from '../../runtime/formats/images';
import { readLatentBatch, writeNpy } from '../../runtime/formats/npy';
import { PipelineFolder, openPipelineFolder } from '../../runtime/text-to-image/pipeline-folder';
import type { Conditioning } from '../../runtime/sampling/conditioning';
import { SchedulerName, TimestepSpacing } from '../../runtime/sampling/schedulers';
import { SessionOptions } from '../../runtime/ort/session';
import { storedClassConditioning } from '../../runtime/store/precompute';
import { TextToImageResult, defaultImageSize, latentChannels, textToImage, vaeScaleFactor } from '../../runtime/text-to-image/text-to-image';
import { PreparedUnet, prepareUnet } from './prepared-unet';

export interface PipelineGenerateOptions {
  /** The pipeline folder (optimum ONNX layout). */
  model: string;
  prompt: string;
  negativePrompt?: string;
  /** Default: the --init-latents' size, else the UNet's sample_size x the VAE's factor. */
  width?: number;
  height?: number;
  /** Default: as many as --init-latents holds, else 1. */
  numImages?: number;
  /** Starting noise (.npy [N, C, h, w], N(0, 1)) instead of the seed's. */
  initLatents?: string;
  /** PNG to write (several images: <name>-0.png, ...); latentsOut the latents (.npy). */
  output?: string;
  latentsOut?: string;
  /** A compiled folder whose two-path infer.onnx samples, its base path on `classPrompt` (default: its stored class embedding). */
  run?: string;
  classPrompt?: string;
  /** With `run`, for infer.onnx; alone, any UNet LoRA, folded into its layers. */
  lora?: string;
  steps: number;
  guidance: number;
  /** Undefined: the pipeline's scheduler config. */
  scheduler?: SchedulerName;
  spacing?: TimestepSpacing;
  seed: number;
  session: SessionOptions;
  /** After each sampling step: steps done, and the steps of the whole run. */
  onStep?: (done: number, total: number) => void;
}

export interface PipelineGenerateResult {
  /** The files written, in order. */
  written: string[];
  /** What was generated, how, and what was written: one line each. */
  summary: string[];
}

/** The class prompt of the compiled folder's store, for `generate` without --class-embeds. */
export function storeClassPrompt(dir: string, flag = '--class-embeds'): Conditioning {
  const c = storedClassConditioning(dir);
  if (!c) throw new HollowcError(`give ${flag} (the class prompt for the base path): this folder has no store to take it from`, dir);
  return c;
}

/** `image.png` -> `image-<i>.png` when several images are written. */
export function imageFileName(file: string, index: number, count: number): string {
  if (count === 1) return file;
  const ext = path.extname(file) || '.png';
  return `${file.slice(0, file.length - path.extname(file).length)}-${index}${ext}`;
}

/** The image (or --init-latents) size against what the pipeline's UNet takes, before any work: one line saying which sizes work. */
function checkUnetSizes(
  folder: PipelineFolder,
  o: PipelineGenerateOptions,
  initShape: number[] | undefined,
  size: { width: number; height: number },
): void {
  const multiple = latentMultipleOfConfig(folder.unet.config, path.join(folder.dir, 'unet', 'config.json'));
  if (multiple === undefined) return;
  const factor = vaeScaleFactor(folder);
  const problem = initShape
    ? latentShapeProblem('--init-latents', initShape, multiple)
    : (sideProblem(o.height !== undefined ? '--height' : 'height (unet sample_size)', size.height, multiple, factor) ??
      sideProblem(o.width !== undefined ? '--width' : 'width (unet sample_size)', size.width, multiple, factor));
  if (problem) throw new HollowcError(problem, initShape ? o.initLatents : undefined);
}

/** The image size and count, from the options, the starting noise and the pipeline's defaults. */
function imageSizes(folder: PipelineFolder, o: PipelineGenerateOptions) {
  const factor = vaeScaleFactor(folder);
  const init = o.initLatents ? readLatentBatch(o.initLatents) : undefined;
  const numImages = o.numImages ?? init?.shape[0] ?? 1;
  if (init && init.shape[0] !== numImages)
    throw new HollowcError(`--init-latents holds ${init.shape[0]} latents, --num-images asks for ${numImages}`, o.initLatents);
  const side = init ? undefined : defaultImageSize(folder);
  const width = o.width ?? (init ? init.shape[3] * factor : side!);
  const height = o.height ?? (init ? init.shape[2] * factor : side!);
  if (init && (init.shape[2] * factor !== height || init.shape[3] * factor !== width)) {
    throw new HollowcError(
      `--init-latents are ${init.shape[2]}x${init.shape[3]} latents (${init.shape[2] * factor}x${init.shape[3] * factor} px), not ${height}x${width} px`,
      o.initLatents,
    );
  }
  checkUnetSizes(folder, o, init?.shape, { width, height });
  return { factor, init, numImages, width, height };
}

type RunGraph = { out: string; lora?: string; classPrompt?: string; classConditioning?: Conditioning };

/** The compiled folder `run` names, checked to be compiled from this pipeline's UNet. */
function compiledRun(folder: PipelineFolder, o: PipelineGenerateOptions): RunGraph | undefined {
  if (!o.run) return undefined;
  const manifest = loadManifest(o.run);
  if (manifest.family !== folder.family)
    throw new HollowcError(`the compiled folder is ${manifest.family}, the pipeline folder ${folder.family}`, o.run);
  checkCompiledFrom(manifest, folder.unet.model, { folder: `--run ${o.run}`, model: `--model ${o.model}` });
  return {
    out: o.run,
    lora: o.lora,
    classPrompt: o.classPrompt,
    classConditioning: o.classPrompt === undefined ? storeClassPrompt(o.run, '--class-prompt') : undefined,
  };
}

async function writeOutputs(o: PipelineGenerateOptions, r: TextToImageResult, numImages: number): Promise<string[]> {
  const written: string[] = [];
  if (o.output && r.images) {
    fs.mkdirSync(path.dirname(path.resolve(o.output)), { recursive: true });
    for (let i = 0; i < numImages; i++) {
      const file = imageFileName(o.output, i, numImages);
      await savePng(file, r.images.data, r.images.dims, i);
      written.push(file);
    }
  }
  if (o.latentsOut) {
    fs.mkdirSync(path.dirname(path.resolve(o.latentsOut)), { recursive: true });
    writeNpy(o.latentsOut, { dtype: 'float32', shape: r.latents.shape, data: r.latents.data });
    written.push(o.latentsOut);
  }
  return written;
}

function summaryLines(
  o: PipelineGenerateOptions,
  folder: PipelineFolder,
  r: TextToImageResult,
  size: { numImages: number; width: number; height: number },
  prepared: PreparedUnet | undefined,
  written: readonly string[],
): string[] {
  const { numImages, width, height } = size;
  const lines = [
    `generated ${numImages} image${numImages > 1 ? 's' : ''} ${width}x${height} with ${r.scheduler} (${folder.scheduler.className} config, ${r.prediction}), ${o.steps} steps, guidance ${o.guidance}, seed ${o.seed} in ${r.seconds.toFixed(1)} s (${folder.family})`,
  ];
  if (prepared?.lora)
    lines.push(
      `  LoRA: ${o.lora} (${prepared.lora.format}) folded into ${prepared.lora.folded.length} layers${prepared.lora.ignored ? `, ${prepared.lora.ignored} text-encoder layers ignored` : ''}`,
    );
  if (prepared?.attention.chunked)
    lines.push(`  UNet: ${prepared.attention.chunked} attention maps computed in ${prepared.attention.blocks} blocks of query rows`);
  if (o.run)
    lines.push(
      `  UNet: ${o.run} two-path infer.onnx, LoRA ${r.loraSource}; base path: ${o.classPrompt !== undefined ? JSON.stringify(o.classPrompt) : 'the stored class embedding'}`,
    );
  lines.push(`  wrote ${written.join(', ')}`);
  return lines;
}

export async function generateFromPipeline(o: PipelineGenerateOptions): Promise<PipelineGenerateResult> {
  const folder = openPipelineFolder(o.model);
  const { factor, init, numImages, width, height } = imageSizes(folder, o);
  const run = compiledRun(folder, o);
  // The two-path graphs of a compiled folder (--run) have their attention in blocks already.
  const warnings: string[] = [];
  const prepared = o.run
    ? undefined
    : prepareUnet(folder.unet.model, {
        loraFile: o.lora,
        run: { batch: (o.guidance > 1 ? 2 : 1) * numImages, channels: latentChannels(folder), height: height / factor, width: width / factor },
        warn: (line) => warnings.push(`  warning: ${line}`),
      });
  try {
    const r = await textToImage({
      folder,
      prompt: o.prompt,
      negativePrompt: o.negativePrompt,
      width,
      height,
      steps: o.steps,
      guidance: o.guidance,
      scheduler: o.scheduler,
      spacing: o.spacing,
      seed: o.seed,
      numImages,
      initLatents: init?.data,
      unetModel: prepared?.model,
      run,
      decode: !!o.output,
      session: o.session,
      onStep: (i, steps) => o.onStep?.(Math.min(i, steps), steps * (run ? numImages : 1)),
    });
    const written = await writeOutputs(o, r, numImages);
    return { written, summary: [...summaryLines(o, folder, r, { numImages, width, height }, prepared, written), ...warnings] };
  } finally {
    prepared?.cleanup();
  }
}
