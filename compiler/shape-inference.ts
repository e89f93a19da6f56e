/**
 * Static shape inference for the ops Stable Diffusion exports use (and the ops our gradient
 * rules emit). One rule per op type computes output element types and fixed shapes from the
 * inputs' types and, where an op needs them (Reshape targets, Slice bounds, axes inputs), from
 * constant inputs. `inferShapes` walks a graph in order, evaluating constant nodes on the way
 * (fold-constants.ts), and records `value.type` on every value. An op without a rule is an
 * error that names the op and the node.
 */
import { HollowcError } from './errors';
import { DataType, DataTypeCode, elementSize } from './dtype';
import { Model, Node, Value } from './ir';
import {
  ConstTensor,
  FOLD_LIMIT,
  OutputType,
  axesOf,
  broadcastShapes,
  constFromConstantNode,
  constFromTensor,
  evaluateNode,
  intList,
  isIntegerType,
  normalizeAxis,
  resolveSlice,
  sizeOf,
} from './constant-eval';

export type StaticType = OutputType;

export interface ShapeContext {
  readonly node: Node;
  readonly opset: number;
  /** Whether optional input `i` is given. */
  has(i: number): boolean;
  shape(i: number): number[];
  elemType(i: number): DataTypeCode;
  /** The constant value of input `i`, if known. */
  constant(i: number): ConstTensor | undefined;
  /** Input `i` as an int list; throws (naming the node) when it is not a known constant. */
  ints(i: number, what: string): number[];
  fail(message: string): never;
}

type ShapeRule = (c: ShapeContext) => StaticType[];

const sameAsInput = (c: ShapeContext): StaticType[] => [{ elemType: c.elemType(0), shape: c.shape(0) }];

function broadcastRule(outType?: DataTypeCode): ShapeRule {
  return (c) => {
    const shapes = c.node.inputs.map((_, i) => c.shape(i));
    return [{ elemType: outType ?? c.elemType(0), shape: broadcastShapes(shapes, c.node.name) }];
  };
}

function convOutputShape(c: ShapeContext, transposed: boolean): StaticType[] {
  const x = c.shape(0);
  const w = c.shape(1);
  const spatial = x.length - 2;
  const kernel = c.node.attrInts('kernel_shape', w.slice(2));
  const strides = c.node.attrInts('strides', new Array(spatial).fill(1));
  const dilations = c.node.attrInts('dilations', new Array(spatial).fill(1));
  const pads = c.node.attrInts('pads', new Array(2 * spatial).fill(0));
  const autoPad = c.node.attrString('auto_pad', 'NOTSET');
  const group = c.node.attrInt('group', 1);
  const out: number[] = [x[0], transposed ? w[1] * group : w[0]];
  if (!transposed && x[1] !== w[1] * group) c.fail(`input has ${x[1]} channels, weight expects ${w[1] * group}`);
  if (transposed && x[1] !== w[0]) c.fail(`input has ${x[1]} channels, weight expects ${w[0]}`);
  const outputShape = transposed ? c.node.attrInts('output_shape', []) : [];
  const outputPadding = c.node.attrInts('output_padding', new Array(spatial).fill(0));
  for (let i = 0; i < spatial; i++) {
    const extent = (kernel[i] - 1) * dilations[i] + 1;
    if (transposed) {
      if (outputShape.length) out.push(outputShape[outputShape.length - spatial + i]);
      else if (autoPad === 'SAME_UPPER' || autoPad === 'SAME_LOWER') out.push(x[i + 2] * strides[i]);
      else {
        const p = autoPad === 'VALID' ? 0 : pads[i] + pads[i + spatial];
        out.push(strides[i] * (x[i + 2] - 1) + outputPadding[i] + extent - p);
      }
    } else if (autoPad === 'SAME_UPPER' || autoPad === 'SAME_LOWER') {
      out.push(Math.ceil(x[i + 2] / strides[i]));
    } else {
      const p = autoPad === 'VALID' ? 0 : pads[i] + pads[i + spatial];
      out.push(Math.floor((x[i + 2] + p - extent) / strides[i]) + 1);
    }
  }
  return [{ elemType: c.elemType(0), shape: out }];
}

