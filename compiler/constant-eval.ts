/**
 * Compile-time values: the small tensors of shape arithmetic (`Shape -> Gather -> Unsqueeze ->
 * Concat -> Reshape` chains, `ConstantOfShape`, `Range`) and the constants exporters write.
 * `evaluateNode` computes a node's outputs from constant inputs; the shape-inference walk calls
 * it and the specialization pass turns the results into `Constant` nodes.
 *
 * A value is either dense (`data`, row-major, int64 as JS numbers) or a splat (one value
 * everywhere: a zero-filled `ConstantOfShape` of any size costs nothing to know).
 */
import { DataType, DataTypeCode, elementSize } from './dtype';
import { Graph, Node, Tensor, Value, inlineTensor, tensorElementCount } from './ir';
import { readTensorBytes } from './serde';

export interface ConstTensor {
  dataType: DataTypeCode;
  dims: number[];
  /** Row-major elements; absent for a splat. */
  data?: number[];
  /** The one value of every element. */
  splat?: number;
}

/** Dense constants larger than this are not computed (the node stays in the graph). */
export const FOLD_LIMIT = 1 << 14;

const INT64_MAX = 2n ** 63n - 1n;
const INT64_MIN = -(2n ** 63n);

export function sizeOf(dims: readonly number[]): number {
  return dims.reduce((a, b) => a * b, 1);
}

export function isFloatType(t: DataTypeCode): boolean {
  return t === DataType.FLOAT || t === DataType.DOUBLE || t === DataType.FLOAT16 || t === DataType.BFLOAT16;
}

export function isIntegerType(t: DataTypeCode): boolean {
  return [
    DataType.INT64,
    DataType.INT32,
    DataType.INT16,
    DataType.INT8,
    DataType.UINT8,
    DataType.UINT16,
    DataType.UINT32,
    DataType.UINT64,
  ].includes(t as 7);
}

/** Rounds a JS number to what an element of type `t` holds. */
export function castScalar(x: number, t: DataTypeCode): number {
  switch (t) {
    case DataType.FLOAT:
      return Math.fround(x);
    case DataType.DOUBLE:
      return x;
    case DataType.BOOL:
      return x !== 0 ? 1 : 0;
    default:
      return Number.isFinite(x) ? Math.trunc(x) : x;
  }
}

export function elements(c: ConstTensor): number[] | undefined {
  if (c.data) return c.data;
  const n = sizeOf(c.dims);
  return n <= FOLD_LIMIT ? new Array<number>(n).fill(c.splat ?? 0) : undefined;
}

/** Integer list of a constant (shape, axes, pads...). */
export function intList(c: ConstTensor): number[] {
  const e = elements(c);
  if (!e) throw new Error('constant too large to read as a list');
  return e;
}

function copyBytes(bytes: Uint8Array): ArrayBuffer {
  const out = new ArrayBuffer(bytes.byteLength);
  new Uint8Array(out).set(bytes);
  return out;
}

/** Decodes a tensor's bytes, or undefined for types we do not fold (strings, float16...). */
export function constFromTensor(t: Tensor): ConstTensor | undefined {
  if (t.data.kind === 'strings') return undefined;
  const n = tensorElementCount(t);
  if (n > FOLD_LIMIT) return undefined;
  const buf = copyBytes(readTensorBytes(t));
  let data: number[];
  switch (t.dataType) {
    case DataType.FLOAT:
      data = Array.from(new Float32Array(buf));
      break;
    case DataType.DOUBLE:
      data = Array.from(new Float64Array(buf));
      break;
    case DataType.INT64:
      data = Array.from(new BigInt64Array(buf), Number);
      break;
    case DataType.INT32:
      data = Array.from(new Int32Array(buf));
      break;
    case DataType.INT16:
      data = Array.from(new Int16Array(buf));
      break;
    case DataType.INT8:
      data = Array.from(new Int8Array(buf));
      break;
    case DataType.UINT8:
    case DataType.BOOL:
      data = Array.from(new Uint8Array(buf));
      break;
    default:
      return undefined;
  }
  if (data.length !== n) return undefined;
  return { dataType: t.dataType, dims: [...t.dims], data };
}

