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
 * onnxruntime cannot fold (a Slice whose start and end are one runtime value of the graph input
 * `loss_weight`, cast to int64: always empty, whatever the value; under WebGPU the Cast runs on
 * the device and its 8 bytes are copied to the host once per step for the CPU's shape
 * arithmetic). Shape inference then knows neither the length of the shape nor the rank of the
 * output, nor of anything computed from it, which is nearly the whole graph. The
 * stored weights that are widened at each use (`base int8`, float16) are read through such a
 * Reshape too, so that their float32 copies are unplanned as well.
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
import { GraphBuilder, tensorFromTyped } from '../../compiler/builder';
import { DataType } from '../../compiler/dtype';
import { Graph, Node, Value } from '../../compiler/ir';
import { Pass } from '../../compiler/pass';
import { constantOfValue } from '../../compiler/shape-inference';
import { LOSS_WEIGHT } from '../../compiler/manifest';
import { ArtifactState } from '../lib/artifact-state';

/** Node name prefix of the pass's nodes (the liveness bench sees through them: revealShapes). */
export const OPAQUE_SCOPE = '/opaque-shape';

/** The shape operand of the ops whose output shape comes from a constant tensor. */
const SHAPE_OPERAND: Readonly<Record<string, number>> = { Reshape: 1, Expand: 1, ConstantOfShape: 0 };

export interface ReleaseDeadBuffersResult {
  /** Nodes whose constant shape now reads through the opaque tail. */
  hidden: number;
  /** Distinct shape values (one Concat each). */
  shapes: number;
  /** Weight widenings (DequantizeLinear, Cast) that now read their weight through an opaque Reshape. */
  weights: number;
}

/** A stored weight widened to float32 at a use (`base int8`'s DequantizeLinear, a float16 weight's Cast). */
function widenedWeight(n: Node): Value | undefined {
  const w = n.inputs[0];
  if (n.domain !== '' || !w?.initializer) return undefined;
  const widened = n.opType === 'DequantizeLinear' || (n.opType === 'Cast' && w.initializer.dataType === DataType.FLOAT16);
  return widened ? w : undefined;
}

export function releaseDeadBuffers(g: Graph): ReleaseDeadBuffersResult {
  const source = g.inputs.find((v) => v.name === LOSS_WEIGHT);
  if (!source) throw new Error(`internal: release-dead-buffers needs the graph input ${LOSS_WEIGHT}`);
  const targets = g.nodes.filter((n) => {
    const i = SHAPE_OPERAND[n.opType];
    const s = i === undefined || n.domain !== '' ? undefined : n.inputs[i];
    return !!s && constantOfValue(s)?.dataType === DataType.INT64;
  });
  const widening = g.nodes.filter((n) => widenedWeight(n));
  for (const v of g.values.values()) v.hasValueInfo = false;
  if (!targets.length && !widening.length) return { hidden: 0, shapes: 0, weights: 0 };

  const b = new GraphBuilder(g, OPAQUE_SCOPE);
  const at = { before: g.nodes[0] };
  const int64s = (name: string, values: number[]) =>
    g.addInitializer(tensorFromTyped(g.freshName(`${OPAQUE_SCOPE}/${name}`), BigInt64Array.from(values, BigInt), [values.length]));
  // From the batch's loss weights ([batch]): a chain of a few elements is shape arithmetic, which GPU
  // providers leave on the CPU, where the input is fed (a Slice of `sample` ran on WebGPU and cost
  // a copy to the host).
  const weights = b.op('Cast', [source], { to: DataType.INT64 }, at);
  const index = b.op('Slice', [weights, int64s('start', [0]), int64s('end', [1])], undefined, at);
  // Both bounds are the same index, clamped alike: always empty, and onnxruntime cannot know it.
  const empty = b.op('Slice', [int64s('zero', [0]), index, index], undefined, at);

  const byValue = new Map<string, Value>();
  /** The opaque copy of a shape (one per value), made before `before`. */
  const hiddenShape = (key: string, shape: () => Value, before: Node): Value => {
    let hidden = byValue.get(key);
    if (!hidden) {
      const s = shape();
      hidden = b.op('Concat', [s, empty], { axis: 0 }, { before });
      hidden.type = s.type ? { ...s.type } : undefined;
      byValue.set(key, hidden);
    }
    return hidden;
  };
  for (const n of targets) {
    const i = SHAPE_OPERAND[n.opType];
    const shape = n.inputs[i]!;
    const c = constantOfValue(shape)!;
    // Before the first reader (targets are in graph order), after the shape's Constant node.
    g.setInput(n, i, hiddenShape(`shape ${JSON.stringify(c.data ?? { splat: c.splat, dims: c.dims })}`, () => shape, n));
  }
  // A widened weight's shape is its stored weight's: onnxruntime would plan its float32 copies, and
  // kept each one's buffer from the forward's use to the backward's copy (+560 MiB under base int8
  // at 64x64). Read through a Reshape to its own (hidden) shape, the weight has none either.
  for (const n of widening) {
    const w = n.inputs[0]!;
    const dims = w.initializer!.dims;
    // Keyed apart from the Reshape targets' shapes: those Concats sit later in the graph, these first.
    const shape = hiddenShape(`weight ${JSON.stringify(dims)}`, () => int64s('dims', dims), at.before);
    const opaque = b.op('Reshape', [w, shape], undefined, { name: 'Reshape_weight', before: n });
    opaque.type = w.type ? { ...w.type } : undefined;
    g.setInput(n, 0, opaque);
  }
  // The Constant nodes of shapes whose value another Constant also holds are read no more.
  g.eliminateDeadNodes();
  return { hidden: targets.length, shapes: byValue.size, weights: widening.length };
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
    return {
      changed: r.hidden + r.weights > 0,
      summary: `${r.hidden} constant shapes and ${r.weights} widened weights' shapes (${r.shapes} distinct) hidden from onnxruntime's planner`,
    };
  },
};
