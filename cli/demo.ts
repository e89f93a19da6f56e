/**
 * `hollowc demo`: the whole workflow on a tiny model with nothing downloaded. Builds a tiny SD 1.5
 * UNet (models/builder, random weights), writes a spec (39.2% preset, LoRA rank 4), compiles it,
 * makes synthetic data (instance latents that share one pattern — "the subject" — and random
 * class latents, random prompt embeddings), precomputes the store, trains, samples with two-path
 * guidance, and prints what happened: loss before/after, parameters held during training vs the
 * full UNet, store size, peak RSS, wall times.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { Command } from 'commander';
import { parseCount } from './options';
import { buildUNet } from '../models/builder';
import { FAMILIES } from '../models/families';
import { Rng, fillNormal } from '../models/random';
import { writeNpy } from '../runtime/npy';
import { precompute } from '../runtime/precompute';
import { formatBytes } from '../runtime/progress';
import { Sampler } from '../runtime/sample';
import { train } from '../runtime/train';
import { loadTrainingData, readConditioning } from '../runtime/training-data';
import { compileFromSpec } from './compile';

export interface DemoOptions {
  /** Folder to work in (default: a new temporary folder, kept). */
  out?: string;
  steps?: number;
  samples?: number;
  log?: (line: string) => void;
}

export interface DemoSummary {
  out: string;
  lossBefore: number;
  lossAfter: number;
  parameters: { full: number; heldDuringTraining: number; lora: number };
  storeBytes: number;
  storeRecordBytes: number;
  peakRssBytes: number;
  seconds: Record<string, number>;
  latentsFile: string;
}

// 150 steps: about 10-20 s of training on 2 CPU cores (a 10k-node train.onnx, 70-190 ms a step
// depending on load), so the whole demo stays under a minute.
const DEFAULT_STEPS = 150;
const SAMPLE_STEPS = 15;
// Graph optimization 'basic' starts train.onnx about twice as fast as 'all' (4 s vs 8 s on 2
// cores) at about the same step time: the right trade for a short run.
const SESSION = { optimization: 'basic' } as const;
const INSTANCES = 4;
const CLASSES = 4;

function randn(seed: number, stream: string, n: number, std = 1): Float32Array {
  const a = new Float32Array(n);
  fillNormal(new Rng(seed, stream), a, std);
  return a;
}

/** The demo's data folder, in the layout `hollowc precompute --data` reads. */
export function writeDemoData(dir: string, latent: number[], prompt: number[], seed = 0): void {
  const n = latent.reduce((a, b) => a * b, 1);
  const subject = randn(seed, 'demo/subject', n);
  fs.mkdirSync(path.join(dir, 'latents'), { recursive: true });
  fs.mkdirSync(path.join(dir, 'class_latents'), { recursive: true });
  for (let i = 0; i < INSTANCES; i++) {
    const jitter = randn(seed, `demo/instance/${i}`, n, 0.1);
    writeNpy(path.join(dir, 'latents', `${i}.npy`), { dtype: 'float32', shape: latent, data: subject.map((x, j) => x + jitter[j]) });
  }
  for (let i = 0; i < CLASSES; i++) writeNpy(path.join(dir, 'class_latents', `${i}.npy`), { dtype: 'float32', shape: latent, data: randn(seed, `demo/class/${i}`, n) });
  const p = prompt.reduce((a, b) => a * b, 1);
  writeNpy(path.join(dir, 'instance_prompt.npy'), { dtype: 'float32', shape: prompt, data: randn(seed, 'demo/instance_prompt', p) });
  writeNpy(path.join(dir, 'class_prompt.npy'), { dtype: 'float32', shape: prompt, data: randn(seed, 'demo/class_prompt', p) });
}

