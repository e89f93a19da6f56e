/**
 * Issue 5's and issue 12's measurement: on a full-size SD 2.1 (builder, CPU EP, latents 32x32,
 * batch 1, LoRA r128 on attn1/attn2 q,k,v,out.0), peak RSS and step time of one training step at
 * the 39.2% cut vs `hollow none` (plain LoRA fine-tuning) vs plain UNet inference, with the
 * optimizer in the graph (train.onnx) and on the host (grads.onnx + runtime/train/host-adamw.ts). Each
 * configuration runs in its own process (its peak RSS is its own), with the session options
 * hollowc's runtime uses. A sampler thread reads RssFile / RssAnon from /proc/self/status every
 * 20 ms: file-backed pages are the mmapped external-data weights (reclaimable), anonymous pages
 * are what the graph and the runtime allocate. Rows `two-path` and `baked` (with --only) run one
 * UNet evaluation of the 39.2% compile's infer.onnx (path 1 and path 2 sharing the base weights,
 * LoRA as inputs) and of `hollowc bake`'s infer-baked.onnx, next to `inference` (model.onnx), with
 * the same session options (issue 12 part 3). Not run by jest.
 *
 * `--ep webgpu` (or cuda, ...) opens every row's session on that provider (no CPU fallback: a row
 * that cannot start fails); where `nvidia-smi` answers, the parent samples the device's memory.used
 * every 100 ms while each row runs and records its peak and its baseline before the row started.
 * `warmStepSeconds` is the median of the steps after the first (the first run of a session also
 * pays onnxruntime's one-time work; with --steps 2 `medianStepSeconds` is the slower of the two).
 *
 * `--family sdxl` (default sd21) builds a full-size SDXL UNet instead (use its own --dir; 10.3 GB of
 * weights, 5.1 GB with `--form '--dtype fp16'`) and compiles its specs with SDXL's conditioning
 * (encoder_hidden_states [1, 77, 2048], text_embeds [1, 1280], time_ids [1, 6]); the LoRA is the
 * same (r128 on attn1/attn2 q,k,v,out.0). Rows whose preset is SD's (`hollowed-*`, `two-path`,
 * `baked`, `precompute`, `h115-host`, `h733-host`) are SD 2.1 rows, refused under --only; SDXL's
 * hollowed rows are `sdxl-mid-host`, `sdxl-mid-int8` and `sdxl-mid-fp16` (the paper's SDXL cut,
 * the whole mid block; host AdamW, base fp32 / int8 / fp16), left out of sd21's defaults. `inference`
 * and the `lora-*` rows run on either; their JSON lines say `"family":"sdxl"` (sd21's lines are as
 * before). SDXL at 1024 px: `--family sdxl --latent 128 --steps 2 --only sdxl-mid-int8`, and within
 * 6 GiB `--only sdxl-mid-int8-blocks-a96` (`recompute blocks`, `chunks attention 96MiB`). With --only,
 * `hollowed-blocks` and `hollowed-int8-blocks` are the 39.2% rows under `recompute blocks`.
 *
 *   npx tsc -p . && node dist/tests/bench/train-step.js [--dir /tmp/x] [--keep] [--steps 3] [--threads 2]
 *       [--only hollowed-host,inference] [--config '{"session.key":"value"}'] [--dump-optimized] [--malloc default]
 *       [--latent 64] [--ep webgpu] [--webgpu-cache simple|bucket] [--form '--exporter dynamo --dtype fp16'] (the UNet's export form; use its own --dir)
 *       [--family sdxl] [--model /tmp/real-sd21/model.onnx] [--rank 128]
 *
 * `--model <model.onnx>` runs the same rows on that UNet instead of building one (a user's export,
 * e.g. torch 1.13's of ../shared/oracle: `export_real.py sd21 OUT`; `--family sd15` for an SD 1.5
 * one); the rows' JSON lines and the table's heading name it. A --dir holds the folders compiled
 * from one model: a folder compiled from another model (or spec) is compiled again.
 */
