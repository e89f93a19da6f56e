/**
 * What a training step's anonymous memory holds at its peak, buffer by buffer: runs steps of a
 * compiled folder (synthetic inputs, the runtime's training-session options, onnxruntime's
 * profiler on) in a child process under an LD_PRELOAD shim (tests/bench/alloc-trace.c, built with
 * gcc into a temporary folder) that records every allocation of 64 KiB or more. The last step's
 * allocations are aligned with the profile's kernel times, so each block alive at the peak is named
 * by the kernel that allocated it. tests/bench/liveness.ts says what the tensors need; this says
 * what the process holds: onnxruntime's planner hands a dead tensor's buffer to the next output of
 * the same shape, so a buffer allocated by an early block can sit idle at the peak, waiting for a
 * later tensor of its shape (how issue 12's per-head attention and GEGLU Split were found). Linux
 * and gcc only. Not run by jest.
 *
 *   npx tsc -p . && node dist/tests/bench/alloc-trace.js <out> [--mode host|graph] [--steps 2] [--threads 2] [--top 25]
 */
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import type * as Ort from 'onnxruntime-node';
import { MALLOC_ENV } from '../../cli/allocator';
import { LEARNING_RATE, STEP, isLoraParam, optimizerStateOwner, readManifest } from '../../compiler/manifest';
import { sessionExtra } from '../../runtime/ort/session';
import { OptimizerMode, describeTrainGraph } from '../../runtime/train/step-graph';
import { StepRunner } from '../../runtime/train/step-runner';
import { TRAINING_SESSION_CONFIG } from '../../runtime/train/step-session';
import { syntheticParams, syntheticValue } from './synthetic';

const MiB = 2 ** 20;
const SHIM = path.join(__dirname, '..', '..', '..', 'tests', 'bench', 'alloc-trace.c');

interface ChildArgs {
  out: string;
  mode: OptimizerMode;
  steps: number;
  threads: number;
  dir: string;
}

/** What the child leaves for the parent: when each run started (hrtime ns) and the profile. */
interface Anchor {
  runStartsNs: string[];
  profile: string;
}

interface ProfileEvent {
  cat: string;
  name: string;
  ts: number;
  dur: number;
  args?: { output_size?: string };
}

async function child(a: ChildArgs): Promise<void> {
  const ort = await import('onnxruntime-node');
  const manifest = readManifest(a.out);
  const graph = describeTrainGraph(a.out, manifest, undefined, a.mode);
  const session = await ort.InferenceSession.create(graph.file, {
    enableCpuMemArena: false,
    enableMemPattern: false,
    graphOptimizationLevel: 'basic',
    intraOpNumThreads: a.threads,
    logSeverityLevel: 3,
    extra: sessionExtra(TRAINING_SESSION_CONFIG),
    enableProfiling: true,
    profileFilePrefix: path.join(a.dir, 'profile'),
  });
  const dims: Record<string, number> = { batch: graph.batch, sequence: 77 };
  const owners = new Set(graph.params.map((p) => p.name));
  const feeds: Record<string, Ort.Tensor> = {};
  for (const input of graph.inputs.values()) {
    if (isLoraParam(input.name) || input.name === LEARNING_RATE || input.name === STEP || optimizerStateOwner(input.name, owners)) continue;
    const shape = input.shape.map((d) => (typeof d === 'number' ? d : dims[String(d)]));
    const data = Float32Array.from({ length: shape.reduce((x, y) => x * y, 1) }, (_, i) => syntheticValue(input.name, i));
    feeds[input.name] = new ort.Tensor('float32', data, shape);
  }
  const params = syntheticParams(graph.params);
  const runner = new StepRunner(session, graph, manifest.training.optimizer);
  const runStartsNs: string[] = [];
  for (let s = 0; s < a.steps; s++) {
    runStartsNs.push(String(process.hrtime.bigint()));
    await runner.step(feeds, params, 1e-4, s + 1);
  }
  session.endProfiling();
  const profile = path.join(
    a.dir,
    fs.readdirSync(a.dir).find((f) => f.startsWith('profile'))!,
  );
  const anchor: Anchor = { runStartsNs, profile };
  fs.writeFileSync(path.join(a.dir, 'anchor.json'), JSON.stringify(anchor));
}

interface Block {
  bornNs: number;
  bytes: number;
}

