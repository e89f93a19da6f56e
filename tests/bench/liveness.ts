/**
 * Where a training step's anonymous memory goes: runs one step of an artifact with onnxruntime's
 * profiler on (synthetic inputs; the runtime's session options), takes the execution order from the
 * profile, and replays it on the graph: every intermediate tensor lives from its producer to its
 * last reader (graph inputs and weights excluded). Since passes/memory/release-dead-buffers.ts hides the
 * training graphs' shapes from onnxruntime's planner (the tool reveals them: revealShapes), that is
 * also what the step holds, plus the CPU arena's slack. Before, the planner gave an output the
 * buffer of a dead tensor of the same shape, and such a buffer stayed allocated from its first
 * tensor's birth to its last one's death, idle in between; the tool still replays that planner
 * over the same order, for graphs compiled before it ("held with onnxruntime's
 * buffer reuse": each output takes the most recently freed buffer of its type and shape; Reshape,
 * Squeeze, Unsqueeze, Flatten and Identity share their input's buffer; in-place outputs and kernel
 * scratch such as a ConvTranspose's column buffer are not modeled): on full SD 2.1 39.2% at 64x64,
 * 2026-12-04, 1002 MiB held at the peak against 508 MiB live, next to the allocation trace's 1173
 * MiB. HELD_DETAIL=1 lists the buffers held there by shape; TAG=phase|blockphase|levelphase
 * replays a planner that never hands a buffer across forward and backward (and blocks, levels), a
 * what-if (phase: 1002 -> 738 MiB). Names match the profile only for nodes the basic optimizations
 * keep (fused nodes are missing; an optimized model from train-step's --dump-optimized names them,
 * but onnxruntime runs a reloaded optimized model in another order, so its figures are not the
 * step's). Sessions take the training graphs' config (CSE off: it would merge the recomputed
 * clones back). Prints the peak, the tensors alive there grouped by producing op and by
 * forward/backward, and the biggest of them. Not run by jest.
 *
 *   npx tsc -p . && node dist/tests/bench/liveness.js <out>/grads.onnx [--threads 2] [--top 30] [--config '{}']
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import * as ort from 'onnxruntime-node';
import { DataType } from '../../compiler/dtype';
import { Value } from '../../compiler/ir';
import { loadModel } from '../../compiler/serde';
import { inferShapes, staticBytes } from '../../compiler/shape-inference';
import { revealShapes } from '../../passes/memory/release-dead-buffers';
import { toFloat16 } from '../../runtime/formats/float16';
import { createSession, sessionExtra } from '../../runtime/ort/session';
import { TRAINING_SESSION_CONFIG } from '../../runtime/train/step-session';

const MiB = 2 ** 20;
const ALIASING = new Set(['Reshape', 'Squeeze', 'Unsqueeze', 'Flatten', 'Identity']);


async function main(argv: string[]): Promise<void> {
  const file = argv[0];
  const opt = (name: string, fallback: string) => (argv.includes(name) ? argv[argv.indexOf(name) + 1] : fallback);
  const threads = Number(opt('--threads', '2'));
  const top = Number(opt('--top', '30'));
  const model = loadModel(file);
  // The shapes the compiler hid from onnxruntime's planner (the run itself reads the graph as written).
  revealShapes(model.graph);
  // onnxruntime's optimized models keep few value types: the planner's reuse needs every shape.
  try {
    inferShapes(model);
  } catch (e) {
    console.log(`shape inference failed (${(e as Error).message}): buffers of unknown shape are not reused below`);
  }
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
      extra: sessionExtra({ ...TRAINING_SESSION_CONFIG, ...JSON.parse(opt('--config', '{}')) }),
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
      else {
        const values = Float32Array.from({ length: n }, (_, i) => (input.name.includes('lora_') ? 0.01 : 1) * Math.sin(i * 0.37));
        // A float16 export's training graphs take its float16 inputs (sample, conditioning) as they are.
        feeds[input.name] =
          input.type!.elemType === DataType.FLOAT16 ? new ort.Tensor('float16', toFloat16(values), shape) : new ort.Tensor('float32', values, shape);
      }
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
    /** Element type and dims: onnxruntime's planner hands a dead tensor's buffer to an output of the same. */
    shape?: string;
  }
  const lives: Life[] = [];
  const outputs = new Set(g.outputs.map((v) => v.name));
  // onnxruntime's Reshape, Squeeze, Unsqueeze, Flatten and Identity hand out their input's buffer.
  const lifeOf = new Map<string, Life>();
  order.forEach((o, i) => {
    const node = byName.get(o.name);
    if (!node) return;
    const source = ALIASING.has(node.opType) && node.inputs[0] ? lifeOf.get(node.inputs[0].name) : undefined;
    if (source) {
      const v = node.outputs[0];
      const readers = v.uses.map((u) => position.get(u.node.name) ?? -1);
      source.death = Math.max(source.death, outputs.has(v.name) ? order.length : Math.max(i, ...readers));
      lifeOf.set(v.name, source);
      return;
    }
    const known = node.outputs.map((v) => staticBytes(v));
    const unknownCount = known.filter((b) => b === undefined).length;
    const rest = Math.max(0, o.outputSize - known.reduce<number>((a, b) => a + (b ?? 0), 0));
    node.outputs.forEach((v, k) => {
      const bytes = known[k] ?? rest / Math.max(1, unknownCount);
      const readers = v.uses.map((u) => position.get(u.node.name) ?? -1);
      const death = outputs.has(v.name) ? order.length : Math.max(i, ...readers);
      const shape = known[k] === undefined ? undefined : `${v.type!.elemType}:${v.type!.shape!.join('x')}${experimentTag(node.name)}`;
      const life = { value: v.name, op: node.opType, node: node.name, bytes, birth: i, death, shape };
      lives.push(life);
      lifeOf.set(v.name, life);
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
  const unprofiled = new Map<string, number>();
  for (const n of g.nodes) if (!position.has(n.name)) unprofiled.set(n.opType, (unprofiled.get(n.opType) ?? 0) + 1);
  console.log(
    `not in the profile: ${[...unprofiled]
      .sort((a, b) => b[1] - a[1])
      .slice(0, 12)
      .map(([k, n]) => `${k} ${n}`)
      .join(', ')}`,
  );
  const held = heldWithReuse(lives, order.length);
  console.log(
    `held with onnxruntime's buffer reuse (a dead tensor's buffer kept for the next output of its shape): peak ${(held.peak / MiB).toFixed(0)} MiB at kernel ${held.at} (${order[held.at]?.name}) in ${held.buffers} buffers`,
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

function experimentTag(name: string): string {
  const mode = process.env.TAG ?? '';
  const phase = name.includes('/grad') || name.includes('/recompute') ? 'b' : 'f';
  const block = /^\/(down_blocks\.\d+|up_blocks\.\d+|mid_block)\/(attentions|resnets|upsamplers|downsamplers)\.\d+/.exec(name)?.[0] ?? '';
  const level = /^\/(down_blocks\.\d+|up_blocks\.\d+)/.exec(name)?.[0] ?? '';
  if (mode === 'phase') return phase;
  if (mode === 'block') return block;
  if (mode === 'blockphase') return block + phase;
  if (mode === 'levelphase') return level + phase;
  return '';
}

/**
 * onnxruntime's planner (allocation_planner.cc) walked over the same order: each output takes the
 * most recently freed buffer of its exact type and shape, else a new one; a buffer is held from its
 * first tensor's birth to its last tensor's death. In-place outputs and kernel scratch are not modeled.
 */
function heldWithReuse(
  lives: readonly { bytes: number; birth: number; death: number; shape?: string }[],
  kernels: number,
): { peak: number; at: number; buffers: number } {
  const byBirth = new Map<number, (typeof lives)[number][]>();
  for (const l of lives) byBirth.set(l.birth, [...(byBirth.get(l.birth) ?? []), l]);
  const dying = new Map<number, number[]>();
  const chains: { bytes: number; start: number; end: number; shape?: string }[] = [];
  const free: number[] = [];
  for (let i = 0; i < kernels; i++) {
    for (const l of byBirth.get(i) ?? []) {
      const k = l.shape === undefined ? -1 : free.findIndex((c) => chains[c].shape === l.shape);
      let c: number;
      if (k >= 0) {
        c = free[k];
        free.splice(k, 1);
        chains[c].end = Math.max(chains[c].end, l.death);
      } else {
        c = chains.push({ bytes: l.bytes, start: i, end: l.death, shape: l.shape }) - 1;
      }
      dying.set(l.death, [...(dying.get(l.death) ?? []), c]);
    }
    for (const c of dying.get(i) ?? []) free.unshift(c);
  }
  const delta = new Float64Array(kernels + 2);
  for (const c of chains) {
    delta[c.start] += c.bytes;
    delta[Math.min(kernels, c.end) + 1] -= c.bytes;
  }
  let held = 0;
  let peak = 0;
  let at = 0;
  for (let i = 0; i <= kernels; i++) {
    held += delta[i];
    if (held > peak) [peak, at] = [held, i];
  }
  if (process.env.HELD_DETAIL) {
    const live = new Map<string, number>();
    for (const l of lives) if (l.birth <= at && l.death >= at) live.set(l.shape ?? '?', (live.get(l.shape ?? '?') ?? 0) + 1);
    const heldBy = new Map<string, { n: number; bytes: number }>();
    for (const c of chains)
      if (c.start <= at && c.end >= at) {
        const e = heldBy.get(c.shape ?? '?') ?? { n: 0, bytes: 0 };
        heldBy.set(c.shape ?? '?', { n: e.n + 1, bytes: e.bytes + c.bytes });
      }
    for (const [k, e] of [...heldBy].sort((a, b) => b[1].bytes - a[1].bytes).slice(0, 25))
      console.log(`  ${(e.bytes / MiB).toFixed(1)} MiB held in ${e.n} buffers of ${k}, ${live.get(k) ?? 0} live`);
  }
  return { peak, at, buffers: chains.length };
}

main(process.argv.slice(2)).catch((e) => {
  console.error(e);
  process.exit(1);
});
