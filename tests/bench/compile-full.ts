/**
 * Full-size SD 2.1: time, peak RSS and bytes read of `inspect` and `compile`, then whether the
 * artifacts load and run in onnxruntime. Each step runs in its own process so its peak RSS and
 * read counters are its own. Not run by jest.
 *
 *   npx tsc -p . && node dist/tests/bench/compile-full.js [--dir /tmp/x] [--keep] [--family sd21]
 *
 * "bytes read" is /proc/self/io rchar: every byte the process read through read(2), page cache
 * or not, so it shows whether the weights (3.46 GB) were read.
 */
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';

const MiB = 2 ** 20;
const CLI = path.join(__dirname, '..', '..', 'cli', 'main.js');

function readChars(): number {
  const io = fs.readFileSync('/proc/self/io', 'utf8');
  return Number(/rchar: (\d+)/.exec(io)?.[1] ?? NaN);
}

function peakMiB(): number {
  return Math.round((process.resourceUsage().maxRSS * 1024) / MiB);
}

/** Child mode: run one step in this process and print its measurements as JSON. */
async function child(step: string, args: string[]): Promise<void> {
  const t0 = Date.now();
  const report: Record<string, unknown> = { step };
  if (step === 'inspect') {
    const { loadModel } = await import('../../compiler/serde');
    const { analyzeUNet } = await import('../../passes/lib/analyze-unet');
    const a = analyzeUNet(loadModel(args[0]).graph, args[0]);
    const cut = a.cuts.find((c) => c.lastKeptDown === '3-2')!;
    Object.assign(report, { family: a.family, totalParams: a.totalParams, cut392: cut.removedParams });
  } else if (step === 'compile') {
    const { compileFromSpec } = await import('../../cli/api/compile-spec');
    const m = compileFromSpec(args[0], args[1], { out: args[2] });
    Object.assign(report, {
      artifacts: Object.keys(m.artifacts),
      heldDuringTraining: m.parameters.heldDuringTraining,
      loraParams: m.parameters.lora,
    });
  } else if (step === 'load') {
    const ort = await import('onnxruntime-node');
    const out = args[0];
    const manifest = JSON.parse(fs.readFileSync(path.join(out, 'manifest.json'), 'utf8'));
    const session = await ort.InferenceSession.create(path.join(out, `${args[1]}.onnx`), {
      executionProviders: ['cpu'],
      enableCpuMemArena: false,
      extra: { session: { disable_prepacking: '1' } },
    });
    const loadSeconds = (Date.now() - t0) / 1000;
    const dims: Record<string, number> = {
      batch: 1,
      height: 32,
      width: 32,
      sequence: 77,
      'height/8': 4,
      'width/8': 4,
      'height/4': 8,
      'width/4': 8,
      'height/2': 16,
      'width/2': 16,
    };
    const feeds: Record<string, import('onnxruntime-node').Tensor> = {};
    for (const input of manifest.artifacts[args[1]].inputs as { name: string; shape: (number | string)[] }[]) {
      const shape = input.shape.map((d) => (typeof d === 'string' ? dims[d] : d));
      const data = new Float32Array(shape.reduce((a: number, b: number) => a * b, 1));
      const isB = input.name.endsWith('.lora_B.weight');
      for (let i = 0; i < data.length; i++)
        data[i] = input.name === 'timestep' ? 500 : isB ? 0 : Math.sin(i * 0.37) * (input.name.includes('lora_A') ? 0.02 : 1);
      feeds[input.name] = new ort.Tensor('float32', data, shape);
    }
    const t1 = Date.now();
    const result = await session.run(feeds);
    const out0 = Object.values(result)[0].data as Float32Array;
    Object.assign(report, {
      artifact: args[1],
      loadSeconds,
      runSeconds: (Date.now() - t1) / 1000,
      finite: out0.every(Number.isFinite),
      outputDims: Object.values(result)[0].dims,
    });
  }
  Object.assign(report, { seconds: (Date.now() - t0) / 1000, peakRssMiB: peakMiB(), readMiB: Math.round(readChars() / MiB) });
  console.log(JSON.stringify(report));
}

function run(step: string, args: string[]): void {
  const r = spawnSync(process.execPath, [__filename, '--child', step, ...args], { stdio: ['ignore', 'pipe', 'inherit'], encoding: 'utf8' });
  process.stdout.write(r.stdout);
  if (r.status !== 0) throw new Error(`${step} failed with exit ${r.status}`);
}

async function main(argv: string[]): Promise<void> {
  const at = argv.indexOf('--child');
  if (at >= 0) return child(argv[at + 1], argv.slice(at + 2));
  const dirAt = argv.indexOf('--dir');
  const familyAt = argv.indexOf('--family');
  const family = familyAt >= 0 ? argv[familyAt + 1] : 'sd21';
  const dir = dirAt >= 0 ? argv[dirAt + 1] : fs.mkdtempSync(path.join(os.tmpdir(), 'hollowc-compile-bench-'));
  const unet = path.join(dir, 'unet');
  if (!fs.existsSync(path.join(unet, 'model.onnx'))) {
    const b = spawnSync(process.execPath, [CLI, 'model', 'build', family, '--full', '-o', unet], { stdio: 'inherit' });
    if (b.status !== 0) throw new Error('model build failed');
  }
  const spec = path.join(dir, 'bench.hollow');
  fs.writeFileSync(spec, `hollow preset "${family === 'sdxl' ? 'sdxl-mid' : '39.2%'}"\nlora rank 128 alpha 128\nemit precompute infer\n`);
  const out = path.join(dir, 'out');
  run('inspect', [path.join(unet, 'model.onnx')]);
  run('compile', [path.join(unet, 'model.onnx'), spec, out]);
  run('load', [out, 'precompute']);
  run('load', [out, 'infer']);
  if (!argv.includes('--keep')) fs.rmSync(dir, { recursive: true, force: true });
}

main(process.argv.slice(2)).catch((e) => {
  console.error(e);
  process.exit(1);
});