/** The value of a `Constant` node (any of its attribute forms). */
export function constFromConstantNode(n: Node): ConstTensor | undefined {
  const a = n.attributes[0];
  if (!a) return undefined;
  switch (a.name) {
    case 'value':
      return a.type === 'tensor' ? constFromTensor(a.value) : undefined;
    case 'value_float':
      return a.type === 'float' ? { dataType: DataType.FLOAT, dims: [], data: [Math.fround(a.value)] } : undefined;
    case 'value_floats':
      return a.type === 'floats' ? { dataType: DataType.FLOAT, dims: [a.value.length], data: a.value.map(Math.fround) } : undefined;
    case 'value_int':
      return a.type === 'int' ? { dataType: DataType.INT64, dims: [], data: [a.value] } : undefined;
    case 'value_ints':
      return a.type === 'ints' ? { dataType: DataType.INT64, dims: [a.value.length], data: [...a.value] } : undefined;
    default:
      return undefined;
  }
}

/** Encodes a dense constant as an inline tensor. */
export function tensorFromConst(c: ConstTensor, name = ''): Tensor {
  const e = elements(c);
  if (!e) throw new Error(`constant [${c.dims}] is too large to encode`);
  let bytes: Uint8Array;
  const view = (a: ArrayBufferView) => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
  switch (c.dataType) {
    case DataType.FLOAT:
      bytes = view(Float32Array.from(e));
      break;
    case DataType.DOUBLE:
      bytes = view(Float64Array.from(e));
      break;
    case DataType.INT64:
      bytes = view(
        BigInt64Array.from(e, (x) => {
          if (!Number.isFinite(x)) return x > 0 ? INT64_MAX : INT64_MIN;
          const b = BigInt(Math.trunc(x));
          return b > INT64_MAX ? INT64_MAX : b < INT64_MIN ? INT64_MIN : b;
        }),
      );
      break;
    case DataType.INT32:
      bytes = view(Int32Array.from(e));
      break;
    case DataType.INT16:
      bytes = view(Int16Array.from(e));
      break;
    case DataType.INT8:
      bytes = view(Int8Array.from(e));
      break;
    case DataType.UINT8:
    case DataType.BOOL:
      bytes = Uint8Array.from(e);
      break;
    default:
      throw new Error(`cannot encode a constant of data type ${c.dataType}`);
  }
  if (elementSize(c.dataType) === undefined) throw new Error(`data type ${c.dataType} has no element size`);
  return inlineTensor(name, c.dataType, [...c.dims], bytes);
}

// ---------------------------------------------------------------------------------------------
// Shape helpers shared with shape inference

export function normalizeAxis(axis: number, rank: number, where: string): number {
  const a = axis < 0 ? axis + rank : axis;
  if (a < 0 || a >= rank) throw new Error(`${where}: axis ${axis} is out of range for rank ${rank}`);
  return a;
}

/** numpy broadcasting of several shapes. */
export function broadcastShapes(shapes: readonly (readonly number[])[], where: string): number[] {
  const rank = Math.max(0, ...shapes.map((s) => s.length));
  const out = new Array<number>(rank).fill(1);
  for (const s of shapes) {
    for (let i = 0; i < s.length; i++) {
      const k = rank - s.length + i;
      const d = s[i];
      if (d === out[k] || d === 1) continue;
      if (out[k] === 1) out[k] = d;
      else throw new Error(`${where}: shapes ${shapes.map((x) => `[${x}]`).join(' and ')} do not broadcast`);
    }
  }
  return out;
}

export interface ResolvedSlice {
  /** Per axis of the input: first index, step and output length. */
  starts: number[];
  steps: number[];
  lengths: number[];
}