export function matmulShape(a: number[], b: number[], where: string): number[] {
  const a2 = a.length === 1 ? [1, a[0]] : a;
  const b2 = b.length === 1 ? [b[0], 1] : b;
  if (a2[a2.length - 1] !== b2[b2.length - 2]) throw new Error(`${where}: MatMul of [${a}] and [${b}]: inner dims differ`);
  const batch = broadcastShapes([a2.slice(0, -2), b2.slice(0, -2)], where);
  const out = [...batch];
  if (a.length !== 1) out.push(a2[a2.length - 2]);
  if (b.length !== 1) out.push(b2[b2.length - 1]);
  return out;
}

export interface EinsumTerms {
  inputs: string[];
  output: string;
}

/** Parses an einsum equation; ellipses are not supported. */
export function parseEinsum(equation: string, where: string): EinsumTerms {
  const eq = equation.replace(/\s+/g, '');
  if (eq.includes('.')) throw new Error(`${where}: einsum equations with '...' are not supported (${equation})`);
  const [lhs, rhs] = eq.split('->');
  const inputs = lhs.split(',');
  let output = rhs;
  if (output === undefined) {
    const counts = new Map<string, number>();
    for (const ch of inputs.join('')) counts.set(ch, (counts.get(ch) ?? 0) + 1);
    output = [...counts]
      .filter(([, k]) => k === 1)
      .map(([ch]) => ch)
      .sort()
      .join('');
  }
  return { inputs, output };
}

function reduceRule(inputSince: number, outType?: DataTypeCode): ShapeRule {
  return (c) => {
    const x = c.shape(0);
    const axes0 = axesOf(c.node, [undefined, c.constant(1)], c.opset, inputSince);
    if (axes0 === 'unknown') return c.fail('axes input is not a constant');
    const keep = c.node.attrInt('keepdims', 1) === 1;
    const axes =
      axes0 && axes0.length
        ? axes0.map((a) => normalizeAxis(a, x.length, c.node.name))
        : c.node.attrInt('noop_with_empty_axes', 0)
          ? []
          : x.map((_, i) => i);
    const shape = keep ? x.map((d, i) => (axes.includes(i) ? 1 : d)) : x.filter((_, i) => !axes.includes(i));
    return [{ elemType: outType ?? c.elemType(0), shape }];
  };
}

function argReduceRule(c: ShapeContext): StaticType[] {
  const x = c.shape(0);
  const axis = normalizeAxis(c.node.attrInt('axis', 0), x.length, c.node.name);
  const keep = c.node.attrInt('keepdims', 1) === 1;
  return [{ elemType: DataType.INT64, shape: keep ? x.map((d, i) => (i === axis ? 1 : d)) : x.filter((_, i) => i !== axis) }];
}

export function reshapeTarget(input: readonly number[], target: readonly number[], allowZero: boolean, where: string): number[] {
  const out = target.map((d, i) => (d === 0 && !allowZero ? input[i] : d));
  const minus = out.indexOf(-1);
  if (minus >= 0) {
    const known = out.reduce((a, d, i) => (i === minus ? a : a * d), 1);
    const total = sizeOf(input);
    if (known === 0 || total % known !== 0) throw new Error(`${where}: cannot reshape [${input}] to [${target}]`);
    out[minus] = total / known;
  }
  if (sizeOf(out) !== sizeOf(input)) throw new Error(`${where}: cannot reshape [${input}] (${sizeOf(input)} elements) to [${target}]`);
  return out;
}

