/**
 * `hollowc generate`: one command, two modes.
 *   generate <out> --prompt-embeds e.npy ...      latents from a compiled folder's two-path infer.onnx
 *   generate --model pipeline/ --prompt "..."     text to PNG on a pipeline folder (optimum layout),
 *                                                 optionally with --lora (folded into the UNet) or
 *                                                 --run <out> (the compiled two-path infer.onnx)
 */
import * as fs from 'fs';
import * as path from 'path';
import { Command, Option } from 'commander';
import { HollowcError } from '../compiler/errors';
import { loadManifest } from '../runtime/ort/artifacts';
import { savePng } from '../runtime/formats/images';
import { readNpy, writeNpy } from '../runtime/formats/npy';
import { openPipelineFolder } from '../runtime/text-to-image/pipeline-folder';
import { CLASS_COND } from '../runtime/store/precompute';
import { ProgressLine } from '../runtime/progress';
import { generate } from '../runtime/sampling/two-path';
import { SCHEDULERS, SchedulerName, TimestepSpacing } from '../runtime/sampling/schedulers';
import { ExecutionProvider } from '../runtime/ort/session';
import { Conditioning, Store } from '../runtime/store/store';
import { defaultImageSize, textToImage, vaeScaleFactor } from '../runtime/text-to-image/text-to-image';
import { readConditioning } from '../runtime/store/training-data';
import { foldLoraIntoUnet } from './lora-unet';
import { TuningCli, out, parseCount, parseNumber, parseSeed, parseSize, sessionOptions, tuning } from './options';