import { spawn, spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { Worker } from 'worker_threads';
import { LEARNING_RATE, LOSS_WEIGHT, STEP, TIMESTEP, isLoraParam, optimizerStateOwner, readManifest } from '../../compiler/manifest';
import { MALLOC_ENV } from '../../cli/allocator';
import { BENCH_FAMILIES, BenchFamily, benchSpec, conditioningOf } from './bench-spec';
import { toHalfBits } from '../../runtime/formats/float16';
import { syntheticParams, syntheticValue } from './synthetic';
import { presetsFor } from '../../dsl/presets';
import { EXECUTION_PROVIDERS, ExecutionProvider, WebGpuBufferCache } from '../../runtime/ort/session';
import { OptimizerMode, describeTrainGraph } from '../../runtime/train/step-graph';
import { StepRunner } from '../../runtime/train/step-runner';
import { trainingSession } from '../../runtime/train/step-session';

const MiB = 2 ** 20;
const CLI = path.join(__dirname, '..', '..', 'cli', 'main.js');

/** Peak memory seen by a sampler thread (the main thread is blocked inside session.run). */
interface Peaks {
  /** Highest RssAnon + RssFile + RssShmem sample, and its split. */
  totalMiB: number;
  anonAtTotalMiB: number;
  fileAtTotalMiB: number;
  /** Highest RssAnon and RssFile samples (not necessarily at the same moment). */
  anonMiB: number;
  fileMiB: number;
  /** When the highest total was sampled, in ms since the phase began. */
  atMs: number;
}

const SAMPLER = `
const { parentPort, workerData } = require('worker_threads');
const fs = require('fs');
const phase = new Int32Array(workerData);
const peaks = {};
const field = (s, k) => Number(new RegExp(k + ':\\\\s+(\\\\d+)').exec(s)[1]) / 1024;
function tick() {
  const s = fs.readFileSync('/proc/self/status', 'utf8');
  const anon = field(s, 'RssAnon'), file = field(s, 'RssFile'), total = anon + file + field(s, 'RssShmem');
  const p = (peaks[Atomics.load(phase, 0)] ??= { totalMiB: 0, anonAtTotalMiB: 0, fileAtTotalMiB: 0, anonMiB: 0, fileMiB: 0, atMs: 0, since: Date.now() });
  if (total > p.totalMiB) Object.assign(p, { totalMiB: total, anonAtTotalMiB: anon, fileAtTotalMiB: file, atMs: Date.now() - p.since });
  p.anonMiB = Math.max(p.anonMiB, anon);
  p.fileMiB = Math.max(p.fileMiB, file);
}
const timer = setInterval(tick, 20);
parentPort.on('message', () => { tick(); clearInterval(timer); parentPort.postMessage(peaks); });
`;

const PHASES = ['start', 'load', 'step'] as const;

class Sampler {
  private readonly phase = new Int32Array(new SharedArrayBuffer(4));
  private readonly worker = new Worker(SAMPLER, { eval: true, workerData: this.phase.buffer });
  enter(phase: (typeof PHASES)[number]): void {
    Atomics.store(this.phase, 0, PHASES.indexOf(phase));
  }
  async stop(): Promise<Record<string, Peaks>> {
    const done = new Promise<Record<number, Peaks>>((resolve) => this.worker.once('message', resolve));
    this.worker.postMessage('stop');
    const raw = await done;
    await this.worker.terminate();
    const round = (p: Peaks) =>
      Object.fromEntries(
        Object.entries(p)
          .filter(([k]) => k !== 'since')
          .map(([k, v]) => [k, Math.round(v)]),
      ) as unknown as Peaks;
    return Object.fromEntries(Object.entries(raw).map(([i, p]) => [PHASES[Number(i)], round(p)]));
  }
}

function vmHwmMiB(): number {
  return Math.round(Number(/VmHWM:\s+(\d+)/.exec(fs.readFileSync('/proc/self/status', 'utf8'))![1]) / 1024);
}

interface ChildArgs {
  kind: 'inference' | 'train';
  /** The UNet, infer.onnx or infer-baked.onnx (inference), or the compiled folder (train). */
  file: string;
  mode: OptimizerMode;
  steps: number;
  threads: number;
  config: Record<string, string>;
  dump: boolean;
  /** Latent side (default 32). */
  latent?: number;
  /** Execution provider (default cpu). */
  ep?: ExecutionProvider;
  /** --webgpu-cache: the webgpu provider's storage buffer cache (default the runtime's). */
  webgpuCache?: WebGpuBufferCache;
}

async function child(a: ChildArgs): Promise<void> {
  const sampler = new Sampler();
  await new Promise((r) => setTimeout(r, 50));
  const ort = await import('onnxruntime-node');
  const { createSession, withArtifactConfig } = await import('../../runtime/ort/session');
  const t0 = Date.now();
  sampler.enter('load');
  const manifest = a.kind === 'train' ? readManifest(a.file) : undefined;
  const graph = manifest ? describeTrainGraph(a.file, manifest, undefined, a.mode) : undefined;
  const file = graph?.file ?? a.file;
  // The runtime's options: training graphs as runtime/train/step-session.ts trainingSession sets them.
  const base = graph
    ? trainingSession({ session: { intraOpThreads: a.threads, webgpuBufferCache: a.webgpuCache }, ep: a.ep })
    : { intraOpThreads: a.threads, optimization: 'all' as const, ep: a.ep, webgpuBufferCache: a.webgpuCache };
  // and the artifact's own session config (float16 weights: passes/precision/float16-weights.ts)
  const session = await createSession(
    file,
    withArtifactConfig(
      {
        ...base,
        config: { ...('config' in base ? base.config : {}), ...a.config },
        ...(a.dump ? { optimizedModelFile: `${file}.optimized.onnx` } : {}),
      },
      graph,
    ),
  );
  const loadSeconds = (Date.now() - t0) / 1000;
  // (torch's exports name the latents' channels too)
  const dims: Record<string, number> = { batch: 1, channels: 4, height: a.latent ?? 32, width: a.latent ?? 32, sequence: 77 };
  // Inference feeds follow the model's inputs: model.onnx's three, or infer.onnx's with
  // base_encoder_hidden_states and the LoRA tensors (synthetic, nonzero B).
  const inputs: { name: string; shape: (number | string | null)[]; dtype: string }[] = graph
    ? [...graph.inputs.values()].filter((i) => !graph.params.some((p) => p.name === i.name))
    : session.inputMetadata.map((m) => ({
        name: m.name,
        shape: m.isTensor ? [...m.shape] : [],
        dtype: m.isTensor ? m.type : 'float32',
      }));
  const feeds: Record<string, import('onnxruntime-node').Tensor> = {};
  for (const input of inputs) {
    if (
      graph &&
      (input.name === LEARNING_RATE || input.name === STEP || optimizerStateOwner(input.name, new Set(graph.params.map((p) => p.name))))
    )
      continue;
    const shape = input.shape.map((d) => (typeof d === 'number' ? d : dims[String(d)]));
    const length = shape.reduce((x, y) => x * y, 1);
    // Under `lora infer fp16` the two-path LoRA inputs are float16: made as such, so that no float32
    // copy waits for a garbage collection during the measured runs.
    feeds[input.name] =
      input.dtype === 'float16'
        ? new ort.Tensor(
            'float16',
            Uint16Array.from({ length }, (_, i) => toHalfBits(syntheticValue(input.name, i))),
            shape,
          )
        : new ort.Tensor(
            'float32',
            Float32Array.from({ length }, (_, i) => syntheticValue(input.name, i)),
            shape,
          );
  }
  const params = syntheticParams(graph?.params ?? [], manifest?.training.optimizer.state);
  const runner = graph ? new StepRunner(session, graph, manifest!.training.optimizer) : undefined;
  sampler.enter('step');
  const times: number[] = [];
  let loss = NaN;
  for (let s = 0; s < a.steps; s++) {
    const t = Date.now();
    if (runner) loss = await runner.step(feeds, params, 1e-4, s + 1);
    else await session.run(feeds);
    times.push((Date.now() - t) / 1000);
  }
  const peaks = await sampler.stop();
  const median = (xs: number[]) => [...xs].sort((x, y) => x - y)[Math.floor(xs.length / 2)];
  console.log(
    JSON.stringify({
      loadSeconds,
      stepSeconds: times,
      medianStepSeconds: median(times),
      ...(times.length > 1 ? { warmStepSeconds: median(times.slice(1)) } : {}),
      vmHwmMiB: vmHwmMiB(),
      maxRssMiB: Math.round((process.resourceUsage().maxRSS * 1024) / MiB),
      peaks,
      ...(Number.isNaN(loss) ? {} : { loss }),
    }),
  );
}

/**
 * The device's memory.used (MiB, first GPU) every 100 ms while a row runs, from `nvidia-smi`'s
 * loop mode; undefined where there is no nvidia-smi (the CPU machines).
 */
function nvidiaMemory(): { stop(): Promise<{ deviceBeforeMiB: number; devicePeakMiB: number } | undefined> } {
  const first = spawnSync('nvidia-smi', ['--query-gpu=memory.used', '--format=csv,noheader,nounits', '-i', '0'], { encoding: 'utf8' });
  const before = Number(first.stdout?.trim());
  if (first.status !== 0 || !Number.isFinite(before)) return { stop: async () => undefined };
  let peak = before;
  const loop = spawn('nvidia-smi', ['--query-gpu=memory.used', '--format=csv,noheader,nounits', '-i', '0', '-lms', '100'], {
    stdio: ['ignore', 'pipe', 'ignore'],
  });
  loop.stdout.setEncoding('utf8').on('data', (chunk: string) => {
    for (const line of chunk.split('\n')) if (Number.isFinite(Number(line.trim())) && line.trim()) peak = Math.max(peak, Number(line));
  });
  return {
    stop: async () => {
      loop.kill();
      return { deviceBeforeMiB: before, devicePeakMiB: peak };
    },
  };
}

/** Each row's process starts as `hollowc train` starts itself (cli/allocator.ts), unless --malloc default. */
async function spawnJson(args: string[], env: NodeJS.ProcessEnv): Promise<Record<string, unknown>> {
  const device = nvidiaMemory();
  const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'inherit'], env });
  let stdout = '';
  child.stdout.setEncoding('utf8').on('data', (c: string) => (stdout += c));
  const status = await new Promise<number | null>((resolve) => child.on('close', resolve));
  const memory = await device.stop();
  if (status !== 0) throw new Error(`${args.join(' ')} failed with exit ${status}`);
  const line = stdout.trim().split('\n').pop()!;
  return { ...JSON.parse(line), ...(memory ?? {}) };
}

