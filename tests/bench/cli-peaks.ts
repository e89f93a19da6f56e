/**
 * Issue 30 item 1: the peak RSS of the commands a user runs, on one UNet, as the user runs them:
 * `hollowc compile` (39.2%, LoRA r128 on attn1/attn2, `emit precompute train grads infer`, 64x64 latents),
 * `hollowc precompute` (synthetic latents and prompt embeddings, a few records), `hollowc train`
 * (2 steps: grads.onnx + host AdamW), `hollowc generate <compiled>` (the two-path infer.onnx, 2
 * steps) and `hollowc generate --model` on a pipeline folder at 512 px (2 steps). Each command's
 * peak is GNU time's maximum RSS (VmHWM) over the command and the allocator child it starts.
 *
 * The pipeline (`hollowc model build <family> --full --pipeline`, seeded random weights) is built
 * into --pipeline once and reused; its UNet is the builder form. `--model <model.onnx>` runs the
 * same commands on that UNet instead (a user's export, e.g. `../shared/oracle`'s
 * `export_real.py sd21 OUT`): `generate --model` then runs on a folder beside the pipeline whose
 * `unet/` links to the export, with the pipeline's text encoder, VAE and tokenizer.
 *
 *   npx tsc -p . && node dist/tests/bench/cli-peaks.js --family sd21 --pipeline /tmp/pipe-sd21 --dir /tmp/cp-sd21
 *       [--model /tmp/real-sd21/model.onnx] [--latent 64] [--steps 2] [--threads 2] [--records 4] [--tiny --rank 4] [--only generate-model]
 *
 * Prints one JSON line per command and a table. Not run by jest.
 */
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { writeNpy } from '../../runtime/formats/npy';
import { BENCH_FAMILIES, BenchFamily, benchSpec, conditioningOf } from './bench-spec';

const CLI = path.join(__dirname, '..', '..', 'cli', 'main.js');

function opt(name: string, fallback: string): string {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : fallback;
}

interface CommandPeak {
  command: string;
  peakMiB: number;
  seconds: number;
}

/** Runs `hollowc <args>` under GNU time; its maximum RSS covers the allocator's child too. */
function hollowc(args: string[]): CommandPeak {
  const t = Date.now();
  const r = spawnSync('/usr/bin/time', ['-f', 'maxrss-kb %M', process.execPath, CLI, ...args], { encoding: 'utf8' });
  const kb = /maxrss-kb (\d+)/.exec(r.stderr)?.[1];
  if (r.status !== 0 || !kb) throw new Error(`hollowc ${args.join(' ')} failed:\n${r.stdout}\n${r.stderr}`);
  const peak = { command: `hollowc ${args[0]}${args[0] === 'generate' ? (args[1] === '--model' ? ' --model' : ' <compiled>') : ''}`, peakMiB: Math.round(Number(kb) / 1024), seconds: (Date.now() - t) / 1000 };
  process.stdout.write(`${JSON.stringify({ ...peak, args })}\n`);
  return peak;
}

/** Deterministic values in about N(0, 1)'s range, so no run depends on a random generator. */
function wave(n: number, phase: number): Float32Array {
  return Float32Array.from({ length: n }, (_, i) => Math.sin(i * 0.37 + phase) * 1.2);
}

function writeData(dir: string, latent: number, width: number, records: number): string {
  const data = path.join(dir, 'data');
  fs.mkdirSync(path.join(data, 'latents'), { recursive: true });
  for (let i = 0; i < records; i++) {
    writeNpy(path.join(data, 'latents', `${i}.npy`), { dtype: 'float32', shape: [4, latent, latent], data: wave(4 * latent * latent, i) });
  }
  writeNpy(path.join(data, 'instance_prompt.npy'), { dtype: 'float32', shape: [77, width], data: wave(77 * width, 0.5) });
  writeNpy(path.join(data, 'class_prompt.npy'), { dtype: 'float32', shape: [77, width], data: wave(77 * width, 1.5) });
  return data;
}

