/**
 * `hollowc demo`: `hollowc personalize` end to end with nothing downloaded. Builds a tiny SD 1.5
 * pipeline folder (models/builder, random weights), draws a handful of photos of a "subject" (an
 * orange face on blue, moved and scaled from photo to photo) with sharp, and personalizes it:
 * compile (39.2% cut), prompts, VAE, class images from the base pipeline (prior preservation),
 * precompute, train, LoRA export, validation images, report.html. With random weights the images
 * are noise, so it also prints what shows that training worked: the loss on the instance samples
 * before and after, and how much closer to the subject (the photos' mean latent) the personalized
 * model's samples end than the base model's from the same seed.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { Command } from 'commander';
import sharp from 'sharp';
import { buildPipeline } from '../models/builder/pipeline';
import { formatBytes } from '../runtime/progress';
import { ExecutionProvider } from '../runtime/ort/session';
import { epOption, fallbackOption, parseCount, reportProvider } from './options';
import { PersonalizeResult, personalize } from './api/personalize';

export interface DemoOptions {
  /** Folder to work in (default: a new temporary folder, kept). */
  out?: string;
  steps?: number;
  samples?: number;
  /** Denoising steps of the class and the validation images (default CLASS_STEPS, VALIDATION_STEPS). */
  sampleSteps?: number;
  /** Execution provider for every session (default cpu). */
  ep?: ExecutionProvider;
  fallbackToCpu?: boolean;
  reportProvider?: (line: string) => void;
  log?: (line: string) => void;
}

export interface DemoSummary {
  out: string;
  /** the run folder personalize wrote (report.html, LoRA files, images, compiled/, data/) */
  run: string;
  photos: string[];
  result: PersonalizeResult;
  lossBefore: number;
  lossAfter: number;
  subject: { base: number; personalized: number };
  parameters: { full: number; heldDuringTraining: number; lora: number };
  peakRssBytes: number;
  seconds: number;
}

// 150 steps at lr 1e-3 on a rank-4 LoRA: 10-20 s of training on 2 cores, the whole demo under a minute.
const DEFAULT_STEPS = 150;
const DEFAULT_SAMPLES = 32;
const CLASS_STEPS = 10;
const VALIDATION_STEPS = 15;
const PHOTOS = 4;
const RESOLUTION = 128; // latents 16x16

/** The demo's photos: the same subject (an orange face with a red mouth on blue) moved and scaled. */
export async function drawDemoPhotos(dir: string, count = PHOTOS, side = RESOLUTION): Promise<string[]> {
  fs.mkdirSync(dir, { recursive: true });
  const files: string[] = [];
  for (let i = 0; i < count; i++) {
    const s = side / 128;
    const cx = (58 + 6 * i) * s;
    const cy = (68 - 4 * i) * s;
    const r = (36 + 3 * i) * s;
    const svg = `<svg xmlns="http://www.w3.org/2000/svg" width="${side}" height="${side}">
<rect width="${side}" height="${side}" fill="#3f78c4"/><rect y="${side * 0.8}" width="${side}" height="${side * 0.2}" fill="#4f9a4a"/>
<circle cx="${cx}" cy="${cy}" r="${r}" fill="#f0a030"/>
<circle cx="${cx - r * 0.35}" cy="${cy - r * 0.2}" r="${r * 0.13}" fill="#222"/><circle cx="${cx + r * 0.35}" cy="${cy - r * 0.2}" r="${r * 0.13}" fill="#222"/>
<ellipse cx="${cx}" cy="${cy + r * 0.4}" rx="${r * 0.35}" ry="${r * 0.16}" fill="#a02818"/></svg>`;
    const file = path.join(dir, `subject-${i}.png`);
    await sharp(Buffer.from(svg)).png().toFile(file);
    files.push(file);
  }
  return files;
}