function splitSizes(c: ShapeContext): number[] {
  const x = c.shape(0);
  const axis = normalizeAxis(c.node.attrInt('axis', 0), x.length, c.node.name);
  let sizes: number[] | undefined;
  if (c.opset >= 13 && c.has(1)) sizes = c.ints(1, 'split');
  else if (c.opset < 13 && c.node.attr('split')) sizes = c.node.attrInts('split');
  const n = c.node.outputs.length;
  if (!sizes) {
    const chunk = Math.ceil(x[axis] / n);
    sizes = Array.from({ length: n }, (_, i) => Math.max(0, Math.min(chunk, x[axis] - i * chunk)));
  }
  if (sizes.reduce((a, b) => a + b, 0) !== x[axis]) c.fail(`split sizes [${sizes}] do not add up to ${x[axis]}`);
  return sizes;
}

/** Slice parameters in either form (attributes before opset 10, inputs after). */
export function sliceParams(c: ShapeContext): ReturnType<typeof resolveSlice> {
  const x = c.shape(0);
  if (c.opset < 10) {
    const n = c.node;
    return resolveSlice(x, n.attrInts('starts'), n.attrInts('ends'), n.attr('axes') ? n.attrInts('axes') : undefined, undefined, n.name);
  }
  return resolveSlice(
    x,
    c.ints(1, 'starts'),
    c.ints(2, 'ends'),
    c.has(3) ? c.ints(3, 'axes') : undefined,
    c.has(4) ? c.ints(4, 'steps') : undefined,
    c.node.name,
  );
}

function resizeRule(c: ShapeContext): StaticType[] {
  const x = c.shape(0);
  const upsample = c.node.opType === 'Upsample';
  let scales: number[] | undefined;
  let sizes: number[] | undefined;
  if (upsample) scales = c.opset < 9 ? (c.node.attr('scales')?.value as number[]) : c.ints(1, 'scales');
  else if (c.opset < 11) scales = c.ints(1, 'scales');
  else {
    if (c.has(3) && sizeOf(c.shape(3)) > 0) sizes = c.ints(3, 'sizes');
    else scales = c.ints(2, 'scales');
  }
  const axes =
    c.opset >= 18 && c.node.attr('axes') ? c.node.attrInts('axes').map((a) => normalizeAxis(a, x.length, c.node.name)) : x.map((_, i) => i);
  const out = [...x];
  axes.forEach((a, k) => {
    out[a] = sizes ? sizes[k] : Math.floor(x[a] * scales![k] + 1e-9);
  });
  return [{ elemType: c.elemType(0), shape: out }];
}

function padRule(c: ShapeContext): StaticType[] {
  const x = c.shape(0);
  const pads = c.opset < 11 ? c.node.attrInts('pads') : c.ints(1, 'pads');
  const axes = c.opset >= 18 && c.has(3) ? c.ints(3, 'axes').map((a) => normalizeAxis(a, x.length, c.node.name)) : x.map((_, i) => i);
  const out = [...x];
  axes.forEach((a, k) => {
    out[a] += pads[k] + pads[k + axes.length];
  });
  return [{ elemType: c.elemType(0), shape: out }];
}

function unsqueezeRule(c: ShapeContext): StaticType[] {
  const x = c.shape(0);
  const axes0 = c.opset < 13 ? c.node.attrInts('axes') : c.ints(1, 'axes');
  const rank = x.length + axes0.length;
  const axes = axes0.map((a) => normalizeAxis(a, rank, c.node.name));
  const out: number[] = [];
  let j = 0;
  for (let i = 0; i < rank; i++) out.push(axes.includes(i) ? 1 : x[j++]);
  return [{ elemType: c.elemType(0), shape: out }];
}

function squeezeRule(c: ShapeContext): StaticType[] {
  const x = c.shape(0);
  const axes0 = c.opset < 13 ? c.node.attrInts('axes', []) : c.has(1) ? c.ints(1, 'axes') : [];
  const axes = axes0.length ? axes0.map((a) => normalizeAxis(a, x.length, c.node.name)) : x.flatMap((d, i) => (d === 1 ? [i] : []));
  for (const a of axes) if (x[a] !== 1) c.fail(`cannot squeeze axis ${a} of size ${x[a]}`);
  return [{ elemType: c.elemType(0), shape: x.filter((_, i) => !axes.includes(i)) }];
}

