/**
 * Issue 10 part 5: peak memory of `generate --model` on a full-size SD 2.1 pipeline folder
 * (builder weights, ~5 GB) at 512x512 (64x64 latents), CPU EP, next to the UNet alone (one run
 * of unet/model.onnx at batch 2, the guided step's shape). Each configuration runs in its own
 * process; RSS (peak from process.resourceUsage().maxRSS, and RssAnon / RssFile from
 * /proc/self/status sampled every 50 ms) is the child's own. Not run by jest.
 *
 * Rows `unet-blocks` and `generate-blocks` run the UNet as `generate --model` prepares it
 * (cli/api/prepared-unet.ts: attention maps in blocks of query rows at the run's shape).
 *
 * `--model <model.onnx>` runs the same rows on that UNet instead of the folder's (a user's export,
 * e.g. torch 1.13's of ../shared/oracle): the UNet row opens it, the generate rows take it as
 * `generate --model` does, with the folder's text encoder, VAE and scheduler. `--family sd15`
 * builds SD 1.5's pipeline instead of SD 2.1's; use its own --dir. `--tiny` builds the family's tiny
 * pipeline (checks the bench itself in seconds: `--family sd15 --tiny --model` the sd15-tiny fixture).
 *
 *   npx tsc -p . && node dist/tests/bench/generate-full.js [--dir /tmp/hollowc-sd21-full] [--steps 2] [--threads 2]
 *       [--only unet,generate,unet-blocks,generate-blocks] [--model /tmp/real-sd21/model.onnx] [--family sd15] [--tiny]
 *
 * The pipeline is built once into --dir (minutes) and reused by later runs.
 */
