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
import { CompileManifest } from '../compiler/manifest';
import { latentShapeProblem } from '../models/latent-sizes';
import { loadManifest } from '../runtime/ort/artifacts';
import { readLatentBatch, writeNpy } from '../runtime/formats/npy';
import { progressFromFirstUpdate } from '../runtime/progress';
import { generate } from '../runtime/sampling/two-path';
import { SCHEDULERS } from '../runtime/sampling/schedulers';
import { readConditioning } from '../runtime/store/training-data';
import { storeClassPrompt } from './api/generate-pipeline';
import { GenerateCli, generateWithModel } from './generate-model';
import { flagName, out, parseCount, parseNumber, parseSeed, parseSize, sessionOptions, tuning } from './options';

/** Before any work (a size the UNet cannot take fails deep in onnxruntime): one line saying which sizes work. */
function checkLatentSizes(manifest: CompileManifest, shapes: Record<string, number[] | undefined>): void {
  const multiple = manifest.model.latentMultiple;
  if (multiple === undefined) return;
  for (const [flag, shape] of Object.entries(shapes)) {
    const problem = shape && latentShapeProblem(flag, shape, multiple);
    if (problem) throw new HollowcError(problem);
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
    if (o.model) return generateWithModel(dir, o, explicit);
    return generateFromCompiled(dir, o, explicit);
  });
}

/** `generate <out>`: embeddings in, latents out through the compiled folder's two-path infer.onnx. */
async function generateFromCompiled(dir: string | undefined, o: GenerateCli, explicit: (name: string) => boolean): Promise<void> {
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
  const noise = o.latentsIn ? readLatentBatch(o.latentsIn) : undefined;
  const initialNoise = noise?.data;
  checkLatentSizes(manifest, { '--latent-size': latentShape, '--latents-in': noise?.shape });
  const progress = progressFromFirstUpdate('step');
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
      progress.update(i, o.steps);
    },
  }).finally(() => progress.finish());
  fs.mkdirSync(path.dirname(path.resolve(latentsOut)), { recursive: true });
  writeNpy(latentsOut, { dtype: 'float32', shape: r.shape, data: r.latents });
  out(
    `generated [${r.shape.join(', ')}] latents with ${o.scheduler}, ${o.steps} steps, guidance ${o.guidance}, seed ${o.seed} in ${r.seconds.toFixed(1)} s (${manifest.family}${negative ? '' : ', zero negative embeddings'})`,
  );
  out(`  LoRA: ${r.loraSource}`);
  out(`  latents: ${latentsOut} (decode with the VAE after dividing by its scaling factor)`);
}