export async function runDemo(options: DemoOptions = {}): Promise<DemoSummary> {
  const log = options.log ?? ((l: string) => process.stdout.write(`${l}\n`));
  const started = Date.now();
  const out = path.resolve(options.out ?? fs.mkdtempSync(path.join(os.tmpdir(), 'hollowc-demo-')));
  fs.mkdirSync(out, { recursive: true });
  log(`hollowc demo in ${out}`);
  const model = path.join(out, 'model');
  const built = await buildPipeline('sd15', 'tiny', model, { seed: 0 });
  const total = built.components.reduce((a, c) => a + c.parameterCount, 0);
  log(`built a tiny SD 1.5 pipeline (${total.toLocaleString('en-US')} parameters, random weights) in ${model}`);
  const photos = await drawDemoPhotos(path.join(out, 'photos'));
  log(`drew ${photos.length} photos of the subject (${RESOLUTION}x${RESOLUTION}) in ${path.join(out, 'photos')}`);
  const run = path.join(out, 'run');
  const prompt = 'a photo of sks face';
  const classPrompt = 'a photo of a face';
  log(
    `hollowc personalize --model ${model} --photos ${path.join(out, 'photos')} --prompt "${prompt}" --class-prompt "${classPrompt}" -o ${run} ...`,
  );
  const result = await personalize({
    model,
    photos: path.join(out, 'photos'),
    prompt,
    classPrompt,
    out: run,
    rank: 4,
    steps: options.steps ?? DEFAULT_STEPS,
    lr: 1e-3,
    samples: options.samples ?? DEFAULT_SAMPLES,
    classImages: 4,
    classSteps: options.sampleSteps ?? CLASS_STEPS,
    validationSteps: options.sampleSteps ?? VALIDATION_STEPS,
    guidance: 5,
    resolution: RESOLUTION,
    seed: 0,
    ep: options.ep,
    fallbackToCpu: options.fallbackToCpu,
    reportProvider: options.reportProvider,
    log: (l) => log(`  ${l}`),
    progress: { write: () => true },
  });
  const loss = result.loss!;
  const subject = result.subject!;
  const p = result.manifest.parameters;
  log(
    `parameters held during training: ${p.heldDuringTraining.toLocaleString('en-US')} of ${p.full.toLocaleString('en-US')} (${((100 * p.heldDuringTraining) / p.full).toFixed(1)}%), + ${p.lora.toLocaleString('en-US')} LoRA`,
  );
  log(
    `training worked: loss on the instance samples ${loss.before.toFixed(5)} before, ${loss.after.toFixed(5)} after (${(100 * (1 - loss.after / loss.before)).toFixed(1)}% lower)`,
  );
  log(
    `the personalized samples end ${(100 * (1 - subject.personalized / subject.base)).toFixed(1)}% closer to the subject than the base model's (RMS distance to the photos' mean latent: ${subject.base.toFixed(4)} base, ${subject.personalized.toFixed(4)} personalized, same seed)`,
  );
  const seconds = (Date.now() - started) / 1000;
  if (result.lora) log(`LoRA: ${result.lora.diffusers} (diffusers), ${result.lora.kohya} (kohya)`);
  log(`peak RSS ${formatBytes(result.peakRssBytes)}, total ${seconds.toFixed(1)} s`);
  log(`report: ${result.report}`);
  return {
    out,
    run,
    photos,
    result,
    lossBefore: loss.before,
    lossAfter: loss.after,
    subject,
    parameters: p,
    peakRssBytes: result.peakRssBytes,
    seconds,
  };
}

export function registerDemo(program: Command): void {
  program
    .command('demo')
    .description('hollowc personalize on a tiny pipeline built on the spot and photos drawn on the spot: LoRA, images and report.html')
    .option('--out <dir>', 'folder to work in (default: a new temporary folder)')
    .option('--steps <n>', 'training steps', parseCount, DEFAULT_STEPS)
    .option('--samples <n>', 'precomputed samples', parseCount, DEFAULT_SAMPLES)
    .option(
      '--sample-steps <n>',
      `denoising steps of the class and validation images (default: ${CLASS_STEPS} and ${VALIDATION_STEPS})`,
      parseCount,
    )
    .addOption(epOption())
    .addOption(fallbackOption())
    .action(
      async (o: { out?: string; steps: number; samples: number; sampleSteps?: number; ep: ExecutionProvider; cpuFallback?: boolean }) => {
        await runDemo({
          out: o.out,
          steps: o.steps,
          samples: o.samples,
          sampleSteps: o.sampleSteps,
          ep: o.ep,
          fallbackToCpu: o.cpuFallback,
          reportProvider,
        });
      },
    );
}