interface Row {
  id: string;
  label: string;
  kind: ChildArgs['kind'];
  hollow?: string;
  mode: OptimizerMode;
  /** `base int8` / `base fp16`: the frozen weights of the training graph stored int8 / float16 */
  base?: 'int8' | 'fp16';
  /** More spec lines (`recompute blocks`, `chunks ...`); the row's compile gets its own folder, `-<tag>`. */
  spec?: { tag: string; lines: string[] };
  /** 0: no LoRA (full fine-tuning rows); default --rank. */
  rank?: number;
  /** Only with --only. */
  extra?: boolean;
}

const ROWS: Row[] = [
  // Issue 12 part 3 (with --only): one UNet evaluation of the two-path infer.onnx and of the baked one.
  {
    id: 'two-path',
    label: 'two-path `infer.onnx` (39.2%, LoRA as inputs)',
    kind: 'inference',
    hollow: 'preset "39.2%"',
    mode: 'graph',
    extra: true,
  },
  {
    id: 'two-path-fp16',
    label: 'two-path `infer.onnx`, `lora infer fp16` (39.2%, LoRA as float16 inputs)',
    kind: 'inference',
    hollow: 'preset "39.2%"',
    mode: 'graph',
    extra: true,
  },
  {
    id: 'baked',
    label: 'baked `infer-baked.onnx` (39.2%, LoRA folded in)',
    kind: 'inference',
    hollow: 'preset "39.2%"',
    mode: 'graph',
    extra: true,
  },
  {
    id: 'precompute',
    label: '`precompute.onnx` (39.2%, the base UNet up to the hollow activation)',
    kind: 'inference',
    hollow: 'preset "39.2%"',
    mode: 'graph',
    extra: true,
  },
  { id: 'inference', label: 'UNet inference (`model.onnx`)', kind: 'inference', mode: 'graph' },
  { id: 'lora-graph', label: 'LoRA FT, `hollow none`, AdamW in graph (`train.onnx`)', kind: 'train', hollow: 'none', mode: 'graph' },
  { id: 'lora-host', label: 'LoRA FT, `hollow none`, AdamW on host (`grads.onnx`)', kind: 'train', hollow: 'none', mode: 'host' },
  { id: 'hollowed-graph', label: 'Hollowed 39.2%, AdamW in graph (`train.onnx`)', kind: 'train', hollow: 'preset "39.2%"', mode: 'graph' },
  { id: 'hollowed-host', label: 'Hollowed 39.2%, AdamW on host (`grads.onnx`)', kind: 'train', hollow: 'preset "39.2%"', mode: 'host' },
  {
    id: 'hollowed-int8',
    label: 'Hollowed 39.2%, `base int8`, AdamW on host',
    kind: 'train',
    hollow: 'preset "39.2%"',
    mode: 'host',
    base: 'int8',
  },
  {
    id: 'hollowed-fp16',
    label: 'Hollowed 39.2%, `base fp16`, AdamW on host',
    kind: 'train',
    hollow: 'preset "39.2%"',
    mode: 'host',
    base: 'fp16',
  },
  {
    id: 'hollowed-blocks',
    label: 'Hollowed 39.2%, `recompute blocks`, AdamW on host',
    kind: 'train',
    hollow: 'preset "39.2%"',
    mode: 'host',
    spec: { tag: 'blocks', lines: ['recompute blocks'] },
    extra: true,
  },
  {
    id: 'hollowed-int8-blocks',
    label: 'Hollowed 39.2%, `base int8`, `recompute blocks`, AdamW on host',
    kind: 'train',
    hollow: 'preset "39.2%"',
    mode: 'host',
    base: 'int8',
    spec: { tag: 'blocks', lines: ['recompute blocks'] },
    extra: true,
  },
  {
    id: 'lora-int8',
    label: 'LoRA FT, `hollow none`, `base int8`, AdamW on host',
    kind: 'train',
    hollow: 'none',
    mode: 'host',
    base: 'int8',
    extra: true,
  },
  // For hollowc plan's predicted-vs-measured table (not run by default: --only).
  { id: 'h115-host', label: 'Hollowed 11.5%, AdamW on host', kind: 'train', hollow: 'preset "11.5%"', mode: 'host', extra: true },
  { id: 'h733-host', label: 'Hollowed 73.3%, AdamW on host', kind: 'train', hollow: 'preset "73.3%"', mode: 'host', extra: true },
  // --family sdxl: the paper's SDXL cut (the whole mid block) in the 39.2% rows' three forms.
  {
    id: 'sdxl-mid-host',
    label: 'Hollowed `sdxl-mid`, AdamW on host (`grads.onnx`)',
    kind: 'train',
    hollow: 'preset "sdxl-mid"',
    mode: 'host',
  },
  {
    id: 'sdxl-mid-int8',
    label: 'Hollowed `sdxl-mid`, `base int8`, AdamW on host',
    kind: 'train',
    hollow: 'preset "sdxl-mid"',
    mode: 'host',
    base: 'int8',
  },
  {
    id: 'sdxl-mid-fp16',
    label: 'Hollowed `sdxl-mid`, `base fp16`, AdamW on host',
    kind: 'train',
    hollow: 'preset "sdxl-mid"',
    mode: 'host',
    base: 'fp16',
  },
  {
    id: 'sdxl-mid-int8-blocks',
    label: 'Hollowed `sdxl-mid`, `base int8`, `recompute blocks`, AdamW on host',
    kind: 'train',
    hollow: 'preset "sdxl-mid"',
    mode: 'host',
    base: 'int8',
    spec: { tag: 'blocks', lines: ['recompute blocks'] },
    extra: true,
  },
  // SDXL at 1024 px within 6 GiB: level 2's 80 MiB self-attention maps whole (not 20 per-head
  // chains per map: 55k graph nodes instead of 146k, and onnxruntime holds ~5 KiB per node).
  // Issue 31: full fine-tuning (`train base "*"`, no LoRA) with the weights' AdamW state on the host,
  // float32 or 8-bit moments, without a cut and at 39.2%.
  ...(['none', 'preset "39.2%"'] as const).flatMap((hollow) =>
    (['fp32', '8bit'] as const).map(
      (state): Row => ({
        id: `full-${hollow === 'none' ? 'none' : 'hollowed'}${state === '8bit' ? '-8bit' : ''}`,
        label: `full fine-tuning (\`train base "*"\`), \`hollow ${hollow === 'none' ? 'none' : '39.2%'}\`, ${state} moments, AdamW on host`,
        kind: 'train',
        hollow,
        mode: 'host',
        rank: 0,
        spec: { tag: `full-${state}`, lines: ['train base "*"', ...(state === '8bit' ? ['optimizer adamw8bit'] : [])] },
        extra: true,
      }),
    ),
  ),
  {
    id: 'sdxl-mid-int8-blocks-a96-8bit',
    label: 'Hollowed `sdxl-mid`, `base int8`, `recompute blocks`, `chunks attention 96MiB`, `optimizer adamw8bit`, AdamW on host',
    kind: 'train',
    hollow: 'preset "sdxl-mid"',
    mode: 'host',
    base: 'int8',
    spec: { tag: 'blocks-a96-8bit', lines: ['recompute blocks', 'chunks attention 96MiB', 'optimizer adamw8bit'] },
    extra: true,
  },
  {
    id: 'sdxl-mid-int8-blocks-a96-8bit-g16',
    label:
      'Hollowed `sdxl-mid`, `base int8`, `recompute blocks`, `chunks attention 96MiB`, `optimizer adamw8bit`, `gradients fp16`, AdamW on host',
    kind: 'train',
    hollow: 'preset "sdxl-mid"',
    mode: 'host',
    base: 'int8',
    spec: { tag: 'blocks-a96-8bit-g16', lines: ['recompute blocks', 'chunks attention 96MiB', 'optimizer adamw8bit', 'gradients fp16'] },
    extra: true,
  },
  {
    id: 'sdxl-mid-int8-blocks-a96',
    label: 'Hollowed `sdxl-mid`, `base int8`, `recompute blocks`, `chunks attention 96MiB`, AdamW on host',
    kind: 'train',
    hollow: 'preset "sdxl-mid"',
    mode: 'host',
    base: 'int8',
    spec: { tag: 'blocks-a96', lines: ['recompute blocks', 'chunks attention 96MiB'] },
    extra: true,
  },
];

