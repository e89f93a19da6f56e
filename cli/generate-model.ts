/** `hollowc generate --model <pipeline folder>`: prompts in, PNG (or latents) out, optionally through a compiled folder's two-path graph. */
import * as fs from 'fs';
import * as path from 'path';
import { HollowcError } from '../compiler/errors';
import { checkCompiledFrom } from '../compiler/model-identity';
import { latentMultipleOfConfig, latentShapeProblem, sideProblem } from '../models/latent-sizes';
import { loadManifest } from '../runtime/ort/artifacts';
import { savePng } from '../runtime/formats/images';
import { readLatentBatch, writeNpy } from '../runtime/formats/npy';
import { PipelineFolder, openPipelineFolder } from '../runtime/text-to-image/pipeline-folder';
import { ProgressLine } from '../runtime/progress';
import type { Conditioning } from '../runtime/sampling/conditioning';
import { defaultImageSize, textToImage, vaeScaleFactor } from '../runtime/text-to-image/text-to-image';
import { prepareUnet } from './prepared-unet';
import { TuningCli, flagName, out, tuning } from './options';
import { SchedulerName, TimestepSpacing } from '../runtime/sampling/schedulers';
import { ExecutionProvider } from '../runtime/ort/session';
import { storedClassConditioning } from '../runtime/store/precompute';

export interface GenerateCli extends TuningCli {
  promptEmbeds?: string;
  classEmbeds?: string;
  negativeEmbeds?: string;
  steps: number;
  guidance: number;
  scheduler: SchedulerName;
  spacing: TimestepSpacing;
  seed: number;
  latentsOut?: string;
  latentsIn?: string;
  model?: string;
  prompt?: string;
  negativePrompt?: string;
  width?: number;
  height?: number;
  numImages?: number;
  initLatents?: string;
  output?: string;
  run?: string;
  classPrompt?: string;
  latentSize?: number[];
  lora?: string;
  baked?: string;
  ep: ExecutionProvider;
  cpuFallback?: boolean;
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
function checkUnetSizes(folder: PipelineFolder, o: GenerateCli, initShape: number[] | undefined, size: { width: number; height: number }): void {
  const multiple = latentMultipleOfConfig(folder.unet.config, path.join(folder.dir, 'unet', 'config.json'));
  if (multiple === undefined) return;
  const factor = vaeScaleFactor(folder);
  const problem = initShape
    ? latentShapeProblem('--init-latents', initShape, multiple)
    : (sideProblem(o.height !== undefined ? '--height' : 'height (unet sample_size)', size.height, multiple, factor) ??
      sideProblem(o.width !== undefined ? '--width' : 'width (unet sample_size)', size.width, multiple, factor));
  if (problem) throw new HollowcError(problem, initShape ? o.initLatents : undefined);
}

export async function generateFromPipeline(dir: string | undefined, o: GenerateCli, explicit: (name: string) => boolean): Promise<void> {
  if (dir)
    throw new HollowcError(`with --model, give the compiled folder as --run ${dir} (or drop --model to sample latents from embeddings)`);
  const embeddingsOnly = ['promptEmbeds', 'classEmbeds', 'negativeEmbeds', 'latentsIn', 'latentSize', 'baked'].filter(explicit);
  if (embeddingsOnly.length) {
    const hint: Record<string, string> = {
      promptEmbeds: '--prompt',
      classEmbeds: '--class-prompt',
      negativeEmbeds: '--negative-prompt',
      latentsIn: '--init-latents',
      latentSize: '--width/--height',
    };
    throw new HollowcError(
      `${flagName(embeddingsOnly[0])} is for generate <out> (embeddings); with --model use ${hint[embeddingsOnly[0]] ?? '--lora'}`,
    );
  }
  if (o.prompt === undefined) throw new HollowcError('generate --model needs --prompt "..."');
  if (o.classPrompt !== undefined && !o.run)
    throw new HollowcError("--class-prompt is the base path's prompt of --run <out>: give --run too");
  if (!o.output && !o.latentsOut) throw new HollowcError('give -o image.png (and/or --latents-out latents.npy)');
  const folder = openPipelineFolder(o.model!);
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
  let run: { out: string; lora?: string; classPrompt?: string; classConditioning?: Conditioning } | undefined;
  if (o.run) {
    const manifest = loadManifest(o.run);
    if (manifest.family !== folder.family)
      throw new HollowcError(`the compiled folder is ${manifest.family}, the pipeline folder ${folder.family}`, o.run);
    checkCompiledFrom(manifest, folder.unet.model, { folder: `--run ${o.run}`, model: `--model ${o.model}` });
    run = {
      out: o.run,
      lora: o.lora,
      classPrompt: o.classPrompt,
      classConditioning: o.classPrompt === undefined ? storeClassPrompt(o.run, '--class-prompt') : undefined,
    };
  }
  // The two-path graphs of a compiled folder (--run) have their attention in blocks already.
  const prepared = o.run
    ? undefined
    : prepareUnet(folder.unet.model, {
        loraFile: o.lora,
        run: { batch: (o.guidance > 1 ? 2 : 1) * numImages, height: height / factor, width: width / factor },
      });
  let progress: ProgressLine | undefined;
  try {
    const r = await textToImage({
      folder,
      prompt: o.prompt,
      negativePrompt: o.negativePrompt,
      width,
      height,
      steps: o.steps,
      guidance: o.guidance,
      scheduler: explicit('scheduler') ? o.scheduler : undefined,
      spacing: explicit('spacing') ? o.spacing : undefined,
      seed: o.seed,
      numImages,
      initLatents: init?.data,
      unetModel: prepared?.model,
      run,
      decode: !!o.output,
      session: { ep: o.ep, fallbackToCpu: o.cpuFallback, ...tuning(o) },
      onStep: (i, steps) => {
        progress ??= new ProgressLine('step', steps * (run ? numImages : 1), process.stderr);
        progress.update(Math.min(i, steps));
      },
    }).finally(() => progress?.finish());
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
    out(
      `generated ${numImages} image${numImages > 1 ? 's' : ''} ${width}x${height} with ${r.scheduler} (${folder.scheduler.className} config, ${r.prediction}), ${o.steps} steps, guidance ${o.guidance}, seed ${o.seed} in ${r.seconds.toFixed(1)} s (${folder.family})`,
    );
    if (prepared?.lora)
      out(
        `  LoRA: ${o.lora} (${prepared.lora.format}) folded into ${prepared.lora.folded.length} layers${prepared.lora.ignored ? `, ${prepared.lora.ignored} text-encoder layers ignored` : ''}`,
      );
    if (prepared?.attention.chunked)
      out(`  UNet: ${prepared.attention.chunked} attention maps computed in ${prepared.attention.blocks} blocks of query rows`);
    if (run)
      out(
        `  UNet: ${o.run} two-path infer.onnx, LoRA ${r.loraSource}; base path: ${o.classPrompt !== undefined ? JSON.stringify(o.classPrompt) : 'the stored class embedding'}`,
      );
    out(`  wrote ${written.join(', ')}`);
  } finally {
    prepared?.cleanup();
  }
}
