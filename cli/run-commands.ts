/**
 * The runtime commands: `hollowc precompute`, `train`, `generate`, `export-lora` (and `demo`,
 * cli/demo.ts). Each is a thin wrapper over runtime/: parse options, call the library, print.
 */
import * as fs from 'fs';
import * as path from 'path';
import { Command, InvalidArgumentError, Option } from 'commander';
import { HollowcError } from '../compiler/errors';
import { loadManifest } from '../runtime/artifacts';
import { exportLora } from '../runtime/export-lora';
import { LoraFormat } from '../runtime/lora-file';
import { readNpy, writeNpy } from '../runtime/npy';
import { precompute } from '../runtime/precompute';
import { ProgressLine, formatBytes, formatDuration } from '../runtime/progress';
import { generate } from '../runtime/sample';
import { SCHEDULERS, SchedulerName, TimestepSpacing } from '../runtime/schedulers';
import { ExecutionProvider, SessionTuning } from '../runtime/session';
import { Conditioning, Store } from '../runtime/store';
import { CLASS_COND } from '../runtime/precompute';
import { train } from '../runtime/train';
import { loadTrainingData, readConditioning } from '../runtime/training-data';
import { registerDemo } from './demo';

const EPS: ExecutionProvider[] = ['cpu', 'cuda', 'webgpu', 'tensorrt', 'dml', 'coreml'];

export function parseCount(text: string): number {
  const n = /^\d+$/.test(text.trim()) ? Number(text) : NaN;
  if (!Number.isSafeInteger(n) || n <= 0) throw new InvalidArgumentError(`expected a positive integer, got ${JSON.stringify(text)}`);
  return n;
}

export function parseSeed(text: string): number {
  const n = /^\d+$/.test(text.trim()) ? Number(text) : NaN;
  if (!Number.isSafeInteger(n) || n > 0xffffffff) throw new InvalidArgumentError(`expected an integer in 0..4294967295, got ${JSON.stringify(text)}`);
  return n;
}

export function parseNumber(text: string): number {
  const n = Number(text);
  if (text.trim() === '' || !Number.isFinite(n)) throw new InvalidArgumentError(`expected a number, got ${JSON.stringify(text)}`);
  return n;
}

function parseSize(text: string): number[] {
  const m = /^(\d+)x(\d+)$/.exec(text.trim());
  if (!m) throw new InvalidArgumentError(`expected HxW in latent pixels (e.g. 64x64), got ${JSON.stringify(text)}`);
  return [Number(m[1]), Number(m[2])];
}

const epOption = () => new Option('--ep <provider>', 'onnxruntime execution provider').choices(EPS).default('cpu');
const fallbackOption = () => new Option('--cpu-fallback', 'run on the CPU (with a warning) when the provider cannot start');

const threadsOption = () => new Option('--threads <n>', 'onnxruntime intra-op threads (default: onnxruntime\'s choice)').argParser(parseCount);
const graphOptOption = () => new Option('--graph-opt <level>', 'onnxruntime graph optimization (default: basic for training graphs, all otherwise)').choices(['disabled', 'basic', 'extended', 'all']);

interface TuningCli {
  threads?: number;
  graphOpt?: SessionTuning['optimization'];
}

const tuning = (o: TuningCli): SessionTuning => ({ intraOpThreads: o.threads, optimization: o.graphOpt });

const out = (line: string) => process.stdout.write(`${line}\n`);

interface PrecomputeCli extends TuningCli {
  data: string;
  count: number;
  instancePrompt?: string;
  classPrompt?: string;
  classLatents?: string;
  timeIds?: string;
  seed?: number;
  store?: string;
  ep: ExecutionProvider;
  cpuFallback?: boolean;
}

interface TrainCli extends TuningCli {
  steps?: number;
  resume?: boolean;
  restart?: boolean;
  checkpointEvery?: number;
  lr?: number;
  seed?: number;
  store?: string;
  ep: ExecutionProvider;
  cpuFallback?: boolean;
}

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