/** ONNX Slice semantics (negative indices, clamping, negative steps). */
export function resolveSlice(
  shape: readonly number[],
  starts: number[],
  ends: number[],
  axes: number[] | undefined,
  steps: number[] | undefined,
  where: string,
): ResolvedSlice {
  const rank = shape.length;
  const out: ResolvedSlice = { starts: new Array(rank).fill(0), steps: new Array(rank).fill(1), lengths: [...shape] };
  const ax = axes ?? starts.map((_, i) => i);
  ax.forEach((a0, k) => {
    const a = normalizeAxis(a0, rank, where);
    const dim = shape[a];
    const step = steps?.[k] ?? 1;
    if (step === 0) throw new Error(`${where}: slice step 0`);
    let s = starts[k];
    let e = ends[k];
    if (s < 0) s += dim;
    if (e < 0) e += dim;
    if (step > 0) {
      s = Math.min(Math.max(s, 0), dim);
      e = Math.min(Math.max(e, 0), dim);
    } else {
      s = Math.min(Math.max(s, 0), dim - 1);
      e = Math.min(Math.max(e, -1), dim - 1);
    }
    out.starts[a] = s;
    out.steps[a] = step;
    out.lengths[a] = Math.max(0, Math.ceil((e - s) / step));
  });
  return out;
}

function strides(dims: readonly number[]): number[] {
  const s = new Array<number>(dims.length).fill(1);
  for (let i = dims.length - 2; i >= 0; i--) s[i] = s[i + 1] * dims[i + 1];
  return s;
}