function einsumRule(c: ShapeContext): StaticType[] {
  const terms = parseEinsum(c.node.attrString('equation'), c.node.name);
  const sizes = new Map<string, number>();
  terms.inputs.forEach((t, i) => {
    const s = c.shape(i);
    if (s.length !== t.length) c.fail(`operand ${i} has rank ${s.length}, equation term "${t}" has ${t.length}`);
    [...t].forEach((ch, k) => {
      const prev = sizes.get(ch);
      if (prev !== undefined && prev !== s[k] && prev !== 1 && s[k] !== 1) c.fail(`label ${ch} has sizes ${prev} and ${s[k]}`);
      sizes.set(ch, Math.max(prev ?? 1, s[k]));
    });
  });
  return [{ elemType: c.elemType(0), shape: [...terms.output].map((ch) => sizes.get(ch)!) }];
}

function constantRule(c: ShapeContext): StaticType[] {
  const v = constFromConstantNode(c.node);
  if (v) return [{ elemType: v.dataType, shape: v.dims }];
  const a = c.node.attr('value');
  if (a && a.type === 'tensor') return [{ elemType: a.value.dataType, shape: [...a.value.dims] }];
  c.fail('unsupported Constant attribute');
}

const UNARY_OPS = [
  'Identity',
  'Neg',
  'Abs',
  'Sqrt',
  'Exp',
  'Log',
  'Sigmoid',
  'Tanh',
  'Erf',
  'Sin',
  'Cos',
  'Relu',
  'Reciprocal',
  'Floor',
  'Ceil',
  'Round',
  'Sign',
  'Softplus',
  'Softmax',
  'LogSoftmax',
  'Gelu',
  'LeakyRelu',
  'Elu',
  'HardSigmoid',
  'Clip',
  'InstanceNormalization',
  'GroupNormalization',
  'CumSum',
  'Mish',
  'HardSwish',
  'Selu',
  'Celu',
  'Trilu',
];
const BINARY_OPS = ['Add', 'Sub', 'Mul', 'Div', 'Pow', 'Max', 'Min', 'Mod', 'Sum', 'Mean', 'PRelu', 'BitShift'];
const COMPARISON_OPS = ['Equal', 'Less', 'Greater', 'LessOrEqual', 'GreaterOrEqual', 'And', 'Or', 'Xor'];
const REDUCE_OPS = [
  'ReduceMean',
  'ReduceMax',
  'ReduceMin',
  'ReduceProd',
  'ReduceL1',
  'ReduceL2',
  'ReduceLogSum',
  'ReduceLogSumExp',
  'ReduceSumSquare',
];

