/**
 * Rewrites the inputs of InstanceNormalization and LayerNormalization so that GPU kernels compute
 * them as precisely as the CPU's, in every artifact. Both rewrites are exact in real arithmetic.
 *
 * 1. Centering: each normalization reads its input minus its own mean over the normalized axes.
 *    onnxruntime's WebGPU kernels compute the variance in one pass, E[x²] − E[x]², which cancels
 *    when a channel's mean is large next to its spread: with the mean 20 deviations away, the
 *    WebGPU output is 2.5e-5 (of its largest value) off the CPU's; centered first, 1.5e-7
 *    (tests/bench/webgpu-ops.ts). Normalization is shift-invariant.
 * 2. One epsilon per graph for InstanceNormalization: onnxruntime-node 1.30's WebGPU provider
 *    compiles one shader per input shape and reuses it for every InstanceNormalization of that
 *    shape in a session, whatever its epsilon (measured: two nodes on one input, epsilon 1e-5 and
 *    1e-6, both ran with 1e-6). SD's transformer GroupNorms (1e-6) and resnet GroupNorms (1e-5) meet
 *    at equal shapes, and the wrong epsilon put the sd15-tiny fixture's LoRA gradients 2.5e-4 off
 *    PyTorch's on WebGPU (6e-6 on the CPU). A node with epsilon e < e0 (the graph's largest) reads
 *    its centered input times √(e0/e) and gets epsilon e0: (s·x − s·μ)/√(s²σ² + s²e) is the same.
 *
 * The cost is a ReduceMean and a Sub per normalization (and a Mul where epsilon moves): transient
 * tensors the size of the input, freed by the normalization that reads them.
 *
 * Runs after differentiation: the backward rules recompute mean and variance two-pass from the
 * unchanged input (passes/lib/gradient-rules.ts normalizeBackward), so only forward normalizations
 * (and their recomputed clones) are rewritten and autodiff never sees the new ops.
 */
import { GraphBuilder } from '../../compiler/builder';
import { DataType } from '../../compiler/dtype';
import { Model, Node, Value } from '../../compiler/ir';
import { OpEmitter } from '../../compiler/op-emitter';
import { Pass } from '../../compiler/pass';
import { ArtifactState } from '../lib/artifact-state';

const EPSILON_DEFAULT = 1e-5;

/** The normalized axes of `n`, or undefined when they need a rank nobody knows. */
function normalizedAxes(n: Node, rank: number | undefined): number[] | undefined {
  if (n.opType === 'InstanceNormalization') return rank === undefined ? undefined : Array.from({ length: rank - 2 }, (_, i) => i + 2);
  const axis = n.attrInt('axis', -1);
  if (axis < 0) return Array.from({ length: -axis }, (_, i) => axis + i);
  return rank === undefined ? undefined : Array.from({ length: rank - axis }, (_, i) => axis + i);
}

export interface PreciseNormalizationResult {
  centered: number;
  /** InstanceNormalizations given the graph's largest epsilon (their input rescaled). */
  epsilonMoved: number;
  /** Normalizations not centered: not float32, rank unknown, or the Mean/InvStdDev outputs are read. */
  left: number;
}

export function makeNormalizationsPrecise(model: Model): PreciseNormalizationResult {
  const g = model.graph;
  const opset = model.opsetVersion('');
  const result: PreciseNormalizationResult = { centered: 0, epsilonMoved: 0, left: 0 };
  // Float32 only (the rescaling constant is float32; float16 graphs stay as exported), typed
  // on the input or, failing that, on the output.
  const float32 = (n: Node) => (n.inputs[0]?.type ?? n.outputs[0].type)?.elemType === DataType.FLOAT;
  const norms = g.nodes.filter(
    (n) => n.domain === '' && (n.opType === 'InstanceNormalization' || n.opType === 'LayerNormalization') && float32(n),
  );
  result.left = g.nodes.filter(
    (n) => (n.opType === 'InstanceNormalization' || n.opType === 'LayerNormalization') && !norms.includes(n),
  ).length;
  const epsilonOf = (n: Node) => n.attrFloat('epsilon', EPSILON_DEFAULT);
  const instanceEpsilon = Math.max(...norms.filter((n) => n.opType === 'InstanceNormalization').map(epsilonOf));
  for (const n of norms) {
    const x = n.inputs[0];
    if (!x) continue;
    const type = x.type ?? n.outputs[0].type!;
    const typed = (v: Value, shape = type.shape) => {
      if (!v.type) v.type = { elemType: DataType.FLOAT, shape: shape && [...shape] };
      return v;
    };
    const e = new OpEmitter(new GraphBuilder(g, `${n.name}/precise`), opset, n);
    let input = x;
    // LayerNormalization's Mean output would change (to ~0) when centered; its InvStdDev would not.
    const axes = normalizedAxes(n, type.shape?.length);
    if (axes && !n.outputs.slice(1).some((o) => o.uses.length > 0 || g.outputs.includes(o))) {
      const rank = type.shape?.length;
      const reducedShape = type.shape?.map((d, i) => (axes.some((a) => (a + (rank ?? 0)) % (rank ?? 1) === i) ? 1 : d));
      input = typed(e.op('Sub', [x, typed(e.reduce('ReduceMean', x, axes, true), reducedShape)]));
      result.centered++;
    } else result.left++;
    // The shader-sharing problem needs no axes: every float32 InstanceNormalization moves. An
    // epsilon of 0 cannot be reached by scaling (it would take an infinite factor).
    const epsilon = epsilonOf(n);
    if (n.opType === 'InstanceNormalization' && epsilon !== instanceEpsilon && epsilon > 0) {
      input = typed(e.op('Mul', [input, e.scalar(Math.sqrt(instanceEpsilon / epsilon), DataType.FLOAT)]));
      n.attributes = [...n.attributes.filter((a) => a.name !== 'epsilon'), { name: 'epsilon', type: 'float', value: instanceEpsilon }];
      result.epsilonMoved++;
    }
    if (input !== x) g.setInput(n, 0, input);
  }
  return result;
}

export const preciseNormalizationPass: Pass<ArtifactState> = {
  name: 'precise-normalization',
  run(model) {
    const r = makeNormalizationsPrecise(model);
    const left = r.left ? `, ${r.left} left (not float32, rank unknown or statistics read)` : '';
    return { changed: r.centered > 0, summary: `${r.centered} normalizations centered, ${r.epsilonMoved} given one epsilon${left}` };
  },
};