interface GenerateCli extends TuningCli {
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

/** The class prompt of the folder's store, for `generate` without --class-embeds. */
function storeClassPrompt(dir: string, storeDir?: string, flag = '--class-embeds'): Conditioning {
  const where = storeDir ?? path.join(dir, 'store');
  if (!Store.exists(where))
    throw new HollowcError(`give ${flag} (the class prompt for the base path): this folder has no store to take it from`, dir);
  const { store } = Store.open(where, { readOnly: true });
  try {
    return store.conditioning(CLASS_COND);
  } finally {
    store.close();
  }
}

export function registerGenerate(program: Command): void {
  const command = program
    .command('generate')
    .description("text to image on a pipeline folder (--model), or latents from a compiled folder's two-path infer.onnx (<out>)")
    .argument('[out]', 'a compiled folder (embeddings in, latents out); not with --model')
    .option('--model <folder>', 'a pipeline folder (optimum ONNX layout): prompts in, PNG out')
    .option('--prompt <text>', '--model: the prompt')
    .option('--negative-prompt <text>', '--model: the unconditional row\'s prompt (default "", zeros for SDXL)')
    .option('--width <px>', '--model: image width (default unet sample_size x 8)', parseCount)
    .option('--height <px>', '--model: image height', parseCount)
    .option('--num-images <n>', '--model: images per prompt', parseCount)
    .option('--init-latents <file>', "--model: starting noise (.npy [N, C, h, w], N(0, 1)) instead of the seed's")
    .option('-o, --output <file>', '--model: PNG to write (several images: <name>-0.png, <name>-1.png, ...)')
    .option('--run <out>', "--model: sample with this compiled folder's two-path infer.onnx (base path on the class prompt)")
    .option('--class-prompt <text>', "--run: the class prompt for the base path (default: the run's stored class embedding)")
    .option('--prompt-embeds <file>', '<out>: personalized prompt embeddings ("a photo of sks dog"), .npy or .safetensors')
    .option('--class-embeds <file>', "class prompt embeddings for the base path (default: the store's class prompt)")
    .option('--negative-embeds <file>', 'negative / empty prompt embeddings for the unconditional row (default: zeros)')
    .option('--steps <n>', 'sampling steps', parseCount, 30)
    .option('--guidance <x>', 'classifier-free guidance scale (1 = no guidance)', parseNumber, 7.5)
    .addOption(new Option('--scheduler <name>', 'sampler').choices(SCHEDULERS as string[]).default('ddim'))
    .addOption(
      new Option('--spacing <kind>', 'timestep spacing (diffusers timestep_spacing)')
        .choices(['leading', 'linspace', 'trailing'])
        .default('leading'),
    )
    .option('--seed <n>', 'noise seed', parseSeed, 0)
    .option('--latents-out <file>', 'where to write the latents (.npy [N, C, h, w])')
    .option('--latents-in <file>', 'starting noise (.npy, N(0, 1)) instead of the seed')
    .option('--latent-size <HxW>', 'latent size (default: the training shape)', parseSize)
    .option(
      '--lora <file>',
      'LoRA to apply: <out> and --run: for infer.onnx (default <out>/lora.safetensors, else lora-init); --model alone: any peft/diffusers/kohya UNet LoRA, folded into its layers',
    )
    .option('--baked <file>', 'a baked infer model (hollowc bake) instead of infer.onnx + LoRA');
  sessionOptions(command).action(async (dir: string | undefined, o: GenerateCli) => {
    const explicit = (name: string) => command.getOptionValueSource(name) !== 'default' && command.getOptionValue(name) !== undefined;
    if (o.model) return generateFromPipeline(dir, o, explicit);
    const pipelineOnly = ['prompt', 'negativePrompt', 'width', 'height', 'numImages', 'initLatents', 'output', 'run', 'classPrompt'].filter(
      explicit,
    );
    if (pipelineOnly.length)
      throw new HollowcError(
        `${flagName(pipelineOnly[0])} needs --model <pipeline folder>${pipelineOnly[0] === 'initLatents' ? ' (with <out>, give --latents-in)' : ''}`,
      );
    if (!dir)
      throw new HollowcError(
        'give a compiled folder (generate <out> --prompt-embeds ...) or a pipeline folder (generate --model <folder> --prompt ...)',
      );
    if (!o.promptEmbeds) throw new HollowcError('generate <out> needs --prompt-embeds (or use --model <pipeline folder> --prompt "...")');
    if (!o.latentsOut) throw new HollowcError('generate <out> needs --latents-out <file.npy>');
    const latentsOut = o.latentsOut;
    if (o.lora && o.baked) throw new HollowcError('give --lora or --baked, not both (a baked model has its LoRA folded in)');
    const manifest = loadManifest(dir);
    const prompt = readConditioning(o.promptEmbeds);
    const classPrompt = o.classEmbeds ? readConditioning(o.classEmbeds) : storeClassPrompt(dir);
    const negative = o.negativeEmbeds ? readConditioning(o.negativeEmbeds) : undefined;
    const latentShape = o.latentSize ? [4, ...o.latentSize] : undefined;
    const initialNoise = o.latentsIn ? (readNpy(o.latentsIn).data as Float32Array) : undefined;
    let progress: ProgressLine | undefined;
    const r = await generate({
      out: dir,
      prompt,
      classPrompt,
      negative,
      steps: o.steps,
      guidance: o.guidance,
      scheduler: o.scheduler,
      spacing: o.spacing,
      seed: o.seed,
      latentShape,
      initialNoise: initialNoise && Float32Array.from(initialNoise),
      lora: o.lora,
      baked: o.baked,
      ep: o.ep,
      fallbackToCpu: o.cpuFallback,
      session: tuning(o),
      onStep: (i) => {
        progress ??= new ProgressLine('step', o.steps, process.stderr, i - 1);
        progress.update(i);
      },
    }).finally(() => progress?.finish());
    fs.mkdirSync(path.dirname(path.resolve(latentsOut)), { recursive: true });
    writeNpy(latentsOut, { dtype: 'float32', shape: r.shape, data: r.latents });
    out(
      `generated [${r.shape.join(', ')}] latents with ${o.scheduler}, ${o.steps} steps, guidance ${o.guidance}, seed ${o.seed} in ${r.seconds.toFixed(1)} s (${manifest.family}${negative ? '' : ', zero negative embeddings'})`,
    );
    out(`  LoRA: ${r.loraSource}`);
    out(`  latents: ${latentsOut} (decode with the VAE after dividing by its scaling factor)`);
  });
}

const flagName = (key: string) => `--${key.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`;

/** `image.png` -> `image-<i>.png` when several images are written. */
export function imageFileName(file: string, index: number, count: number): string {
  if (count === 1) return file;
  const ext = path.extname(file) || '.png';
  return `${file.slice(0, file.length - path.extname(file).length)}-${index}${ext}`;
}

async function generateFromPipeline(dir: string | undefined, o: GenerateCli, explicit: (name: string) => boolean): Promise<void> {
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
  let init: { data: Float32Array; shape: number[] } | undefined;
  if (o.initLatents) {
    const a = readNpy(o.initLatents);
    const data = a.data instanceof Float32Array ? a.data : a.data instanceof Float64Array ? Float32Array.from(a.data) : undefined;
    if (!data) throw new HollowcError(`expected float32 or float64 latents, found ${a.dtype}`, o.initLatents);
    const shape = a.shape.length === 3 ? [1, ...a.shape] : a.shape;
    if (shape.length !== 4) throw new HollowcError(`latents must be [N, C, h, w] or [C, h, w], found [${a.shape}]`, o.initLatents);
    init = { data, shape };
  }
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
  let run: { out: string; lora?: string; classPrompt?: string; classConditioning?: Conditioning } | undefined;
  if (o.run) {
    const manifest = loadManifest(o.run);
    if (manifest.family !== folder.family)
      throw new HollowcError(`the compiled folder is ${manifest.family}, the pipeline folder ${folder.family}`, o.run);
    run = {
      out: o.run,
      lora: o.lora,
      classPrompt: o.classPrompt,
      classConditioning: o.classPrompt === undefined ? storeClassPrompt(o.run, undefined, '--class-prompt') : undefined,
    };
  }
  const folded = o.lora && !o.run ? foldLoraIntoUnet(folder.unet.model, o.lora) : undefined;
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
      unetModel: folded?.model,
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
    if (folded)
      out(
        `  LoRA: ${o.lora} (${folded.format}) folded into ${folded.folded.length} layers${folded.ignored ? `, ${folded.ignored} text-encoder layers ignored` : ''}`,
      );
    if (run)
      out(
        `  UNet: ${o.run} two-path infer.onnx, LoRA ${r.loraSource}; base path: ${o.classPrompt !== undefined ? JSON.stringify(o.classPrompt) : 'the stored class embedding'}`,
      );
    out(`  wrote ${written.join(', ')}`);
  } finally {
    folded?.cleanup();
  }
}