import { spawn, spawnSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';

const MiB = 2 ** 20;
const CLI = path.join(__dirname, '..', '..', 'cli', 'main.js');

/** The text encoder's width each family's UNet reads (encoder_hidden_states' last axis). */
const CROSS_DIM: Record<string, number> = { sd15: 768, sd21: 1024 };

function arg(name: string, fallback: string): string {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : fallback;
}

/** Samples RssAnon / RssFile (kB in /proc/self/status) and keeps their maxima. */
function startSampler(): () => { anon: number; file: number; peak: number } {
  let anon = 0;
  let file = 0;
  const read = () => {
    const text = fs.readFileSync('/proc/self/status', 'utf8');
    const kb = (key: string) => Number(new RegExp(`^${key}:\\s+(\\d+)`, 'm').exec(text)?.[1] ?? 0);
    anon = Math.max(anon, kb('RssAnon'));
    file = Math.max(file, kb('RssFile'));
  };
  const timer = setInterval(read, 50);
  return () => {
    read();
    clearInterval(timer);
    return {
      anon: Math.round(anon / 1024),
      file: Math.round(file / 1024),
      peak: Math.round((process.resourceUsage().maxRSS * 1024) / MiB),
    };
  };
}

async function child(kind: string, dir: string, steps: number, threads: number, model: string | undefined, family: string): Promise<void> {
  const stop = startSampler();
  const t0 = Date.now();
  const stages: Record<string, number> = {};
  const unet = model ?? path.join(dir, 'unet', 'model.onnx');
  // `-blocks`: the UNet as `generate --model` prepares it for this run (cli/api/prepared-unet.ts: its
  // large attention maps in blocks of query rows at batch 2, 64x64).
  const { prepareUnet } = await import('../../cli/api/prepared-unet');
  const prepared = kind.endsWith('-blocks') ? prepareUnet(unet, { run: { batch: 2, channels: 4, height: 64, width: 64 } }) : undefined;
  if (prepared) stages.prepare = (Date.now() - t0) / 1000;
  if (kind.startsWith('unet')) {
    const ort = await import('onnxruntime-node');
    const { loadModel } = await import('../../compiler/serde');
    // As wide as the UNet reads the text states (a tiny pipeline's are narrower than its family's).
    const declared = loadModel(unet).graph.inputs.find((v) => v.name === 'encoder_hidden_states')?.type?.shape?.[2];
    const width = typeof declared === 'number' ? declared : CROSS_DIM[family];
    const { createSession } = await import('../../runtime/ort/session');
    const session = await createSession(prepared?.model ?? unet, { intraOpThreads: threads });
    stages.load = (Date.now() - t0) / 1000;
    const t1 = Date.now();
    const fill = (n: number) => Float32Array.from({ length: n }, (_, i) => Math.sin(i) * 0.5);
    await session.run({
      sample: new ort.Tensor('float32', fill(2 * 4 * 64 * 64), [2, 4, 64, 64]),
      timestep: new ort.Tensor('float32', Float32Array.of(500, 500), [2]),
      encoder_hidden_states: new ort.Tensor('float32', fill(2 * 77 * width), [2, 77, width]),
    });
    stages.run = (Date.now() - t1) / 1000;
    await session.release();
  } else {
    const { openPipelineFolder } = await import('../../runtime/text-to-image/pipeline-folder');
    const { textToImage } = await import('../../runtime/text-to-image/text-to-image');
    let mark = Date.now();
    const r = await textToImage({
      folder: openPipelineFolder(dir),
      prompt: 'a photo of a dog',
      width: 512,
      height: 512,
      steps,
      guidance: 7.5,
      scheduler: 'ddim',
      seed: 1,
      numImages: 1,
      unetModel: prepared?.model ?? model,
      session: { intraOpThreads: threads },
      onStage: (stage, state) => {
        if (state === 'end') stages[stage] = (Date.now() - mark) / 1000;
        mark = Date.now();
      },
    });
    if (!r.images || r.images.dims.join() !== '1,3,512,512') throw new Error(`unexpected image ${r.images?.dims}`);
  }
  prepared?.cleanup();
  const m = stop();
  process.stdout.write(
    `${JSON.stringify({ kind, ...(model ? { model } : {}), attention: prepared?.attention, seconds: (Date.now() - t0) / 1000, stages, peakMiB: m.peak, rssAnonMaxMiB: m.anon, rssFileMaxMiB: m.file })}\n`,
  );
}

async function main(): Promise<void> {
  const kind = arg('--child', '');
  const family = arg('--family', 'sd21');
  if (!CROSS_DIM[family]) throw new Error(`--family ${family}: one of ${Object.keys(CROSS_DIM).join(', ')}`);
  const dir = arg('--dir', `/tmp/hollowc-${family}-full`);
  const steps = Number(arg('--steps', '2'));
  const threads = Number(arg('--threads', '2'));
  const model = arg('--model', '') ? path.resolve(arg('--model', '')) : undefined;
  if (model && !fs.existsSync(model)) throw new Error(`--model ${model}: no such file`);
  if (kind) return child(kind, dir, steps, threads, model, family);
  if (!fs.existsSync(path.join(dir, 'model_index.json'))) {
    const t = Date.now();
    const size = process.argv.includes('--tiny') ? '--tiny' : '--full';
    const b = spawnSync(process.execPath, [CLI, 'model', 'build', family, size, '--pipeline', '-o', dir], { stdio: 'inherit' });
    if (b.status !== 0) throw new Error('build failed');
    process.stdout.write(`built ${dir} in ${((Date.now() - t) / 1000).toFixed(0)} s\n`);
  }
  for (const k of arg('--only', 'unet,generate,unet-blocks,generate-blocks').split(',')) {
    const passOn = [
      '--dir',
      dir,
      '--steps',
      String(steps),
      '--threads',
      String(threads),
      '--family',
      family,
      ...(model ? ['--model', model] : []),
    ];
    const p = spawn(process.execPath, [__filename, '--child', k, ...passOn], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    p.stdout.on('data', (d) => (stdout += d));
    p.stderr.on('data', (d) => (stderr += d));
    let anon = 0;
    let file = 0;
    const timer = setInterval(() => {
      try {
        const text = fs.readFileSync(`/proc/${p.pid}/status`, 'utf8');
        const kb = (key: string) => Number(new RegExp(`^${key}:\\s+(\\d+)`, 'm').exec(text)?.[1] ?? 0);
        anon = Math.max(anon, kb('RssAnon'));
        file = Math.max(file, kb('RssFile'));
      } catch {
        // exited
      }
    }, 50);
    const code = await new Promise<number>((resolve) => p.on('close', (c) => resolve(c ?? 1)));
    clearInterval(timer);
    if (code !== 0) throw new Error(`${k} failed: ${stderr}`);
    const r = JSON.parse(stdout.trim().split('\n').pop()!);
    process.stdout.write(
      `${JSON.stringify({ ...r, sampledByParent: { rssAnonMaxMiB: Math.round(anon / 1024), rssFileMaxMiB: Math.round(file / 1024) } })}\n`,
    );
  }
}

main().catch((e) => {
  process.stderr.write(`${(e as Error).stack}\n`);
  process.exit(1);
});
