/**
 * Lets each tensor of a training graph be freed when its last reader has run, instead of being
 * kept for a later tensor of its size (the training graphs, last).
 *
 * Why: onnxruntime's allocation planner gives each output the buffer of a dead tensor of the same
 * size, decided once from the static shapes. A buffer therefore stays allocated from its first
 * tensor's birth to its last one's death, idle in between: on full SD 2.1 39.2% at 64x64 latents,
 * ~1000 MiB held at the step's peak for ~510 MiB of live tensors (tests/bench/liveness.ts), the
 * forward's buffers waiting for the backward's tensors of their shape. The C API has no switch
 * for that reuse (Python's `enable_mem_reuse` is not in it); the planner only leaves alone tensors
 * whose shape it does not know. So this pass hides the static shapes: every Reshape, Expand and
 * ConstantOfShape with a constant shape reads it through a Concat with an empty int64 tensor that
 * onnxruntime cannot fold (a Slice whose start and end are one runtime value of `sample`: always
 * empty, whatever the value). Shape inference then knows neither the length of the shape nor
 * the rank of the output, nor of anything computed from it, which is nearly the whole graph.
 *
 * At run time the shapes are what they were: every value, the loss and every gradient are bit for
 * bit the same. Tensors are allocated when produced and freed after their last reader; the manifest
 * marks the artifact `cpuArena` so that the runtime turns onnxruntime's CPU arena on, which reuses
 * freed memory for tensors of any size (without it every tensor is fresh pages from the kernel,
 * which made a 64x64 step ~3x slower).
 *
 * Shape constants with the same value share one Concat: onnxruntime's planner scans every dead
 * buffer for each output it still knows the shape of (the Concats' own rank-1 outputs), so a
 * Concat per Reshape made session start quadratic (17 s instead of 4 on SD 2.1).
 *
 * Our own shape inference keeps the static types in memory (the passes that run before this one
 * and describeArtifact read them); only the written graph loses them: the pass drops the value
 * infos the source file carried, which onnxruntime would merge back in.
 */
import { GraphBuilder, tensorFromTyped } from '../compiler/builder';
import { DataType } from '../compiler/dtype';
import { Graph, Value } from '../compiler/ir';
import { Pass } from '../compiler/pass';
import { constantOfValue } from '../compiler/shape-inference';
import { SAMPLE } from '../compiler/manifest';
import { ArtifactState } from './lib/artifact-state';

/** Node name prefix of the pass's nodes (the liveness bench sees through them: revealShapes). */
export const OPAQUE_SCOPE = '/opaque-shape';

/** The shape operand of the ops whose output shape comes from a constant tensor. */
const SHAPE_OPERAND: Readonly<Record<string, number>> = { Reshape: 1, Expand: 1, ConstantOfShape: 0 };

export interface ReleaseDeadBuffersResult {
  /** Nodes whose constant shape now reads through the opaque tail. */
  hidden: number;
  /** Distinct shape values (one Concat each). */
  shapes: number;
}

export function releaseDeadBuffers(g: Graph): ReleaseDeadBuffersResult {
  const sample = g.inputs.find((v) => v.name === SAMPLE);
  if (!sample) throw new Error(`internal: release-dead-buffers needs the graph input ${SAMPLE}`);
  const targets = g.nodes.filter((n) => {
    const i = SHAPE_OPERAND[n.opType];
    const s = i === undefined || n.domain !== '' ? undefined : n.inputs[i];
    return !!s && constantOfValue(s)?.dataType === DataType.INT64;
  });
  for (const v of g.values.values()) v.hasValueInfo = false;
  if (!targets.length) return { hidden: 0, shapes: 0 };

  const b = new GraphBuilder(g, OPAQUE_SCOPE);
  const at = { before: g.nodes[0] };
  const int64s = (name: string, values: number[]) =>
    g.addInitializer(tensorFromTyped(g.freshName(`${OPAQUE_SCOPE}/${name}`), BigInt64Array.from(values, BigInt), [values.length]));
  const flat = b.op('Reshape', [sample, int64s('flat', [-1])], undefined, at);
  const one = b.op('Slice', [flat, int64s('start', [0]), int64s('end', [1])], undefined, at);
  const index = b.op('Cast', [one], { to: DataType.INT64 }, at);
  // Both bounds are the same index, clamped alike: always empty, and onnxruntime cannot know it.
  const empty = b.op('Slice', [int64s('zero', [0]), index, index], undefined, at);

  const byValue = new Map<string, Value>();
  for (const n of targets) {
    const i = SHAPE_OPERAND[n.opType];
    const shape = n.inputs[i]!;
    const c = constantOfValue(shape)!;
    const key = JSON.stringify(c.data ?? { splat: c.splat, dims: c.dims });
    let hidden = byValue.get(key);
    if (!hidden) {
      // Before the first reader (targets are in graph order), after the shape's Constant node.
      hidden = b.op('Concat', [shape, empty], { axis: 0 }, { before: n });
      hidden.type = shape.type ? { ...shape.type } : undefined;
      byValue.set(key, hidden);
    }
    g.setInput(n, i, hidden);
  }
  return { hidden: targets.length, shapes: byValue.size };
}

/**
 * The graph as onnxruntime would see it without the pass (for tools that infer shapes, such as
 * tests/bench/liveness.ts): each shape read through the opaque tail reads the constant again.
 */
export function revealShapes(g: Graph): void {
  for (const n of [...g.nodes]) {
    if (n.opType === 'Concat' && n.name.startsWith(`${OPAQUE_SCOPE}/`)) g.replaceAllUsesWith(n.outputs[0], n.inputs[0]!);
  }
  g.eliminateDeadNodes();
}

/** grads.onnx and train.onnx: static shapes hidden from onnxruntime's buffer reuse. */
export const releaseDeadBuffersPass: Pass<ArtifactState> = {
  name: 'release-dead-buffers',
  ensures: ['cpuArena'],
  run(model, state) {
    const r = releaseDeadBuffers(model.graph);
    state.cpuArena = true;
    return { changed: r.hidden > 0, summary: `${r.hidden} constant shapes (${r.shapes} distinct) hidden from onnxruntime's planner` };
  },
};