export const SHAPE_RULES: Record<string, ShapeRule> = {
  Constant: constantRule,
  Not: (c) => [{ elemType: DataType.BOOL, shape: c.shape(0) }],
  IsNaN: (c) => [{ elemType: DataType.BOOL, shape: c.shape(0) }],
  Cast: (c) => [{ elemType: c.node.attrInt('to'), shape: c.shape(0) }],
  DequantizeLinear: (c) => [{ elemType: c.elemType(1), shape: c.shape(0) }],
  CastLike: (c) => [{ elemType: c.elemType(1), shape: c.shape(0) }],
  Where: (c) => [{ elemType: c.elemType(1), shape: broadcastShapes([c.shape(0), c.shape(1), c.shape(2)], c.node.name) }],
  Dropout: (c) => {
    const out: StaticType[] = [{ elemType: c.elemType(0), shape: c.shape(0) }];
    if (c.node.outputs.length > 1) out.push({ elemType: DataType.BOOL, shape: c.shape(0) });
    return out;
  },
  Conv: (c) => convOutputShape(c, false),
  ConvTranspose: (c) => convOutputShape(c, true),
  MatMul: (c) => [{ elemType: c.elemType(0), shape: matmulShape(c.shape(0), c.shape(1), c.node.name) }],
  Gemm: (c) => {
    const a = c.shape(0);
    const b = c.shape(1);
    const m = c.node.attrInt('transA', 0) ? a[1] : a[0];
    const ka = c.node.attrInt('transA', 0) ? a[0] : a[1];
    const kb = c.node.attrInt('transB', 0) ? b[1] : b[0];
    const n = c.node.attrInt('transB', 0) ? b[0] : b[1];
    if (ka !== kb) c.fail(`Gemm of [${a}] and [${b}]: inner dims differ`);
    return [{ elemType: c.elemType(0), shape: [m, n] }];
  },
  Einsum: einsumRule,
  Reshape: (c) => {
    const target = c.opset < 5 ? c.node.attrInts('shape') : c.ints(1, 'shape');
    return [{ elemType: c.elemType(0), shape: reshapeTarget(c.shape(0), target, c.node.attrInt('allowzero', 0) === 1, c.node.name) }];
  },
  Flatten: (c) => {
    const x = c.shape(0);
    const axis = c.node.attrInt('axis', 1);
    const a = axis < 0 ? axis + x.length : axis;
    return [{ elemType: c.elemType(0), shape: [sizeOf(x.slice(0, a)), sizeOf(x.slice(a))] }];
  },
  Squeeze: squeezeRule,
  Unsqueeze: unsqueezeRule,
  Transpose: (c) => {
    const x = c.shape(0);
    const perm = c.node.attrInts(
      'perm',
      x.map((_, i) => x.length - 1 - i),
    );
    return [{ elemType: c.elemType(0), shape: perm.map((p) => x[p]) }];
  },
  Expand: (c) => [{ elemType: c.elemType(0), shape: broadcastShapes([c.shape(0), c.ints(1, 'shape')], c.node.name) }],
  Tile: (c) => {
    const r = c.ints(1, 'repeats');
    return [{ elemType: c.elemType(0), shape: c.shape(0).map((d, i) => d * r[i]) }];
  },
  Concat: (c) => {
    const first = c.shape(0);
    const axis = normalizeAxis(c.node.attrInt('axis'), first.length, c.node.name);
    const out = [...first];
    out[axis] = 0;
    c.node.inputs.forEach((_, i) => {
      const s = c.shape(i);
      if (s.length !== first.length || s.some((d, k) => k !== axis && d !== first[k]))
        c.fail(`Concat inputs [${first}] and [${s}] differ off axis ${axis}`);
      out[axis] += s[axis];
    });
    return [{ elemType: c.elemType(0), shape: out }];
  },
  Split: (c) => {
    const x = c.shape(0);
    const axis = normalizeAxis(c.node.attrInt('axis', 0), x.length, c.node.name);
    return splitSizes(c).map((s) => ({ elemType: c.elemType(0), shape: x.map((d, i) => (i === axis ? s : d)) }));
  },
  Slice: (c) => [{ elemType: c.elemType(0), shape: sliceParams(c).lengths }],
  Gather: (c) => {
    const x = c.shape(0);
    const axis = normalizeAxis(c.node.attrInt('axis', 0), x.length, c.node.name);
    return [{ elemType: c.elemType(0), shape: [...x.slice(0, axis), ...c.shape(1), ...x.slice(axis + 1)] }];
  },
  GatherElements: (c) => [{ elemType: c.elemType(0), shape: c.shape(1) }],
  Pad: padRule,
  ReduceSum: reduceRule(13),
  ArgMax: argReduceRule,
  ArgMin: argReduceRule,
  LayerNormalization: (c) => {
    const x = c.shape(0);
    const axis = normalizeAxis(c.node.attrInt('axis', -1), x.length, c.node.name);
    const stash = c.node.attrInt('stash_type', 1) === 1 ? DataType.FLOAT : c.elemType(0);
    const stats = x.map((d, i) => (i < axis ? d : 1));
    return [
      { elemType: c.elemType(0), shape: x },
      { elemType: stash, shape: stats },
      { elemType: stash, shape: stats },
    ].slice(0, c.node.outputs.length);
  },
  Resize: resizeRule,
  Upsample: resizeRule,
  Shape: (c) => {
    const r = c.shape(0).length;
    const clamp = (v: number) => Math.min(Math.max(v < 0 ? v + r : v, 0), r);
    const start = clamp(c.node.attrInt('start', 0));
    const end = clamp(c.node.attrInt('end', r));
    return [{ elemType: DataType.INT64, shape: [Math.max(0, end - start)] }];
  },
  Size: () => [{ elemType: DataType.INT64, shape: [] }],
  ConstantOfShape: (c) => {
    const v = c.node.attr('value');
    return [{ elemType: v && v.type === 'tensor' ? v.value.dataType : DataType.FLOAT, shape: c.ints(0, 'shape') }];
  },
  Range: (c) => {
    const [start, limit, delta] = [0, 1, 2].map((i) => c.ints(i, ['start', 'limit', 'delta'][i])[0]);
    return [{ elemType: c.elemType(0), shape: [Math.max(Math.ceil((limit - start) / delta), 0)] }];
  },
  OneHot: (c) => {
    const idx = c.shape(0);
    const depth = c.ints(1, 'depth')[0];
    const rank = idx.length + 1;
    const axis = normalizeAxis(c.node.attrInt('axis', -1), rank, c.node.name);
    const out = [...idx];
    out.splice(axis, 0, depth);
    return [{ elemType: c.elemType(2), shape: out }];
  },
};
for (const op of UNARY_OPS) SHAPE_RULES[op] = sameAsInput;
for (const op of BINARY_OPS) SHAPE_RULES[op] = broadcastRule();
for (const op of COMPARISON_OPS) SHAPE_RULES[op] = broadcastRule(DataType.BOOL);
for (const op of REDUCE_OPS) SHAPE_RULES[op] = reduceRule(18);