export function registerRuntimeCommands(program: Command): void {
  program
    .command('precompute')
    .description('run precompute.onnx (base UNet up to the hollow activation) over latents into the training store')
    .argument('<out>', 'a compiled folder')
    .requiredOption('--data <path>', 'data folder (latents/*.npy, instance_prompt.npy, class_prompt.npy, optional class_latents/) or one latents batch file')
    .option('--count <n>', 'records the store should hold (instance and class samples together)', parseCount, 200)
    .option('--instance-prompt <file>', 'instance prompt embeddings (.npy [T, D] or .safetensors)')
    .option('--class-prompt <file>', 'class prompt embeddings (.npy [T, D] or .safetensors)')
    .option('--class-latents <path>', 'prior-preservation latents (folder of .npy or one batch file)')
    .option('--time-ids <file>', 'SDXL time_ids (.npy, 6 values)')
    .option('--seed <n>', "noise and timestep seed (default: the spec's seed)", parseSeed)
    .option('--store <dir>', 'store folder (default <out>/store)')
    .addOption(epOption())
    .addOption(fallbackOption())
    .addOption(threadsOption())
    .addOption(graphOptOption())
    .action(async (dir: string, o: PrecomputeCli) => {
      const data = loadTrainingData(o.data, { instancePrompt: o.instancePrompt, classPrompt: o.classPrompt, classLatents: o.classLatents, timeIds: o.timeIds });
      let progress: ProgressLine | undefined;
      const r = await precompute({
        out: dir,
        data,
        count: o.count,
        seed: o.seed,
        storeDir: o.store,
        ep: o.ep,
        fallbackToCpu: o.cpuFallback,
        session: tuning(o),
        onRecord: (done) => {
          progress ??= new ProgressLine('precompute', o.count, process.stderr, undefined, done - 1);
          progress.update(done);
        },
      }).finally(() => progress?.finish());
      if (r.repaired.bytes) out(`repaired the store: dropped ${formatBytes(r.repaired.bytes)} of a torn last record`);
      out(
        r.added
          ? `precomputed ${r.added} sample${r.added === 1 ? '' : 's'} in ${r.seconds.toFixed(1)} s${r.existing ? ` (continuing from ${r.existing} on disk)` : ''}`
          : `the store already holds ${r.records} samples (>= --count ${o.count}); nothing to do`,
      );
      out(`  data: ${data.instanceLatents.length} instance + ${data.classLatents.length} class latents [${data.instanceLatents[0].shape.join(', ')}]`);
      out(`  store: ${r.storeDir}`);
      out(`  ${r.records} records x ${formatBytes(r.recordBytes)} per sample = ${formatBytes(r.records * r.recordBytes)} (${formatBytes(r.totalBytes)} with header and conditioning)`);
    });

  program
    .command('train')
    .description('run train.onnx over the store: LoRA training with AdamW, checkpoints, resume')
    .argument('<out>', 'a compiled folder with a precomputed store')
    .option('--steps <n>', "total steps to reach (default: the spec's train steps)", parseCount)
    .option('--resume', 'continue from <out>/train/checkpoint.safetensors, bit for bit')
    .option('--restart', 'discard an existing checkpoint and start over')
    .option('--checkpoint-every <n>', "steps between checkpoints (default: the spec's checkpoint_every)", parseCount)
    .option('--lr <x>', "learning rate (default: the spec's; on --resume the checkpoint's)", parseNumber)
    .option('--seed <n>', "sample-order seed (default: the spec's)", parseSeed)
    .option('--store <dir>', 'store folder (default <out>/store)')
    .addOption(epOption())
    .addOption(fallbackOption())
    .addOption(threadsOption())
    .addOption(graphOptOption())
    .action(async (dir: string, o: TrainCli) => {
      if (o.resume && o.restart) throw new HollowcError('give --resume or --restart, not both');
      let progress: ProgressLine | undefined;
      const r = await train({
        out: dir,
        steps: o.steps,
        resume: o.resume,
        restart: o.restart,
        checkpointEvery: o.checkpointEvery,
        lr: o.lr,
        seed: o.seed,
        storeDir: o.store,
        ep: o.ep,
        fallbackToCpu: o.cpuFallback,
        session: tuning(o),
        onStep: (s) => {
          progress ??= new ProgressLine('step', s.steps, process.stderr, undefined, s.step - 1);
          progress.update(s.step, { loss: s.loss.toFixed(5) });
        },
      }).finally(() => progress?.finish());
      const first = r.losses[0];
      const last = r.losses[r.losses.length - 1];
      if (!r.losses.length) out(`already at step ${r.step}; nothing to train`);
      else out(`trained steps ${first.step}..${last.step} (batch ${r.batch}) in ${formatDuration(r.seconds)} (${(r.losses.length / r.stepSeconds).toFixed(1)} it/s): loss ${first.loss.toFixed(5)} -> ${last.loss.toFixed(5)}`);
      out(`  loss log: ${path.join(dir, 'train', 'loss.jsonl')}`);
      out(`  checkpoint: ${r.checkpointFile}`);
      out(`  LoRA (peft): ${r.loraFile}`);
    });

  program
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
    .option('--baked <file>', 'a baked infer model (hollowc bake) instead of infer.onnx + LoRA')
    .addOption(epOption())
    .addOption(fallbackOption())
    .addOption(threadsOption())
    .addOption(graphOptOption())
    .action(async (dir: string, o: GenerateCli) => {
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

  program
    .command('export-lora')
    .description('write the trained LoRA for the original UNet in peft (diffusers) or kohya (A1111, ComfyUI) layout')
    .argument('<out>', 'a compiled folder')
    .addOption(new Option('--format <format>', 'key layout').choices(['peft', 'kohya']).default('peft'))
    .requiredOption('-o, --output <file>', 'LoRA file to write (.safetensors)')
    .option('--from <source>', '"checkpoint" (the last training checkpoint), a checkpoint file, or a LoRA file (default <out>/lora.safetensors)')
    .action((dir: string, o: { format: LoraFormat; output: string; from?: string }) => {
      const r = exportLora({ out: dir, format: o.format, output: o.output, from: o.from });
      out(`wrote ${r.file} (${o.format}): ${r.modules} modules, ${r.parameters.toLocaleString('en-US')} parameters, from ${r.source}`);
    });

  registerDemo(program);
}