/** Calls `f(outIndex, inIndexPerInput)` for every element of a broadcast op. */
function forEachBroadcast(outDims: number[], inDims: number[][], f: (o: number, idx: number[]) => void): void {
  const n = sizeOf(outDims);
  const rank = outDims.length;
  const inStrides = inDims.map((d) => {
    const s = strides(d);
    // Aligned to the output rank; broadcast dims get stride 0.
    return outDims.map((_, k) => {
      const j = k - (rank - d.length);
      return j < 0 || d[j] === 1 ? 0 : s[j];
    });
  });
  const counter = new Array<number>(rank).fill(0);
  const idx = new Array<number>(inDims.length).fill(0);
  for (let o = 0; o < n; o++) {
    f(o, idx);
    for (let k = rank - 1; k >= 0; k--) {
      counter[k]++;
      for (let t = 0; t < idx.length; t++) idx[t] += inStrides[t][k];
      if (counter[k] < outDims[k]) break;
      for (let t = 0; t < idx.length; t++) idx[t] -= inStrides[t][k] * counter[k];
      counter[k] = 0;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Evaluation

export interface OutputType {
  elemType: DataTypeCode;
  shape: number[];
}

type Evaluator = (n: Node, inputs: (ConstTensor | undefined)[], outTypes: OutputType[], opset: number) => ConstTensor[] | undefined;

const BINARY: Record<string, (a: number, b: number, int: boolean) => number> = {
  Add: (a, b) => a + b,
  Sub: (a, b) => a - b,
  Mul: (a, b) => a * b,
  Div: (a, b, int) => (int ? Math.trunc(a / b) : a / b),
  Pow: (a, b) => Math.pow(a, b),
  Max: (a, b) => Math.max(a, b),
  Min: (a, b) => Math.min(a, b),
  Mod: (a, b) => a - Math.floor(a / b) * b,
  Equal: (a, b) => (a === b ? 1 : 0),
  Less: (a, b) => (a < b ? 1 : 0),
  Greater: (a, b) => (a > b ? 1 : 0),
  LessOrEqual: (a, b) => (a <= b ? 1 : 0),
  GreaterOrEqual: (a, b) => (a >= b ? 1 : 0),
  And: (a, b) => (a && b ? 1 : 0),
  Or: (a, b) => (a || b ? 1 : 0),
};

const UNARY: Record<string, (a: number) => number> = {
  Identity: (a) => a,
  Neg: (a) => -a,
  Abs: Math.abs,
  Sqrt: Math.sqrt,
  Exp: Math.exp,
  Log: Math.log,
  Floor: Math.floor,
  Ceil: Math.ceil,
  Sin: Math.sin,
  Cos: Math.cos,
  Reciprocal: (a) => 1 / a,
  Not: (a) => (a ? 0 : 1),
  Sign: Math.sign,
};

function elementwise(inputs: ConstTensor[], out: OutputType, f: (xs: number[]) => number): ConstTensor | undefined {
  // Splats and one-element tensors broadcast to a splat: no data is needed however large the output.
  if (inputs.every((c) => c.data === undefined || c.data.length === 1)) {
    const result = castScalar(f(inputs.map((c) => (c.data ? c.data[0] : (c.splat ?? 0)))), out.elemType);
    if (inputs.some((c) => c.data === undefined) || sizeOf(out.shape) > FOLD_LIMIT)
      return { dataType: out.elemType, dims: out.shape, splat: result };
  }
  if (sizeOf(out.shape) > FOLD_LIMIT) return undefined;
  const data = inputs.map(elements);
  if (data.some((d) => !d)) return undefined;
  const res = new Array<number>(sizeOf(out.shape));
  const xs = new Array<number>(inputs.length);
  forEachBroadcast(
    out.shape,
    inputs.map((c) => c.dims),
    (o, idx) => {
      for (let t = 0; t < xs.length; t++) xs[t] = data[t]![idx[t]];
      res[o] = castScalar(f(xs), out.elemType);
    },
  );
  return { dataType: out.elemType, dims: out.shape, data: res };
}

/** Same elements, new dims (Reshape, Squeeze, Unsqueeze, Flatten, Identity). */
const relabel: Evaluator = (_n, [x], [out]) => (x ? [{ ...x, dims: out.shape }] : undefined);

function gatherData(x: ConstTensor, out: OutputType, axis: number, indices: number[], indexDims: number[]): ConstTensor | undefined {
  if (x.data === undefined) return { dataType: x.dataType, dims: out.shape, splat: x.splat };
  const outer = sizeOf(x.dims.slice(0, axis));
  const dim = x.dims[axis];
  const inner = sizeOf(x.dims.slice(axis + 1));
  const res: number[] = [];
  for (let o = 0; o < outer; o++) {
    for (let k = 0; k < sizeOf(indexDims); k++) {
      const i = indices[k] < 0 ? indices[k] + dim : indices[k];
      if (i < 0 || i >= dim) return undefined;
      for (let j = 0; j < inner; j++) res.push(x.data[(o * dim + i) * inner + j]);
    }
  }
  return { dataType: x.dataType, dims: out.shape, data: res };
}

function transposeData(x: ConstTensor, perm: number[], out: OutputType): ConstTensor {
  if (x.data === undefined) return { ...x, dims: out.shape };
  const inStrides = strides(x.dims);
  const res = new Array<number>(x.data.length);
  const outDims = out.shape;
  const counter = new Array<number>(outDims.length).fill(0);
  for (let o = 0; o < res.length; o++) {
    let src = 0;
    for (let k = 0; k < perm.length; k++) src += counter[k] * inStrides[perm[k]];
    res[o] = x.data[src];
    for (let k = outDims.length - 1; k >= 0; k--) {
      if (++counter[k] < outDims[k]) break;
      counter[k] = 0;
    }
  }
  return { dataType: x.dataType, dims: outDims, data: res };
}

function sliceData(x: ConstTensor, r: ResolvedSlice, out: OutputType): ConstTensor {
  if (x.data === undefined) return { ...x, dims: out.shape };
  const inStrides = strides(x.dims);
  const res: number[] = [];
  const counter = new Array<number>(out.shape.length).fill(0);
  const n = sizeOf(out.shape);
  for (let o = 0; o < n; o++) {
    let src = 0;
    for (let k = 0; k < counter.length; k++) src += (r.starts[k] + counter[k] * r.steps[k]) * inStrides[k];
    res.push(x.data[src]);
    for (let k = counter.length - 1; k >= 0; k--) {
      if (++counter[k] < out.shape[k]) break;
      counter[k] = 0;
    }
  }
  return { dataType: x.dataType, dims: out.shape, data: res };
}

/** Axes of Squeeze/Unsqueeze/Reduce*: attribute before `inputSince`, else input 1. */
export function axesOf(n: Node, inputs: (ConstTensor | undefined)[], opset: number, inputSince: number): number[] | undefined | 'unknown' {
  if (opset < inputSince) {
    const a = n.attr('axes');
    return a && a.type === 'ints' ? a.value : undefined;
  }
  if (!n.inputs[1]) return undefined;
  const c = inputs[1];
  return c ? intList(c) : 'unknown';
}

const EVALUATORS: Record<string, Evaluator> = {
  Constant: (n) => {
    const c = constFromConstantNode(n);
    return c ? [c] : undefined;
  },
  Identity: relabel,
  Reshape: relabel,
  Squeeze: relabel,
  Unsqueeze: relabel,
  Flatten: relabel,
  Cast: (_n, [x], [out]) => {
    const r = elementwise([x!], out, ([a]) => a);
    return r ? [r] : undefined;
  },
  ConstantOfShape: (n, _inputs, [out]) => {
    const v = n.attr('value');
    const c = v && v.type === 'tensor' ? constFromTensor(v.value) : undefined;
    const value = c ? intList(c)[0] : 0;
    return [{ dataType: out.elemType, dims: out.shape, splat: value }];
  },
  Range: (_n, [start, limit, delta], [out]) => {
    const s = intList(start!)[0];
    const d = intList(delta!)[0];
    void limit;
    const data = Array.from({ length: out.shape[0] }, (_, i) => castScalar(s + i * d, out.elemType));
    return [{ dataType: out.elemType, dims: out.shape, data }];
  },
  Gather: (n, [x, idx], [out]) => {
    const axis = normalizeAxis(n.attrInt('axis', 0), x!.dims.length, n.name);
    const indices = elements(idx!);
    const r = indices && gatherData(x!, out, axis, indices, idx!.dims);
    return r ? [r] : undefined;
  },
  Concat: (n, inputs, [out]) => {
    const parts = inputs as ConstTensor[];
    const rank = out.shape.length;
    const axis = normalizeAxis(n.attrInt('axis'), rank, n.name);
    const outer = sizeOf(out.shape.slice(0, axis));
    const datas = parts.map(elements);
    if (datas.some((d) => !d)) return undefined;
    const res: number[] = [];
    for (let o = 0; o < outer; o++) {
      parts.forEach((p, t) => {
        const chunk = sizeOf(p.dims.slice(axis));
        for (let j = 0; j < chunk; j++) res.push(castScalar(datas[t]![o * chunk + j], out.elemType));
      });
    }
    return [{ dataType: out.elemType, dims: out.shape, data: res }];
  },
  Slice: (n, inputs, [out], opset) => {
    const x = inputs[0]!;
    const r =
      opset < 10
        ? resolveSlice(x.dims, n.attrInts('starts'), n.attrInts('ends'), n.attr('axes') ? n.attrInts('axes') : undefined, undefined, n.name)
        : resolveSlice(
            x.dims,
            intList(inputs[1]!),
            intList(inputs[2]!),
            inputs[3] ? intList(inputs[3]) : undefined,
            inputs[4] ? intList(inputs[4]) : undefined,
            n.name,
          );
    return [sliceData(x, r, out)];
  },
  Transpose: (n, [x], [out]) => {
    const rank = x!.dims.length;
    const perm = n.attrInts(
      'perm',
      Array.from({ length: rank }, (_, i) => rank - 1 - i),
    );
    return [transposeData(x!, perm, out)];
  },
  Expand: (_n, [x], [out]) => {
    if (x!.data === undefined) return [{ ...x!, dims: out.shape }];
    const r = elementwise([x!], out, ([a]) => a);
    return r ? [r] : undefined;
  },
  Where: (_n, [c, a, b], [out]) => {
    const r = elementwise([c!, a!, b!], out, ([cc, aa, bb]) => (cc ? aa : bb));
    return r ? [r] : undefined;
  },
  ReduceProd: (n, inputs, [out], opset) => reduceData(n, inputs, out, opset, 18, 1, (a, b) => a * b),
  ReduceSum: (n, inputs, [out], opset) => reduceData(n, inputs, out, opset, 13, 0, (a, b) => a + b),
};
for (const [op, f] of Object.entries(BINARY)) {
  EVALUATORS[op] = (_n, inputs, [out], _opset) => {
    const int = !isFloatType(inputs[0]!.dataType);
    const r = elementwise(inputs as ConstTensor[], out, ([a, b]) => f(a, b, int));
    return r ? [r] : undefined;
  };
}
for (const [op, f] of Object.entries(UNARY)) {
  EVALUATORS[op] = (_n, [x], [out]) => {
    const r = elementwise([x!], out, ([a]) => f(a));
    return r ? [r] : undefined;
  };
}

function reduceData(
  n: Node,
  inputs: (ConstTensor | undefined)[],
  out: OutputType,
  opset: number,
  inputSince: number,
  init: number,
  f: (a: number, b: number) => number,
): ConstTensor[] | undefined {
  const x = inputs[0]!;
  const data = elements(x);
  const axes0 = axesOf(n, inputs, opset, inputSince);
  if (!data || axes0 === 'unknown') return undefined;
  const rank = x.dims.length;
  const axes =
    axes0 && axes0.length
      ? axes0.map((a) => normalizeAxis(a, rank, n.name))
      : n.attrInt('noop_with_empty_axes', 0)
        ? []
        : x.dims.map((_, i) => i);
  const keptDims = x.dims.map((d, i) => (axes.includes(i) ? 1 : d));
  const res = new Array<number>(sizeOf(keptDims)).fill(init);
  const keptStrides = strides(keptDims);
  const counter = new Array<number>(rank).fill(0);
  for (let i = 0; i < data.length; i++) {
    let o = 0;
    for (let k = 0; k < rank; k++) if (!axes.includes(k)) o += counter[k] * keptStrides[k];
    res[o] = f(res[o], data[i]);
    for (let k = rank - 1; k >= 0; k--) {
      if (++counter[k] < x.dims[k]) break;
      counter[k] = 0;
    }
  }
  return [{ dataType: out.elemType, dims: out.shape, data: res.map((v) => castScalar(v, out.elemType)) }];
}

/**
 * Computes a node's outputs from constant inputs (`outTypes` from shape inference), or
 * undefined when the op is not folded or an input is unknown. Optional inputs may be absent.
 */
export function evaluateNode(
  n: Node,
  inputs: (ConstTensor | undefined)[],
  outTypes: OutputType[],
  opset: number,
): ConstTensor[] | undefined {
  if (n.domain !== '' && n.domain !== 'ai.onnx') return undefined;
  const f = EVALUATORS[n.opType];
  if (!f) return undefined;
  if (n.opType !== 'ConstantOfShape' && n.inputs.some((v, i) => v && !inputs[i])) return undefined;
  // Dropout-style extra outputs are not folded.
  if (n.outputs.length !== outTypes.length) return undefined;
  try {
    return f(n, inputs, outTypes, opset);
  } catch {
    return undefined;
  }
}

/** Merges Constant nodes that hold the same small tensor (exporters repeat shape constants). */
export function mergeEqualConstants(g: Graph, keep: ReadonlySet<Value> = new Set()): number {
  const first = new Map<string, Value>();
  let merged = 0;
  for (const n of [...g.nodes]) {
    if (n.opType !== 'Constant' || n.attributes.length !== 1) continue;
    const a = n.attributes[0];
    if (a.name !== 'value' || a.type !== 'tensor' || a.value.data.kind !== 'inline' || a.value.data.bytes.byteLength > 4096) continue;
    const out = n.outputs[0];
    if (keep.has(out) || g.outputs.includes(out)) continue;
    const key = `${a.value.dataType}|${a.value.dims.join(',')}|${Buffer.from(a.value.data.bytes).toString('hex')}`;
    const kept = first.get(key);
    if (!kept) {
      first.set(key, out);
      continue;
    }
    g.replaceAllUsesWith(out, kept);
    g.removeNode(n);
    merged++;
  }
  if (merged) g.topologicalSort();
  return merged;
}