// ---------------------------------------------------------------------------------------------
// The walk

/** Initializers become known constants when they are integer-typed or tiny (never weights). */
const TINY_INITIALIZER = 16;

export interface ShapeAnalysis {
  /** Constant values found (Constant nodes, small integer initializers, folded results). */
  constants: Map<Value, ConstTensor>;
  /** Nodes whose every output is a known constant. */
  foldable: Set<Node>;
}

export interface InferOptions {
  /** Evaluate constant subgraphs on the way (default true). */
  evaluate?: boolean;
}

/** A constant input of `node` (axes, pads, slice bounds) as an int list, if it is one. */
export function constantInts(node: Node, i: number): number[] | undefined {
  const v = node.inputs[i];
  const c = v ? constantOfValue(v) : undefined;
  return c ? intList(c) : undefined;
}

/** The static shape of `v`, or undefined when it has none (op-emitter's staticShapeOf throws instead). */
export function staticShape(v: Value): number[] | undefined {
  const s = v.type?.shape;
  return s && s.every((d): d is number => typeof d === 'number') ? (s as number[]) : undefined;
}

/** Bytes of `v` when its shape is static (4 per element when its type has no fixed size), or undefined. */
export function staticBytes(v: Value): number | undefined {
  const s = staticShape(v);
  return s && s.reduce((a, b) => a * b, 1) * (elementSize(v.type!.elemType) ?? 4);
}

export function knownConstant(v: Value, constants: Map<Value, ConstTensor>): ConstTensor | undefined {
  const known = constants.get(v);
  if (known) return known;
  if (
    v.initializer &&
    (isIntegerType(v.initializer.dataType) || v.initializer.dataType === DataType.BOOL || sizeOf(v.initializer.dims) <= TINY_INITIALIZER)
  ) {
    const c = constFromTensor(v.initializer);
    if (c) constants.set(v, c);
    return c;
  }
  return undefined;
}

/** The value of a Constant node's output or a small integer initializer, if `v` is one. */
export function constantOfValue(v: Value): ConstTensor | undefined {
  if (v.producer?.opType === 'Constant') return constFromConstantNode(v.producer);
  return v.initializer ? knownConstant(v, new Map()) : undefined;
}

