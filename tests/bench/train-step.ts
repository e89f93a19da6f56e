/**
 * Issue 5's measurement: on a full-size SD 2.1 (builder, CPU EP, latents 32x32, batch 1, LoRA
 * r128 on attn1/attn2 q,k,v,out.0), peak RSS and step time of one train.onnx step at the 39.2%
 * cut vs `hollow none` (plain LoRA fine-tuning) vs plain UNet inference. Each configuration runs
 * in its own process (its peak RSS is its own), with onnxruntime's CPU arena and prepacking off
 * as hollowc's runtime runs them. Not run by jest.
 *
 *   npx tsc -p . && node dist/tests/bench/train-step.js [--dir /tmp/x] [--keep] [--steps 3] [--threads 2]
 */
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';

const MiB = 2 ** 20;
const CLI = path.join(__dirname, '..', '..', 'cli', 'main.js');

const SPEC = (hollow: string) => `model sd21
hollow ${hollow}
shape sample [1, 4, 32, 32]
shape timestep [1]
shape encoder_hidden_states [1, 77, 1024]
lora rank 128 alpha 128
lora targets "attn1.*" "attn2.*"
emit train
`;

function peakMiB(): number {
  return Math.round((process.resourceUsage().maxRSS * 1024) / MiB);
}

async function child(kind: string, file: string, steps: number, threads: number): Promise<void> {
  const ort = await import('onnxruntime-node');
  const { createSession } = await import('../../runtime/session');
  const t0 = Date.now();
  // The runtime's defaults: 'basic' graph optimization and no memory pattern for training
  // graphs (runtime/train.ts), 'all' for inference.
  const training = kind !== 'inference';
  const session = await createSession(file, { intraOpThreads: threads, optimization: training ? 'basic' : 'all', memPattern: !training });
  const loadSeconds = (Date.now() - t0) / 1000;
  const rssAfterLoad = peakMiB();
  const metaFile = path.join(path.dirname(file), 'manifest.json');
  const described = fs.existsSync(metaFile) && kind !== 'inference' ? JSON.parse(fs.readFileSync(metaFile, 'utf8')).artifacts.train.inputs : undefined;
  const dims: Record<string, number> = { batch: 1, height: 32, width: 32, sequence: 77 };
  const inputs: { name: string; shape: (number | string)[]; dtype: string }[] =
    described ?? [
      { name: 'sample', shape: ['batch', 4, 'height', 'width'], dtype: 'float32' },
      { name: 'timestep', shape: ['batch'], dtype: 'float32' },
      { name: 'encoder_hidden_states', shape: ['batch', 'sequence', 1024], dtype: 'float32' },
    ];
  const feeds: Record<string, import('onnxruntime-node').Tensor> = {};
  for (const input of inputs) {
    const shape = input.shape.map((d) => (typeof d === 'string' ? dims[d] : d));
    const n = shape.reduce((a, b) => a * b, 1);
    if (input.dtype === 'int64') {
      feeds[input.name] = new ort.Tensor('int64', BigInt64Array.from({ length: n }, () => 1n), shape);
      continue;
    }
    const data = new Float32Array(n);
    const value = (i: number) =>
      input.name === 'timestep' ? 500 : input.name === 'lr' ? 1e-4 : input.name === 'loss_weight' ? 1 : input.name.endsWith('exp_avg_sq') ? 1e-8 : input.name.endsWith('.exp_avg') ? 0 : input.name.includes('lora_') ? 0.01 * Math.sin(i) : Math.sin(i * 0.37);
    for (let i = 0; i < n; i++) data[i] = value(i);
    feeds[input.name] = new ort.Tensor('float32', data, shape);
  }
  const times: number[] = [];
  let loss = NaN;
  for (let s = 0; s < steps; s++) {
    const t = Date.now();
    const r = await session.run(feeds);
    times.push((Date.now() - t) / 1000);
    if (r.loss) loss = (r.loss.data as Float32Array)[0];
  }
  const sorted = [...times].sort((a, b) => a - b);
  console.log(
    JSON.stringify({ kind, loadSeconds, rssAfterLoadMiB: rssAfterLoad, stepSeconds: times, medianStepSeconds: sorted[Math.floor(sorted.length / 2)], peakRssMiB: peakMiB(), ...(Number.isNaN(loss) ? {} : { loss }) }),
  );
}