/** Whether a row runs on `family`: its preset is one of the family's (`hollow none` and the plain UNet run on any). */
function rowFits(row: Row, family: BenchFamily): boolean {
  const preset = /^preset "(.*)"$/.exec(row.hollow ?? '');
  return !preset || presetsFor(family).includes(preset[1]);
}

async function main(argv: string[]): Promise<void> {
  const at = argv.indexOf('--child');
  if (at >= 0) return child(JSON.parse(argv[at + 1]) as ChildArgs);
  const opt = (name: string, fallback: string) => (argv.includes(name) ? argv[argv.indexOf(name) + 1] : fallback);
  const dir = opt('--dir', fs.mkdtempSync(path.join(os.tmpdir(), 'hollowc-train-bench-')));
  const steps = Number(opt('--steps', '3'));
  // Latent side of the training shapes (32 = 256x256 images; 64 = 512x512).
  const latent = Number(opt('--latent', '32'));
  const threads = Number(opt('--threads', '2'));
  const config = JSON.parse(opt('--config', '{}')) as Record<string, string>;
  const only = opt('--only', '').split(',').filter(Boolean);
  const ep = opt('--ep', 'cpu') as ExecutionProvider;
  const webgpuCache = opt('--webgpu-cache', '') as WebGpuBufferCache | '';
  if (!EXECUTION_PROVIDERS.includes(ep)) throw new Error(`--ep ${ep}: one of ${EXECUTION_PROVIDERS.join(', ')}`);
  const family = opt('--family', 'sd21') as BenchFamily;
  if (!BENCH_FAMILIES.includes(family)) throw new Error(`--family ${family}: one of ${BENCH_FAMILIES.join(', ')}`);
  const rows = ROWS.filter((r) => (only.length ? only.includes(r.id) : !r.extra && rowFits(r, family)));
  const unfit = rows.filter((r) => !rowFits(r, family)).map((r) => r.id);
  if (unfit.length) throw new Error(`--only ${unfit.join(',')}: not a ${family} row (its preset is another family's)`);
  const env = opt('--malloc', 'hollowc') === 'default' ? process.env : { ...process.env, ...MALLOC_ENV };
  const model = opt('--model', '');
  if (model && !fs.existsSync(model)) throw new Error(`--model ${model}: no such file`);
  if (model && argv.includes('--form'))
    throw new Error('--model runs the rows on that export: --form (the builder export form) does not apply');
  const unet = model ? path.resolve(model) : path.join(dir, 'unet', 'model.onnx');
  fs.mkdirSync(dir, { recursive: true });
  if (!fs.existsSync(unet)) {
    // --form '--exporter dynamo' / '--dtype fp16' / '--timestep scalar': the export form the rows run on
    const form = opt('--form', '').split(' ').filter(Boolean);
    const b = spawnSync(process.execPath, [CLI, 'model', 'build', family, '--full', ...form, '-o', path.dirname(unet)], {
      stdio: 'inherit',
    });
    if (b.status !== 0) throw new Error('model build failed');
  }
  const conditioning = conditioningOf(unet, family, !!model);
  // (a smaller rank for a small model: a rank above a layer's width is refused)
  const rank = Number(opt('--rank', '128'));
  const compiled = new Map<string, { out: string; compileSeconds?: number; compilePeakRssMiB?: number }>();
  const compile = (
    hollow: string,
    base: 'fp32' | 'int8' | 'fp16' = 'fp32',
    emit = 'train grads',
    loraInfer: 'fp32' | 'fp16' = 'fp32',
    more?: Row['spec'],
    loraRank = rank,
  ) => {
    const out = path.join(
      dir,
      `out-${hollow === 'none' ? 'none' : /\d/.test(hollow) ? hollow.replace(/\D/g, '') : hollow.replace(/^preset "(.*)"$/, '$1')}${latent === 32 ? '' : `-${latent}`}${base === 'fp32' ? '' : `-${base}`}${emit.includes('infer') ? '-infer' : ''}${emit === 'precompute' ? '-precompute' : ''}${loraInfer === 'fp16' ? '-fp16lora' : ''}${more ? `-${more.tag}` : ''}`,
    );
    if (compiled.has(out)) return compiled.get(out)!;
    const text = benchSpec(hollow, latent, base, emit, loraInfer, family, more?.lines, conditioning, loraRank);
    const manifestFile = path.join(out, 'manifest.json');
    // A folder compiled from the same spec and model (--dir reused) is not compiled again.
    const before = fs.existsSync(manifestFile) ? JSON.parse(fs.readFileSync(manifestFile, 'utf8')) : undefined;
    if (before?.spec?.text === text && before?.model?.file === path.resolve(unet)) {
      compiled.set(out, { out });
      return compiled.get(out)!;
    }
    const spec = path.join(dir, `${path.basename(out)}.hollow`);
    fs.writeFileSync(spec, text);
    const t = Date.now();
    const c = spawnSync('/usr/bin/time', ['-f', '%M', process.execPath, CLI, 'compile', unet, spec, '-o', out], { encoding: 'utf8' });
    if (c.status !== 0) throw new Error(`compile ${hollow} failed: ${c.stderr}`);
    compiled.set(out, {
      out,
      compileSeconds: (Date.now() - t) / 1000,
      compilePeakRssMiB: Math.round(Number(c.stderr.trim().split('\n').pop()) / 1024),
    });
    return compiled.get(out)!;
  };
  const inferModel = (which: 'two-path' | 'two-path-fp16' | 'baked' | 'precompute') => {
    if (which === 'two-path-fp16') return { out: path.join(compile('preset "39.2%"', 'fp32', 'infer', 'fp16').out, 'infer.onnx') };
    if (which === 'precompute') return { out: path.join(compile('preset "39.2%"', 'fp32', 'precompute').out, 'precompute.onnx') };
    const { out } = compile('preset "39.2%"', 'fp32', 'train grads infer');
    if (which === 'two-path') return { out: path.join(out, 'infer.onnx') };
    const baked = path.join(out, 'infer-baked.onnx');
    if (!fs.existsSync(baked)) {
      const b = spawnSync(process.execPath, [CLI, 'bake', out, '--lora', path.join(out, 'lora-init.safetensors'), '-o', baked], {
        stdio: 'inherit',
      });
      if (b.status !== 0) throw new Error('bake failed');
    }
    return { out: baked };
  };
  const results: (Row & {
    medianStepSeconds: number;
    warmStepSeconds?: number;
    vmHwmMiB: number;
    peaks: Record<string, Peaks>;
    devicePeakMiB?: number;
    deviceBeforeMiB?: number;
  })[] = [];
  for (const row of rows) {
    const target =
      row.kind === 'train'
        ? compile(row.hollow!, row.base, row.spec?.lines.includes('optimizer adamw8bit') ? 'grads' : 'train grads', 'fp32', row.spec, row.rank)
        : row.hollow
          ? inferModel(row.id as 'two-path' | 'two-path-fp16' | 'baked' | 'precompute')
          : { out: unet };
    const args: ChildArgs = {
      kind: row.kind,
      file: target.out,
      mode: row.mode,
      steps,
      threads,
      config,
      dump: argv.includes('--dump-optimized'),
      latent,
      ep,
      ...(webgpuCache ? { webgpuCache } : {}),
    };
    const r = {
      ...row,
      ...(family === 'sd21' ? {} : { family }),
      ...(model ? { model: unet } : {}),
      ep,
      ...target,
      ...(await spawnJson([__filename, '--child', JSON.stringify(args)], env)),
    } as unknown as (typeof results)[number];
    console.log(JSON.stringify(r));
    results.push(r);
  }
  const date = new Date().toISOString().slice(0, 10);
  console.log(
    `\n${date}, ${family === 'sd21' ? '' : `${family}, `}${model ? `${unet}, ` : ''}latents ${latent}x${latent}, ${ep}, ${threads} threads, ${steps} steps per row (median; warm: the steps after the first), one process per row, malloc ${env === process.env ? 'as started' : JSON.stringify(MALLOC_ENV)}${Object.keys(config).length ? `, session config ${JSON.stringify(config)}` : ''}\n`,
  );
  const device = results.some((r) => r.devicePeakMiB !== undefined);
  console.log(
    `| configuration | peak RSS (step) | file-backed | anonymous | peak anonymous | VmHWM | step | warm step |${device ? ' device memory.used (peak, before) |' : ''}`,
  );
  console.log(`|---|---|---|---|---|---|---|---|${device ? '---|' : ''}`);
  for (const r of results) {
    const p = r.peaks.step;
    const used = device ? ` ${r.devicePeakMiB ?? '?'} MiB (${r.deviceBeforeMiB ?? '?'}) |` : '';
    console.log(
      `| ${r.label} | ${p.totalMiB} MiB | ${p.fileAtTotalMiB} MiB | ${p.anonAtTotalMiB} MiB | ${p.anonMiB} MiB | ${r.vmHwmMiB} MiB | ${r.medianStepSeconds.toFixed(2)} s | ${r.warmStepSeconds?.toFixed(2) ?? '-'} s |${used}`,
    );
  }
  const by = (id: string) => results.find((r) => r.id === id);
  const ratio = (a: string, b: string) => {
    const x = by(a);
    const y = by(b);
    if (!x || !y) return;
    const pr = (x.peaks.step.totalMiB / y.peaks.step.totalMiB).toFixed(3);
    const ar = (x.peaks.step.anonAtTotalMiB / y.peaks.step.anonAtTotalMiB).toFixed(3);
    const warm = x.warmStepSeconds && y.warmStepSeconds ? `, warm step ${(x.warmStepSeconds / y.warmStepSeconds).toFixed(3)}` : '';
    console.log(
      `${a}/${b}: peak RSS ${pr} (VmHWM ${(x.vmHwmMiB / y.vmHwmMiB).toFixed(3)}, anonymous ${ar}), step time ${(x.medianStepSeconds / y.medianStepSeconds).toFixed(3)}${warm}`,
    );
  };
  console.log('');
  for (const h of ['hollowed-graph', 'hollowed-host']) for (const b of ['inference', 'lora-graph', 'lora-host']) ratio(h, b);
  ratio('lora-host', 'lora-graph');
  ratio('hollowed-host', 'hollowed-graph');
  ratio('hollowed-int8', 'hollowed-host');
  ratio('hollowed-int8', 'inference');
  ratio('hollowed-fp16', 'hollowed-host');
  ratio('hollowed-fp16', 'hollowed-int8');
  ratio('two-path', 'inference');
  ratio('two-path', 'baked');
  ratio('two-path-fp16', 'inference');
  ratio('two-path-fp16', 'baked');
  for (const x of ['sdxl-mid-host', 'sdxl-mid-int8', 'sdxl-mid-fp16']) for (const b of ['inference', 'lora-host']) ratio(x, b);
  ratio('sdxl-mid-int8', 'sdxl-mid-host');
  ratio('sdxl-mid-fp16', 'sdxl-mid-host');
  if (!argv.includes('--keep') && !argv.includes('--dir')) fs.rmSync(dir, { recursive: true, force: true });
}

main(process.argv.slice(2)).catch((e) => {
  console.error(e);
  process.exit(1);
});
