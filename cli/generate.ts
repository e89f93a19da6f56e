/** `hollowc generate`: latents from the two-path infer.onnx with classifier-free guidance. */
import * as fs from 'fs';
import * as path from 'path';
import { Command, Option } from 'commander';
import { HollowcError } from '../compiler/errors';
import { loadManifest } from '../runtime/artifacts';
import { readNpy, writeNpy } from '../runtime/npy';
import { CLASS_COND } from '../runtime/precompute';
import { ProgressLine } from '../runtime/progress';
import { generate } from '../runtime/sample';
import { SCHEDULERS, SchedulerName, TimestepSpacing } from '../runtime/schedulers';
import { ExecutionProvider } from '../runtime/session';
import { Conditioning, Store } from '../runtime/store';
import { readConditioning } from '../runtime/training-data';
import { TuningCli, out, parseCount, parseNumber, parseSeed, parseSize, sessionOptions, tuning } from './options';

interface GenerateCli extends TuningCli {
  promptEmbeds: string;
  classEmbeds?: string;
  negativeEmbeds?: string;
  steps: number;
  guidance: number;
  scheduler: SchedulerName;
  spacing: TimestepSpacing;
  seed: number;
  latentsOut: string;
  latentsIn?: string;
  latentSize?: number[];
  lora?: string;
  baked?: string;
  ep: ExecutionProvider;
  cpuFallback?: boolean;
}

/** The class prompt of the folder's store, for `generate` without --class-embeds. */
function storeClassPrompt(dir: string, storeDir?: string): Conditioning {
  const where = storeDir ?? path.join(dir, 'store');
  if (!Store.exists(where)) throw new HollowcError('give --class-embeds (the class prompt for the base path): this folder has no store to take it from', dir);
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
    .description('sample latents with the two-path infer.onnx and classifier-free guidance')
    .argument('<out>', 'a compiled folder')
    .requiredOption('--prompt-embeds <file>', 'personalized prompt embeddings ("a photo of sks dog"), .npy or .safetensors')
    .option('--class-embeds <file>', "class prompt embeddings for the base path (default: the store's class prompt)")
    .option('--negative-embeds <file>', 'negative / empty prompt embeddings for the unconditional row (default: zeros)')
    .option('--steps <n>', 'sampling steps', parseCount, 30)
    .option('--guidance <x>', 'classifier-free guidance scale (1 = no guidance)', parseNumber, 7.5)
    .addOption(new Option('--scheduler <name>', 'sampler').choices(SCHEDULERS as string[]).default('ddim'))
    .addOption(new Option('--spacing <kind>', 'timestep spacing (diffusers timestep_spacing)').choices(['leading', 'linspace', 'trailing']).default('leading'))
    .option('--seed <n>', 'noise seed', parseSeed, 0)
    .requiredOption('--latents-out <file>', 'where to write the latents (.npy [1, C, h, w])')
    .option('--latents-in <file>', 'starting noise (.npy, N(0, 1)) instead of the seed')
    .option('--latent-size <HxW>', 'latent size (default: the training shape)', parseSize)
    .option('--lora <file>', 'LoRA to apply (default <out>/lora.safetensors, else the untrained lora-init)')
    .option('--baked <file>', 'a baked infer model (hollowc bake) instead of infer.onnx + LoRA');
  sessionOptions(command).action(async (dir: string, o: GenerateCli) => {
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
          progress ??= new ProgressLine('step', o.steps, process.stderr, undefined, i - 1);
          progress.update(i);
        },
      }).finally(() => progress?.finish());
      fs.mkdirSync(path.dirname(path.resolve(o.latentsOut)), { recursive: true });
      writeNpy(o.latentsOut, { dtype: 'float32', shape: r.shape, data: r.latents });
      out(`generated [${r.shape.join(', ')}] latents with ${o.scheduler}, ${o.steps} steps, guidance ${o.guidance}, seed ${o.seed} in ${r.seconds.toFixed(1)} s (${manifest.family}${negative ? '' : ', zero negative embeddings'})`);
      out(`  LoRA: ${r.loraSource}`);
      out(`  latents: ${o.latentsOut} (decode with the VAE after dividing by its scaling factor)`);
    });
}
