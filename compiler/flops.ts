/**
 * FLOPs of a graph with static shapes, counted from its nodes (no weight is read).
 *
 * Convention: 2 × multiply-adds for the layers that multiply (Conv, ConvTranspose, MatMul, Gemm,
 * Einsum; attention is its MatMuls), as the paper and most FLOP tables count; every other op
 * (elementwise, normalizations, softmax, reductions) is counted apart at one FLOP per output
 * element, so the two can be compared or summed.
 */
import { HollowcError } from './errors';
import { Graph, Node, Value } from './ir';

export interface FlopCount {
  /** 2 × multiply-adds of Conv/ConvTranspose/MatMul/Gemm/Einsum. */
  matrix: number;
  /** The part of `matrix` with no weight among its operands (attention's QKᵀ and AV). */
  activationMatrix: number;
  /** One per output element of every other op. */
  other: number;
  /** matrix FLOPs by op type. */
  byOp: Record<string, number>;
}

function dims(v: Value | null | undefined, node: Node): number[] {
  const shape = v?.type?.shape;
  if (!shape || !shape.every((d): d is number => typeof d === 'number')) {
    throw new HollowcError(`FLOPs need static shapes: ${v?.name ?? 'an input'} of node ${node.name} has [${shape?.join(', ') ?? '?'}]`);
  }
  return shape;
}

const product = (xs: readonly number[]) => xs.reduce((a, b) => a * b, 1);

function einsumFlops(node: Node): number {
  const equation = node.attributes.find((a) => a.name === 'equation');
  const text = equation?.type === 'string' ? String(equation.value) : '';
  const [lhs] = text.replace(/\s/g, '').split('->');
  const sizes = new Map<string, number>();
  lhs.split(',').forEach((term, i) => {
    const d = dims(node.inputs[i], node);
    [...term].forEach((c, k) => sizes.set(c, d[k]));
  });
  // Every index combination is one multiply-add.
  return 2 * product([...sizes.values()]);
}

/** Matrix FLOPs of one node, or undefined for an op counted under `other`. */
export function matrixFlops(node: Node): number | undefined {
  switch (node.opType) {
    case 'Conv': {
      const out = dims(node.outputs[0], node);
      const w = dims(node.inputs[1], node);
      // w = [Cout, Cin/group, kh, kw]: each output element is Cin/group·kh·kw multiply-adds.
      return 2 * product(out) * product(w.slice(1));
    }
    case 'ConvTranspose': {
      const x = dims(node.inputs[0], node);
      const w = dims(node.inputs[1], node);
      // w = [Cin, Cout/group, kh, kw]: each input element feeds Cout/group·kh·kw outputs.
      return 2 * product(x) * product(w.slice(1));
    }
    case 'MatMul': {
      const a = dims(node.inputs[0], node);
      return 2 * product(dims(node.outputs[0], node)) * a[a.length - 1];
    }
    case 'Gemm': {
      const a = dims(node.inputs[0], node);
      const transA = node.attributes.find((x) => x.name === 'transA')?.value === 1;
      return 2 * product(dims(node.outputs[0], node)) * (transA ? a[0] : a[1]);
    }
    case 'Einsum':
      return einsumFlops(node);
    default:
      return undefined;
  }
}

const FREE = new Set([
  'Shape',
  'Constant',
  'Identity',
  'Reshape',
  'Squeeze',
  'Unsqueeze',
  'Flatten',
  'Cast',
  'Gather',
  'Slice',
  'Concat',
  'Split',
  'Transpose',
  'Expand',
]);

/** Ops that pass a weight on unchanged in value (layout, dtype, dequantization). */
const WEIGHT_VIEWS = new Set(['Transpose', 'Reshape', 'Identity', 'Cast', 'Squeeze', 'Unsqueeze', 'DequantizeLinear']);

/** Whether `v` is an initializer, or one read through layout ops (a dynamo export's Transpose of a Linear weight). */
export function isWeightView(v: Value | null | undefined): boolean {
  if (!v) return false;
  if (v.initializer) return true;
  const p = v.producer;
  return !!p && WEIGHT_VIEWS.has(p.opType) && isWeightView(p.inputs[0]);
}

/**
 * `weightInputs`: graph inputs that are weights too (the LoRA tensors fed to infer.onnx and the
 * training graphs): a product with one of them, or with an initializer, through layout ops or a
 * DequantizeLinear, is a layer with weights, not an activation product.
 */
export function countFlops(g: Graph, weightInputs: ReadonlySet<string> = new Set()): FlopCount {
  const count: FlopCount = { matrix: 0, activationMatrix: 0, other: 0, byOp: {} };
  const inputs = new Set(g.inputs);
  const holdsWeights = (v: Value | null | undefined): boolean => {
    if (!v) return false;
    if (v.initializer || (weightInputs.has(v.name) && inputs.has(v))) return true;
    const p = v.producer;
    return !!p && WEIGHT_VIEWS.has(p.opType) && holdsWeights(p.inputs[0]);
  };
  for (const node of g.nodes) {
    const m = matrixFlops(node);
    if (m !== undefined) {
      count.matrix += m;
      if (!node.inputs.some(holdsWeights)) count.activationMatrix += m;
      count.byOp[node.opType] = (count.byOp[node.opType] ?? 0) + m;
    } else if (!FREE.has(node.opType)) {
      // Data movement is free; arithmetic costs one FLOP per output element.
      for (const o of node.outputs)
        if (o.type?.shape?.every((d) => typeof d === 'number')) count.other += product(o.type.shape as number[]);
    }
  }
  return count;
}
