/**
 * Where a training step's anonymous memory goes: runs one step of an artifact with onnxruntime's
 * profiler on (synthetic inputs; the runtime's session options), takes the execution order from the
 * profile, and replays it on the graph: every intermediate tensor lives from its producer to its
 * last reader (graph inputs and weights excluded). That is what the tensors need, not what the
 * process holds: onnxruntime's planner gives an output the buffer of a dead tensor of the same
 * shape, and such a buffer stays allocated from its first tensor's birth to its last one's death,
 * idle in between (on full SD 2.1 39.2% at the step's peak: 140 MiB of live tensors, 260 MiB of
 * idle buffers, from an allocation trace). Its in-place reuse is ignored too. Names match the
 * profile only for nodes the basic optimizations keep: give it the optimized model
 * (`optimizedModelFilePath`, as train-step's --dump-optimized writes) to count fused nodes.
 * Prints the peak, the tensors alive there grouped by producing op and by forward/backward, and
 * the biggest of them. Not run by jest.
 *
 *   npx tsc -p . && node dist/tests/bench/liveness.js <out>/grads.onnx [--threads 2] [--top 30]
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import * as ort from 'onnxruntime-node';
import { elementSize } from '../../compiler/dtype';
import { Value } from '../../compiler/ir';
import { loadModel } from '../../compiler/serde';
import { createSession, sessionExtra } from '../../runtime/ort/session';

const MiB = 2 ** 20;

function bytesOf(v: Value): number | undefined {
  const shape = v.type?.shape;
  if (!shape || shape.some((d) => typeof d !== 'number')) return undefined;
  return (shape as number[]).reduce((a, b) => a * b, 1) * (elementSize(v.type!.elemType) ?? 4);
}

async function main(argv: string[]): Promise<void> {
  const file = argv[0];
  const opt = (name: string, fallback: string) => (argv.includes(name) ? argv[argv.indexOf(name) + 1] : fallback);
  const threads = Number(opt('--threads', '2'));
  const top = Number(opt('--top', '30'));
  const model = loadModel(file);
  const g = model.graph;
  const cwd = process.cwd();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hollowc-liveness-'));
  process.chdir(dir);
  let profileFile: string;
  try {
    const session = await createSession(path.resolve(cwd, file), {
      intraOpThreads: threads,
      optimization: 'basic',
      memPattern: false,
      config: JSON.parse(opt('--config', '{}')),
    });
    await session.release();
    // Profiling is a session option: a second session with it on.
    const profiled = await ort.InferenceSession.create(path.resolve(cwd, file), {
      enableCpuMemArena: false,
      enableMemPattern: false,
      graphOptimizationLevel: 'basic',
      intraOpNumThreads: threads,
      enableProfiling: true,
      profileFilePrefix: 'profile',
      extra: sessionExtra(JSON.parse(opt('--config', '{}'))),
    });
    const feeds: Record<string, ort.Tensor> = {};
    for (const input of g.inputs) {
      const shape = input.type!.shape as number[];
      const n = shape.reduce((a, b) => a * b, 1);
      if (input.type!.elemType === 7)
        feeds[input.name] = new ort.Tensor(
          'int64',
          BigInt64Array.from({ length: n }, () => 1n),
          shape,
        );
      else
        feeds[input.name] = new ort.Tensor(
          'float32',
          Float32Array.from({ length: n }, (_, i) => (input.name.includes('lora_') ? 0.01 : 1) * Math.sin(i * 0.37)),
          shape,
        );
    }
    await profiled.run(feeds);
    profiled.endProfiling();
    await profiled.release();
    profileFile = path.join(
      dir,
      fs.readdirSync(dir).find((f) => f.startsWith('profile'))!,
    );
  } finally {
    process.chdir(cwd);
  }
  const events = (
    JSON.parse(fs.readFileSync(profileFile, 'utf8')) as {
      cat: string;
      name: string;
      ts: number;
      args?: { op_name?: string; output_size?: string };
    }[]
  )
    .filter((e) => e.cat === 'Node' && e.name.endsWith('_kernel_time'))
    .sort((a, b) => a.ts - b.ts);
  const byName = new Map(g.nodes.map((n) => [n.name, n]));
  const order = events.map((e) => ({ name: e.name.slice(0, -'_kernel_time'.length), outputSize: Number(e.args?.output_size ?? 0) }));
  const position = new Map<string, number>();
  order.forEach((o, i) => position.set(o.name, i));
  const missing = g.nodes.filter((n) => !position.has(n.name)).length;
  const unknown = order.filter((o) => !byName.has(o.name)).length;
  interface Life {
    value: string;
    op: string;
    node: string;
    bytes: number;
    birth: number;
    death: number;
  }
  const lives: Life[] = [];
  const outputs = new Set(g.outputs.map((v) => v.name));
  order.forEach((o, i) => {
    const node = byName.get(o.name);
    if (!node) return;
    const known = node.outputs.map(bytesOf);
    const unknownCount = known.filter((b) => b === undefined).length;
    const rest = Math.max(0, o.outputSize - known.reduce<number>((a, b) => a + (b ?? 0), 0));
    node.outputs.forEach((v, k) => {
      const bytes = known[k] ?? rest / Math.max(1, unknownCount);
      const readers = v.uses.map((u) => position.get(u.node.name) ?? -1);
      const death = outputs.has(v.name) ? order.length : Math.max(i, ...readers);
      lives.push({ value: v.name, op: node.opType, node: node.name, bytes, birth: i, death });
    });
  });
  const delta = new Float64Array(order.length + 2);
  for (const l of lives) {
    delta[l.birth] += l.bytes;
    delta[l.death + 1] -= l.bytes;
  }
  let live = 0;
  let peak = 0;
  let peakAt = 0;
  for (let i = 0; i <= order.length; i++) {
    live += delta[i];
    if (live > peak) [peak, peakAt] = [live, i];
  }
  const alive = lives.filter((l) => l.birth <= peakAt && l.death >= peakAt).sort((a, b) => b.bytes - a.bytes);
  console.log(
    `${file}: ${order.length} kernels run (${missing} graph nodes not in the profile, ${unknown} profiled nodes not in the graph)`,
  );
  console.log(
    `peak of live intermediates: ${(peak / MiB).toFixed(0)} MiB at kernel ${peakAt} (${order[peakAt]?.name}), ${alive.length} tensors`,
  );
  const group = (key: (l: Life) => string) => {
    const m = new Map<string, { bytes: number; n: number }>();
    for (const l of alive) {
      const k = key(l);
      const e = m.get(k) ?? { bytes: 0, n: 0 };
      e.bytes += l.bytes;
      e.n++;
      m.set(k, e);
    }
    return [...m].sort((a, b) => b[1].bytes - a[1].bytes);
  };
  const phase = (l: Life) => (l.node.includes('/grad') ? 'backward' : 'forward');
  console.log(
    'by phase: ' +
      group(phase)
        .map(([k, e]) => `${k} ${(e.bytes / MiB).toFixed(0)} MiB (${e.n})`)
        .join(', '),
  );
  console.log(
    'by producer: ' +
      group((l) => `${phase(l)} ${l.op}`)
        .slice(0, 16)
        .map(([k, e]) => `${k} ${(e.bytes / MiB).toFixed(0)} MiB (${e.n})`)
        .join(', '),
  );
  for (const l of alive.slice(0, top)) console.log(`  ${(l.bytes / MiB).toFixed(1)} MiB  ${l.op}  ${l.value}  [${l.birth}..${l.death}]`);
  if (process.env.KEEP_PROFILE) console.log(`profile: ${profileFile}`);
  else fs.rmSync(dir, { recursive: true, force: true });
}

main(process.argv.slice(2)).catch((e) => {
  console.error(e);
  process.exit(1);
});