function analyse(dir: string, top: number): void {
  const anchor = JSON.parse(fs.readFileSync(path.join(dir, 'anchor.json'), 'utf8')) as Anchor;
  const events = JSON.parse(fs.readFileSync(anchor.profile, 'utf8')) as ProfileEvent[];
  const runs = events.filter((e) => e.name === 'model_run').sort((x, y) => x.ts - y.ts);
  const last = runs.length - 1;
  const run = runs[last];
  const startNs = Number(anchor.runStartsNs[last]);
  const endNs = startNs + run.dur * 1000;
  // Profile times are µs from the profiler's start: the run's start in both clocks aligns them.
  const toProfileUs = (ns: number) => run.ts + (ns - startNs) / 1000;
  const kernels = events
    .filter((e) => e.cat === 'Node' && e.name.endsWith('_kernel_time') && e.ts >= run.ts && e.ts <= run.ts + run.dur)
    .sort((x, y) => x.ts - y.ts);
  const kernelAt = (ns: number): number => {
    const us = toProfileUs(ns);
    let lo = 0;
    let hi = kernels.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (kernels[mid].ts <= us) lo = mid;
      else hi = mid - 1;
    }
    return lo;
  };
  const name = (k: number) => kernels[k]?.name.slice(0, -'_kernel_time'.length) ?? '?';

  const live = new Map<string, Block>();
  let current = 0;
  let peak = 0;
  let peakNs = 0;
  let atPeak = new Map<string, Block>();
  for (const line of fs.readFileSync(path.join(dir, 'trace.txt'), 'utf8').split('\n')) {
    if (!line) continue;
    const [t, op, p, n] = line.split(' ');
    const ns = Number(t);
    if (op === '0') {
      const b = live.get(p);
      if (b) ((current -= b.bytes), live.delete(p));
      continue;
    }
    live.set(p, { bornNs: ns, bytes: Number(n) });
    current += Number(n);
    if (ns >= startNs && ns <= endNs && current > peak) [peak, peakNs, atPeak] = [current, ns, new Map(live)];
  }
  const blocks = [...atPeak.values()];
  const before = blocks.filter((b) => b.bornNs < startNs);
  const during = blocks.filter((b) => b.bornNs >= startNs).sort((x, y) => y.bytes - x.bytes);
  const sum = (bs: Block[]) => bs.reduce((a, b) => a + b.bytes, 0) / MiB;
  const peakKernel = kernelAt(peakNs);
  console.log(
    `last step (run ${last + 1} of ${runs.length}, ${(run.dur / 1000).toFixed(0)} ms, ${kernels.length} kernels): ` +
      `allocations of 64 KiB or more peak at ${(peak / MiB).toFixed(0)} MiB during kernel ${peakKernel} (${name(peakKernel)})`,
  );
  console.log(`  held from before the step (LoRA values, moments, session): ${sum(before).toFixed(0)} MiB in ${before.length} blocks`);
  console.log(`  allocated during the step: ${sum(during).toFixed(0)} MiB in ${during.length} blocks`);
  const bySize = new Map<number, number>();
  for (const b of during) bySize.set(b.bytes, (bySize.get(b.bytes) ?? 0) + 1);
  console.log(
    '  by size: ' +
      [...bySize]
        .sort((x, y) => y[0] * y[1] - x[0] * x[1])
        .slice(0, 12)
        .map(([bytes, n]) => `${n} x ${(bytes / MiB).toFixed(2)} MiB`)
        .join(', '),
  );
  // Many equal blocks (one per attention block or per layer) hide below --top: the same sums by the
  // allocating kernel's op (its name without the layer path) and size.
  const byOp = new Map<string, { n: number; bytes: number }>();
  for (const b of during) {
    const op = name(kernelAt(b.bornNs))
      .replace(/\/(down_blocks|up_blocks|resnets|attentions|transformer_blocks|upsamplers|downsamplers)\.\d+/g, '')
      .replace(/_(head|rows)\d+/g, '');
    const key = `${(b.bytes / MiB).toFixed(2)} MiB ${op}`;
    const e = byOp.get(key) ?? { n: 0, bytes: 0 };
    byOp.set(key, { n: e.n + 1, bytes: e.bytes + b.bytes });
  }
  console.log('  by size and allocating op:');
  for (const [key, e] of [...byOp].sort((x, y) => y[1].bytes - x[1].bytes).slice(0, top))
    console.log(`    ${(e.bytes / MiB).toFixed(0).padStart(5)} MiB = ${e.n} x ${key}`);
  console.log(`  largest blocks, with the kernel that allocated them (kernels before the peak):`);
  for (const b of during.slice(0, top)) {
    const k = kernelAt(b.bornNs);
    console.log(`    ${(b.bytes / MiB).toFixed(2).padStart(7)} MiB  ${name(k)}  (${peakKernel - k})`);
  }
}

async function main(argv: string[]): Promise<void> {
  if (argv[0] === '--child') return child(JSON.parse(argv[1]) as ChildArgs);
  const out = argv[0];
  const opt = (flag: string, fallback: string) => (argv.includes(flag) ? argv[argv.indexOf(flag) + 1] : fallback);
  if (!out || !fs.existsSync(path.join(out, 'manifest.json')))
    throw new Error('usage: alloc-trace.js <compiled folder> [--mode host|graph] [--steps 2]');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hollowc-alloc-trace-'));
  try {
    const shim = path.join(dir, 'alloc-trace.so');
    const cc = spawnSync('gcc', ['-O2', '-shared', '-fPIC', '-o', shim, SHIM, '-ldl'], { encoding: 'utf8' });
    if (cc.status !== 0) throw new Error(`building ${SHIM} with gcc failed: ${cc.error?.message ?? cc.stderr}`);
    const args: ChildArgs = {
      out: path.resolve(out),
      mode: opt('--mode', 'host') as OptimizerMode,
      steps: Number(opt('--steps', '2')),
      threads: Number(opt('--threads', '2')),
      dir,
    };
    const r = spawnSync(process.execPath, [__filename, '--child', JSON.stringify(args)], {
      stdio: 'inherit',
      env: { ...process.env, ...MALLOC_ENV, LD_PRELOAD: shim, ALLOC_TRACE_OUT: path.join(dir, 'trace.txt') },
    });
    if (r.status !== 0) throw new Error(`the traced step failed with exit ${r.status}`);
    analyse(dir, Number(opt('--top', '25')));
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

main(process.argv.slice(2)).catch((e) => {
  console.error(e);
  process.exit(1);
});