/** A pipeline folder beside `pipeline` whose unet/ links to `model` (and its external data). */
function pipelineWithUnet(pipeline: string, model: string, dir: string): string {
  const folder = path.join(dir, 'pipeline');
  fs.rmSync(folder, { recursive: true, force: true });
  fs.mkdirSync(path.join(folder, 'unet'), { recursive: true });
  for (const entry of fs.readdirSync(pipeline)) {
    if (entry !== 'unet') fs.symlinkSync(path.resolve(pipeline, entry), path.join(folder, entry));
  }
  // the pipeline's unet/config.json (diffusers' config of the same architecture), the export's
  // graph as model.onnx and its external data under the names the graph refers to, hard-linked:
  // the runtime refuses external data reached through a symbolic link out of the model's folder
  fs.symlinkSync(path.join(pipeline, 'unet', 'config.json'), path.join(folder, 'unet', 'config.json'));
  fs.linkSync(path.resolve(model), path.join(folder, 'unet', 'model.onnx'));
  const source = path.dirname(path.resolve(model));
  for (const f of fs.readdirSync(source)) {
    if (!f.endsWith('.onnx') && !f.endsWith('.json') && fs.statSync(path.join(source, f)).isFile())
      fs.linkSync(path.join(source, f), path.join(folder, 'unet', f));
  }
  return folder;
}

function main(): void {
  const family = opt('--family', 'sd21') as BenchFamily;
  if (!BENCH_FAMILIES.includes(family) || family === 'sdxl') throw new Error(`--family ${family}: sd15 or sd21`);
  const pipeline = path.resolve(opt('--pipeline', `/tmp/hollowc-${family}-full`));
  const dir = path.resolve(opt('--dir', `/tmp/hollowc-cli-peaks-${family}`));
  const latent = Number(opt('--latent', '64'));
  const steps = opt('--steps', '2');
  const threads = opt('--threads', '2');
  const records = Number(opt('--records', '4'));
  // --only generate-model: that command alone (the compiled folder is not needed)
  const only = opt('--only', '');
  // (a smaller rank for --tiny: a rank above a layer's width is refused)
  const rank = Number(opt('--rank', '128'));
  const model = opt('--model', '') ? path.resolve(opt('--model', '')) : undefined;
  if (!fs.existsSync(path.join(pipeline, 'model_index.json'))) {
    const size = process.argv.includes('--tiny') ? '--tiny' : '--full';
    const b = spawnSync(process.execPath, [CLI, 'model', 'build', family, size, '--pipeline', '-o', pipeline], { stdio: 'inherit' });
    if (b.status !== 0) throw new Error('model build failed');
  }
  fs.mkdirSync(dir, { recursive: true });
  const unet = model ?? path.join(pipeline, 'unet', 'model.onnx');
  const conditioning = conditioningOf(unet, family, true);
  const width = Number(/encoder_hidden_states \[1, 77, (\d+)\]/.exec(conditioning)![1]);
  const specFile = path.join(dir, 'spec.hollow');
  fs.writeFileSync(specFile, benchSpec('preset "39.2%"', latent, 'fp32', 'precompute train grads infer', 'fp32', family, [], conditioning, rank));
  const out = path.join(dir, 'out');
  const data = writeData(dir, latent, width, records);
  const peaks: CommandPeak[] = [];
  if (only !== 'generate-model') {
    fs.rmSync(out, { recursive: true, force: true });
    peaks.push(hollowc(['compile', unet, specFile, '-o', out]));
    peaks.push(hollowc(['precompute', out, '--data', data, '--count', String(records), '--threads', threads]));
    peaks.push(hollowc(['train', out, '--steps', steps, '--threads', threads]));
    const embeds = path.join(data, 'instance_prompt.npy');
    peaks.push(hollowc(['generate', out, '--prompt-embeds', embeds, '--steps', steps, '--threads', threads, '--latents-out', path.join(dir, 'latents.npy')]));
  }
  const folder = model ? pipelineWithUnet(pipeline, model, dir) : pipeline;
  const size = String(latent * 8);
  const image = path.join(dir, 'image.png');
  peaks.push(hollowc(['generate', '--model', folder, '--prompt', 'a photo of a dog', '--width', size, '--height', size, '--steps', steps, '--threads', threads, '-o', image]));
  const date = new Date().toISOString().slice(0, 10);
  console.log(`\n${date}, ${family}, ${model ?? `builder (${unet})`}, latents ${latent}x${latent}, ${steps} steps, ${threads} threads\n`);
  console.log('| command | peak RSS (VmHWM) | wall |');
  console.log('|---|---|---|');
  for (const p of peaks) console.log(`| ${p.command} | ${p.peakMiB} MiB | ${p.seconds.toFixed(0)} s |`);
}

main();