export async function runDemo(options: DemoOptions = {}): Promise<DemoSummary> {
  const log = options.log ?? ((l: string) => process.stdout.write(`${l}\n`));
  const steps = options.steps ?? DEFAULT_STEPS;
  const samples = options.samples ?? 32;
  const out = path.resolve(options.out ?? fs.mkdtempSync(path.join(os.tmpdir(), 'hollowc-demo-')));
  fs.mkdirSync(out, { recursive: true });
  const seconds: Record<string, number> = {};
  let t = Date.now();
  const lap = (name: string) => {
    seconds[name] = (Date.now() - t) / 1000;
    t = Date.now();
    return `${seconds[name].toFixed(1)} s`;
  };
  const tiny = FAMILIES.sd15.tiny;
  const latent = tiny.shapes.sample.slice(1);
  const prompt = tiny.shapes.encoder_hidden_states.slice(1);

  log(`hollowc demo in ${out}`);
  const built = await buildUNet(tiny.config, { outDir: path.join(out, 'model'), seed: 0 });
  log(`1. built a tiny SD 1.5 UNet (${built.parameterCount.toLocaleString('en-US')} parameters, random weights): ${lap('build')}`);

  const specFile = path.join(out, 'demo.hollow');
  const specText = [
      '# hollowc demo: the paper\'s main cut on a tiny SD 1.5',
      'model sd15',
      'hollow preset "39.2%"',
      `shape sample [1, ${latent.join(', ')}]`,
      'shape timestep [1]',
      `shape encoder_hidden_states [1, ${prompt.join(', ')}]`,
      'lora rank 4',
      'loss prior_weight 1.0',
      'optimizer adamw lr 1e-3',
      `train steps ${steps} batch 1 checkpoint_every ${Math.max(1, Math.ceil(steps / 4))}`,
      'emit precompute train infer',
      '',
    ].join('\n');
  fs.writeFileSync(specFile, specText);
  const compiled = path.join(out, 'compiled');
  const manifest = compileFromSpec(built.file, specFile, { out: compiled });
  const p = manifest.parameters;
  log(`2. compiled the 39.2% cut (hollows ${manifest.cut!.hollowed.join(' ')}): ${Object.keys(manifest.artifacts).map((a) => `${a}.onnx`).join(' ')}: ${lap('compile')}`);
  log(`   parameters held during training: ${p.heldDuringTraining.toLocaleString('en-US')} of ${p.full.toLocaleString('en-US')} (${((100 * p.heldDuringTraining) / p.full).toFixed(1)}%), + ${p.lora.toLocaleString('en-US')} LoRA`);

  const dataDir = path.join(out, 'samples');
  writeDemoData(dataDir, latent, prompt);
  const pc = await precompute({ out: compiled, data: loadTrainingData(dataDir), count: samples, session: SESSION });
  log(`3. precomputed ${pc.records} samples (${INSTANCES} subject latents, ${CLASSES} class latents): ${lap('precompute')}`);
  log(`   store: ${formatBytes(pc.recordBytes)} per sample, ${formatBytes(pc.totalBytes)} in all`);

  // One session for the loss before, the steps and the loss after: creating it is the slow part.
  const r = await train({ out: compiled, steps, restart: true, evaluate: { batches: samples }, session: SESSION });
  const lossBefore = r.evaluation!.before;
  const lossAfter = r.evaluation!.after;
  log(`4. trained ${steps} steps (${(steps / r.stepSeconds).toFixed(1)} it/s; the rest is starting train.onnx): ${lap('train')}`);
  log(`   loss over the store: ${lossBefore.toFixed(5)} before, ${lossAfter.toFixed(5)} after`);

  const sampler = await Sampler.open({ out: compiled, session: SESSION });
  const latentsFile = path.join(out, 'latents.npy');
  try {
    const req = { prompt: readConditioning(path.join(dataDir, 'instance_prompt.npy')), classPrompt: readConditioning(path.join(dataDir, 'class_prompt.npy')), steps: SAMPLE_STEPS, guidance: 5, scheduler: 'ddim' as const, seed: 0 };
    const g = await sampler.sample(req);
    writeNpy(latentsFile, { dtype: 'float32', shape: g.shape, data: g.latents });
    const mean = g.latents.reduce((a, b) => a + b, 0) / g.latents.length;
    const std = Math.sqrt(g.latents.reduce((a, b) => a + (b - mean) ** 2, 0) / g.latents.length);
    log(`5. sampled [${g.shape.join(', ')}] latents, DDIM ${SAMPLE_STEPS} steps, guidance 5, two-path infer.onnx (LoRA: ${path.basename(sampler.loraSource)}): ${lap('sample')}`);
    log(`   latents mean ${mean.toFixed(3)}, std ${std.toFixed(3)} -> ${latentsFile}`);
  } finally {
    await sampler.release();
  }
  const peak = process.resourceUsage().maxRSS * 1024;
  const total = Object.values(seconds).reduce((a, b) => a + b, 0);
  log(`peak RSS ${formatBytes(peak)}, total ${total.toFixed(1)} s`);
  return {
    out,
    lossBefore,
    lossAfter,
    parameters: p,
    storeBytes: pc.totalBytes,
    storeRecordBytes: pc.recordBytes,
    peakRssBytes: peak,
    seconds,
    latentsFile,
  };
}

export function registerDemo(program: Command): void {
  program
    .command('demo')
    .description('the whole workflow on a tiny model built on the spot: compile, precompute, train, sample')
    .option('--out <dir>', 'folder to work in (default: a new temporary folder)')
    .option('--steps <n>', 'training steps', parseCount, DEFAULT_STEPS)
    .option('--samples <n>', 'precomputed samples', parseCount, 32)
    .action(async (o: { out?: string; steps: number; samples: number }) => {
      await runDemo({ out: o.out, steps: o.steps, samples: o.samples });
    });
}