/** The output types of one node; throws a HollowcError naming the op and node when it cannot. */
export function inferNodeTypes(node: Node, opset: number, constantOf: (v: Value) => ConstTensor | undefined): StaticType[] {
  const fail = (message: string): never => {
    throw new HollowcError(`shape inference: ${node.opType} node ${JSON.stringify(node.name)}: ${message}`);
  };
  if (node.domain !== '' && node.domain !== 'ai.onnx') fail(`op domain ${JSON.stringify(node.domain)} is not supported`);
  const rule = SHAPE_RULES[node.opType];
  if (!rule) fail(`no shape rule for op ${node.opType}`);
  const input = (i: number): Value => {
    const v = node.inputs[i];
    if (!v) fail(`input ${i} is missing`);
    return v!;
  };
  const ctx: ShapeContext = {
    node,
    opset,
    has: (i) => !!node.inputs[i],
    shape: (i) => {
      const v = input(i);
      const s = staticShape(v);
      if (!s) fail(`input ${i} (${v.name}) has no static shape${v.type?.shape ? ` ([${v.type.shape.map(String)}])` : ''}`);
      return s!;
    },
    elemType: (i) => {
      const v = input(i);
      if (!v.type) fail(`input ${i} (${v.name}) has no type`);
      return v.type!.elemType;
    },
    constant: (i) => (node.inputs[i] ? constantOf(node.inputs[i]!) : undefined),
    ints: (i, what) => {
      const c = node.inputs[i] ? constantOf(node.inputs[i]!) : undefined;
      if (!c) fail(`${what} (input ${i}) is not a compile-time constant`);
      return intList(c!);
    },
    fail,
  };
  try {
    const out = rule!(ctx);
    if (out.length < node.outputs.length) fail(`rule gave ${out.length} outputs, node has ${node.outputs.length}`);
    return out;
  } catch (e) {
    if (e instanceof HollowcError) throw e;
    return fail((e as Error).message);
  }
}

/**
 * Infers and records the type of every value (graph inputs must have static shapes). With
 * `evaluate`, constant subgraphs are computed (Shape of a static value is a constant, and so
 * on) and returned; the graph itself is not changed apart from `value.type`.
 */
export function inferShapes(model: Model, options: InferOptions = {}): ShapeAnalysis {
  const g = model.graph;
  const opset = model.opsetVersion('');
  const evaluate = options.evaluate ?? true;
  const constants = new Map<Value, ConstTensor>();
  const foldable = new Set<Node>();
  g.topologicalSort();
  for (const v of g.inputs) {
    if (!v.initializer && !staticShape(v))
      throw new HollowcError(`shape inference: graph input ${v.name} has no static shape ([${v.type?.shape?.map(String) ?? '?'}])`);
  }
  const constantOf = (v: Value) => knownConstant(v, constants);
  for (const node of g.nodes) {
    const types = inferNodeTypes(node, opset, constantOf);
    node.outputs.forEach((out, i) => {
      out.type = { elemType: types[i].elemType, shape: [...types[i].shape] };
    });
    if (!evaluate) continue;
    let values: ConstTensor[] | undefined;
    if (node.opType === 'Shape') {
      const s = staticShape(node.input(0))!;
      const r = s.length;
      const clamp = (v: number) => Math.min(Math.max(v < 0 ? v + r : v, 0), r);
      values = [
        { dataType: DataType.INT64, dims: types[0].shape, data: s.slice(clamp(node.attrInt('start', 0)), clamp(node.attrInt('end', r))) },
      ];
    } else if (node.opType === 'Size') {
      values = [{ dataType: DataType.INT64, dims: [], data: [sizeOf(staticShape(node.input(0))!)] }];
    } else {
      values = evaluateNode(
        node,
        node.inputs.map((v) => (v ? constantOf(v) : undefined)),
        types,
        opset,
      );
    }
    if (!values) continue;
    const fits = values.every((c) => c.data === undefined || c.data.length <= FOLD_LIMIT);
    if (!fits) continue;
    node.outputs.forEach((out, i) => constants.set(out, values![i]));
    foldable.add(node);
  }
  return { constants, foldable };
}