function spawnJson(args: string[]): Record<string, unknown> {
  const r = spawnSync(process.execPath, args, { stdio: ['ignore', 'pipe', 'inherit'], encoding: 'utf8', maxBuffer: 2 ** 26 });
  if (r.status !== 0) throw new Error(`${args.join(' ')} failed with exit ${r.status}`);
  const line = r.stdout.trim().split('\n').pop()!;
  return JSON.parse(line);
}

async function main(argv: string[]): Promise<void> {
  const at = argv.indexOf('--child');
  if (at >= 0) return child(argv[at + 1], argv[at + 2], Number(argv[at + 3]), Number(argv[at + 4]));
  const opt = (name: string, fallback: string) => (argv.includes(name) ? argv[argv.indexOf(name) + 1] : fallback);
  const dir = opt('--dir', fs.mkdtempSync(path.join(os.tmpdir(), 'hollowc-train-bench-')));
  const steps = opt('--steps', '3');
  const threads = opt('--threads', '2');
  const unet = path.join(dir, 'unet', 'model.onnx');
  if (!fs.existsSync(unet)) {
    const b = spawnSync(process.execPath, [CLI, 'model', 'build', 'sd21', '--full', '-o', path.dirname(unet)], { stdio: 'inherit' });
    if (b.status !== 0) throw new Error('model build failed');
  }
  const results: Record<string, unknown>[] = [];
  for (const [name, hollow] of [['hollowed 39.2%', 'preset "39.2%"'], ['LoRA FT (hollow none)', 'none']]) {
    const out = path.join(dir, name.startsWith('hollowed') ? 'out-392' : 'out-none');
    const spec = path.join(dir, `${path.basename(out)}.hollow`);
    fs.writeFileSync(spec, SPEC(hollow));
    const t = Date.now();
    const c = spawnSync('/usr/bin/time', ['-f', '%M', process.execPath, CLI, 'compile', unet, spec, '-o', out], { encoding: 'utf8' });
    if (c.status !== 0) throw new Error(`compile ${name} failed: ${c.stderr}`);
    const compileRss = Number(c.stderr.trim().split('\n').pop()) / 1024;
    const step = spawnJson([__filename, '--child', name, path.join(out, 'train.onnx'), steps, threads]);
    results.push({ config: name, compileSeconds: (Date.now() - t) / 1000, compilePeakRssMiB: Math.round(compileRss), ...step });
  }
  results.push({ config: 'UNet inference', ...spawnJson([__filename, '--child', 'inference', unet, steps, threads]) });
  for (const r of results) console.log(JSON.stringify(r));
  const [h, f, i] = results as { peakRssMiB: number; medianStepSeconds: number }[];
  console.log(`peak RSS: hollowed/LoRA-FT ${(h.peakRssMiB / f.peakRssMiB).toFixed(3)}, hollowed/inference ${(h.peakRssMiB / i.peakRssMiB).toFixed(3)}, LoRA-FT/inference ${(f.peakRssMiB / i.peakRssMiB).toFixed(3)}`);
  console.log(`step time: hollowed/LoRA-FT ${(h.medianStepSeconds / f.medianStepSeconds).toFixed(3)}, hollowed/inference ${(h.medianStepSeconds / i.medianStepSeconds).toFixed(3)}`);
  if (!argv.includes('--keep')) fs.rmSync(dir, { recursive: true, force: true });
}

main(process.argv.slice(2)).catch((e) => {
  console.error(e);
  process.exit(1);
});
