/**
 * Gradient rules: one entry per op type, in the vocabulary of onnxruntime's gradient builder:
 * I(i) forward input, O(i) forward output, GO(i) gradient of output i (`dY` = GO(0)), and the
 * rule returns GI: one entry per input, `null` where no gradient flows (or none is needed:
 * `needs(i)` is false for frozen weights, so no weight-gradient convolution is ever built for
 * them). Rules only emit nodes through `c.e`; the driver (differentiate.ts) walks the graph and
 * accumulates. Static shapes come from the specialization pass.
 */
import { DataType } from '../../compiler/dtype';
import { Node, Value } from '../../compiler/ir';
import { isFloatType, normalizeAxis, resolveSlice } from '../../compiler/constant-eval';
import { OpEmitter, elemTypeOf } from '../../compiler/op-emitter';
import { constantInts, parseEinsum } from '../../compiler/shape-inference';

export interface GradContext {
  readonly node: Node;
  readonly opset: number;
  /** Emits nodes named under the forward node's scope. */
  readonly e: OpEmitter;
  I(i: number): Value;
  O(i: number): Value;
  /** Gradient of output i, or null when none flows into it. */
  GO(i: number): Value | null;
  /** GO(0) of a single-output op (never null when a rule runs). */
  readonly dY: Value;
  /** Whether input i wants a gradient (it depends on a parameter we differentiate for). */
  needs(i: number): boolean;
  shape(v: Value): number[];
  /** A compile-time constant input as an int list (axes, pads, slice bounds). */
  ints(i: number): number[];
  fail(message: string): never;
}

/** Returns one entry per forward input. */
export type GradientRule = (c: GradContext) => (Value | null)[];

/** Ops whose outputs carry no gradient to their inputs (integer, boolean or piecewise-constant results). */
export const NO_GRADIENT_OPS: ReadonlySet<string> = new Set([
  'Shape',
  'Size',
  'Constant',
  'ConstantOfShape',
  'Range',
  'EyeLike',
  'OneHot',
  'NonZero',
  'ArgMax',
  'ArgMin',
  'Equal',
  'Less',
  'Greater',
  'LessOrEqual',
  'GreaterOrEqual',
  'Not',
  'And',
  'Or',
  'Xor',
  'IsNaN',
  'IsInf',
  'Floor',
  'Ceil',
  'Round',
  'Sign',
  'RandomNormal',
  'RandomUniform',
  'RandomNormalLike',
  'RandomUniformLike',
  'Bernoulli',
]);

// ---------------------------------------------------------------------------------------------
// Helpers

/** `g` (shaped like O(0)) summed down to I(i)'s shape, when input i needs a gradient. */
function unbroadcast(c: GradContext, g: Value, i: number): Value | null {
  return c.needs(i) ? c.e.sumTo(g, c.shape(c.O(0)), c.shape(c.I(i))) : null;
}

const mul = (c: GradContext, a: Value, b: Value) => c.e.op('Mul', [a, b]);
const swapLast = (rank: number) => [...Array.from({ length: rank - 2 }, (_, i) => i), rank - 1, rank - 2];

/** Axes of a Reduce* node, normalized (attribute or input form). */
function reduceAxes(c: GradContext, inputSince: number): number[] {
  const rank = c.shape(c.I(0)).length;
  const given = c.opset < inputSince ? c.node.attrInts('axes', []) : c.node.inputs[1] ? c.ints(1) : [];
  if (given.length === 0) return c.node.attrInt('noop_with_empty_axes', 0) ? [] : Array.from({ length: rank }, (_, i) => i);
  return given.map((a) => normalizeAxis(a, rank, c.node.name));
}

/** dY of a reduction, broadcast back to X's shape. */
function expandReduced(c: GradContext, axes: number[]): Value {
  const x = c.shape(c.I(0));
  const kept = x.map((d, i) => (axes.includes(i) ? 1 : d));
  const g = c.node.attrInt('keepdims', 1) ? c.dY : c.e.reshape(c.dY, kept);
  return c.e.op('Expand', [g, c.e.int64s(x)]);
}

/**
 * Backward of x̂ = (X − μ)/σ over `axes`: dX = (dx̂ − mean(dx̂) − x̂·mean(dx̂·x̂)) / σ.
 * μ and σ are recomputed from X (cheap next to keeping them alive). Returns dX and x̂.
 */
function normalizeBackward(c: GradContext, x: Value, dXhat: Value, axes: number[], eps: number): { dX: Value; xhat: Value } {
  const e = c.e;
  const mean = e.reduce('ReduceMean', x, axes, true);
  const centered = e.op('Sub', [x, mean]);
  const variance = e.reduce('ReduceMean', mul(c, centered, centered), axes, true);
  const invStd = e.op('Reciprocal', [e.op('Sqrt', [e.op('Add', [variance, e.scalarLike(eps, c.I(0))])])]);
  const xhat = mul(c, centered, invStd);
  const meanD = e.reduce('ReduceMean', dXhat, axes, true);
  const meanDX = e.reduce('ReduceMean', mul(c, dXhat, xhat), axes, true);
  const inner = e.op('Sub', [e.op('Sub', [dXhat, meanD]), mul(c, xhat, meanDX)]);
  return { dX: mul(c, inner, invStd), xhat };
}

function convPads(c: GradContext, x: number[], w: number[], y: number[]): number[] {
  const n = c.node;
  const spatial = x.length - 2;
  const autoPad = n.attrString('auto_pad', 'NOTSET');
  if (autoPad === 'NOTSET') return n.attrInts('pads', new Array(2 * spatial).fill(0));
  if (autoPad === 'VALID') return new Array(2 * spatial).fill(0);
  const strides = n.attrInts('strides', new Array(spatial).fill(1));
  const dilations = n.attrInts('dilations', new Array(spatial).fill(1));
  const begin: number[] = [];
  const end: number[] = [];
  for (let i = 0; i < spatial; i++) {
    const total = Math.max(0, (y[i + 2] - 1) * strides[i] + (w[i + 2] - 1) * dilations[i] + 1 - x[i + 2]);
    const small = Math.floor(total / 2);
    begin.push(autoPad === 'SAME_UPPER' ? small : total - small);
    end.push(total - begin[i]);
  }
  return [...begin, ...end];
}

function convRule(c: GradContext): (Value | null)[] {
  const n = c.node;
  const [x, w, y] = [c.shape(c.I(0)), c.shape(c.I(1)), c.shape(c.O(0))];
  const spatial = x.length - 2;
  const strides = n.attrInts('strides', new Array(spatial).fill(1));
  const dilations = n.attrInts('dilations', new Array(spatial).fill(1));
  const group = n.attrInt('group', 1);
  const pads = convPads(c, x, w, y);
  let dX: Value | null = null;
  if (c.needs(0)) {
    // The transposed convolution with the same weight; output_padding restores rows the forward stride skipped.
    const outputPadding = x
      .slice(2)
      .map((d, i) => d - (strides[i] * (y[i + 2] - 1) + (w[i + 2] - 1) * dilations[i] + 1 - pads[i] - pads[i + spatial]));
    dX = c.e.op('ConvTranspose', [c.dY, c.I(1)], {
      strides,
      pads,
      dilations,
      group,
      output_padding: outputPadding,
      kernel_shape: w.slice(2),
    });
  }
  let dW: Value | null = null;
  if (c.needs(1)) {
    if (group !== 1) c.fail('the weight gradient of a grouped convolution is not supported');
    // dW[m,c] = Σ_n X[n,c] ⋆ dY[n,m]: a convolution over the batch with strides and dilations swapped.
    const batchFirst = [1, 0, ...Array.from({ length: spatial }, (_, i) => i + 2)];
    const corr = c.e.op('Conv', [c.e.transpose(c.I(0), batchFirst), c.e.transpose(c.dY, batchFirst)], {
      strides: dilations,
      dilations: strides,
      pads,
    });
    const full = x
      .slice(2)
      .map((d, i) => Math.floor((d + pads[i] + pads[i + spatial] - ((y[i + 2] - 1) * strides[i] + 1)) / dilations[i]) + 1);
    const trimmed = full.some((d, i) => d !== w[i + 2])
      ? c.e.slice(
          corr,
          w.slice(2).map(() => 0),
          w.slice(2),
          w.slice(2).map((_, i) => i + 2),
        )
      : corr;
    dW = c.e.transpose(trimmed, batchFirst);
  }
  const dB = c.needs(2) ? c.e.reduce('ReduceSum', c.dY, [0, ...Array.from({ length: spatial }, (_, i) => i + 2)], false) : null;
  return [dX, dW, dB];
}

function convTransposeRule(c: GradContext): (Value | null)[] {
  if (c.needs(1) || c.needs(2)) c.fail('only the input gradient of ConvTranspose is supported');
  if (c.node.attr('output_shape') || c.node.attrString('auto_pad', 'NOTSET') !== 'NOTSET')
    c.fail('output_shape/auto_pad forms are not supported');
  const n = c.node;
  const spatial = c.shape(c.I(0)).length - 2;
  // The adjoint of a transposed convolution is the convolution with the same weight.
  const dX = c.e.op('Conv', [c.dY, c.I(1)], {
    strides: n.attrInts('strides', new Array(spatial).fill(1)),
    pads: n.attrInts('pads', new Array(2 * spatial).fill(0)),
    dilations: n.attrInts('dilations', new Array(spatial).fill(1)),
    group: n.attrInt('group', 1),
  });
  return [dX, null, null];
}

function matmulRule(c: GradContext): (Value | null)[] {
  const e = c.e;
  const [a, b] = [c.shape(c.I(0)), c.shape(c.I(1))];
  // 1-D operands are promoted as MatMul does: [K] -> [1,K] (A) or [K,1] (B).
  const a2 = a.length === 1 ? [1, a[0]] : a;
  const b2 = b.length === 1 ? [b[0], 1] : b;
  const A = a.length === 1 ? e.reshape(c.I(0), a2) : c.I(0);
  const B = b.length === 1 ? e.reshape(c.I(1), b2) : c.I(1);
  const batch = c.shape(c.O(0)).slice(0, c.shape(c.O(0)).length - (a.length === 1 ? 0 : 1) - (b.length === 1 ? 0 : 1));
  const [M, K, N] = [a2[a2.length - 2], a2[a2.length - 1], b2[b2.length - 1]];
  const y2 = [...batch, M, N];
  const dY = a.length === 1 || b.length === 1 ? e.reshape(c.dY, y2) : c.dY;
  let dA: Value | null = null;
  if (c.needs(0)) {
    // dA = dY·Bᵀ (a 2-D B goes into Gemm as is: no transposed copy of a frozen weight)
    const raw =
      b2.length === 2
        ? e.reshape(e.op('Gemm', [e.reshape(dY, [-1, N]), B], { transB: 1 }), [...batch, M, K])
        : e.op('MatMul', [dY, e.transpose(B, swapLast(b2.length))]);
    dA = e.reshape(e.sumTo(raw, [...batch, M, K], a2), a);
  }
  let dB: Value | null = null;
  if (c.needs(1)) {
    // dB = Aᵀ·dY, summed over the batch dims B was broadcast along
    const raw =
      b2.length === 2
        ? e.op('Gemm', [e.reshape(A, [-1, K]), e.reshape(dY, [-1, N])], { transA: 1 })
        : e.op('MatMul', [e.transpose(A, swapLast(a2.length)), dY]);
    const rawShape = b2.length === 2 ? [K, N] : [...batch, K, N];
    dB = e.reshape(e.sumTo(raw, rawShape, b2), b);
  }
  return [dA, dB];
}

function gemmRule(c: GradContext): (Value | null)[] {
  const transA = c.node.attrInt('transA', 0);
  const transB = c.node.attrInt('transB', 0);
  const alpha = { f: c.node.attrFloat('alpha', 1) };
  const e = c.e;
  // Y = α·A'·B' + β·C:  dA' = α·dY·B'ᵀ, dB' = α·A'ᵀ·dY, dC = β·Σ dY
  const dA = c.needs(0)
    ? transA
      ? e.op('Gemm', [c.I(1), c.dY], { alpha, transA: transB, transB: 1 })
      : e.op('Gemm', [c.dY, c.I(1)], { alpha, transB: transB ? 0 : 1 })
    : null;
  const dB = c.needs(1)
    ? transB
      ? e.op('Gemm', [c.dY, c.I(0)], { alpha, transA: 1, transB: transA })
      : e.op('Gemm', [c.I(0), c.dY], { alpha, transA: transA ? 0 : 1 })
    : null;
  let dC: Value | null = null;
  if (c.needs(2)) {
    const beta = c.node.attrFloat('beta', 1);
    const scaled = beta === 1 ? c.dY : mul(c, c.dY, e.scalarLike(beta, c.dY));
    dC = unbroadcast(c, scaled, 2);
  }
  return [dA, dB, dC];
}

function softmaxRule(log: boolean): GradientRule {
  return (c) => {
    const rank = c.shape(c.I(0)).length;
    const axis = normalizeAxis(c.node.attrInt('axis', c.opset < 13 ? 1 : -1), rank, c.node.name);
    // Before opset 13 softmax runs over the flattened dims [axis, rank).
    const axes = c.opset < 13 ? Array.from({ length: rank - axis }, (_, i) => axis + i) : [axis];
    const e = c.e;
    if (log) {
      // dX = dY − exp(Y)·Σ dY
      return [e.op('Sub', [c.dY, mul(c, e.op('Exp', [c.O(0)]), e.reduce('ReduceSum', c.dY, axes, true))])];
    }
    // dX = Y·(dY − Σ dY·Y)
    return [mul(c, c.O(0), e.op('Sub', [c.dY, e.reduce('ReduceSum', mul(c, c.dY, c.O(0)), axes, true)]))];
  };
}

function instanceNormRule(c: GradContext): (Value | null)[] {
  const x = c.shape(c.I(0));
  const spatial = Array.from({ length: x.length - 2 }, (_, i) => i + 2);
  const perChannel = [x[1], ...spatial.map(() => 1)];
  const e = c.e;
  const dXhat = mul(c, c.dY, e.reshape(c.I(1), perChannel));
  const { dX, xhat } = normalizeBackward(c, c.I(0), dXhat, spatial, c.node.attrFloat('epsilon', 1e-5));
  // dscale = Σ_{n,hw} dY·x̂,  dB = Σ_{n,hw} dY
  const dScale = c.needs(1) ? e.reduce('ReduceSum', mul(c, c.dY, xhat), [0, ...spatial], false) : null;
  const dBias = c.needs(2) ? e.reduce('ReduceSum', c.dY, [0, ...spatial], false) : null;
  return [c.needs(0) ? dX : null, dScale, dBias];
}

function layerNormRule(c: GradContext): (Value | null)[] {
  if (c.GO(1) || c.GO(2)) c.fail('gradients through the Mean/InvStdDev outputs are not supported');
  const x = c.shape(c.I(0));
  const axis = normalizeAxis(c.node.attrInt('axis', -1), x.length, c.node.name);
  const axes = Array.from({ length: x.length - axis }, (_, i) => axis + i);
  const dXhat = mul(c, c.dY, c.I(1));
  const { dX, xhat } = normalizeBackward(c, c.I(0), dXhat, axes, c.node.attrFloat('epsilon', 1e-5));
  // dscale = Σ dY·x̂ and dB = Σ dY over the dims scale/B were broadcast along
  const dScale = c.needs(1) ? c.e.sumTo(mul(c, c.dY, xhat), x, c.shape(c.I(1))) : null;
  const dBias = c.needs(2) ? c.e.sumTo(c.dY, x, c.shape(c.I(2))) : null;
  return [c.needs(0) ? dX : null, dScale, dBias];
}

function groupNormRule(c: GradContext): (Value | null)[] {
  const x = c.shape(c.I(0));
  const groups = c.node.attrInt('num_groups');
  const [N, C] = [x[0], x[1]];
  const S = x.slice(2).reduce((a, d) => a * d, 1);
  const grouped = [N, groups, C / groups, S];
  // Opset 18 has one scale/bias per group, opset 21 one per channel.
  const paramShape = c.opset >= 21 ? [1, groups, C / groups, 1] : [1, groups, 1, 1];
  const e = c.e;
  const dYg = e.reshape(c.dY, grouped);
  const dXhat = mul(c, dYg, e.reshape(c.I(1), paramShape));
  const { dX, xhat } = normalizeBackward(c, e.reshape(c.I(0), grouped), dXhat, [2, 3], c.node.attrFloat('epsilon', 1e-5));
  const sumToParam = (g: Value) => e.reshape(e.sumTo(g, grouped, paramShape), c.shape(c.I(1)));
  return [c.needs(0) ? e.reshape(dX, x) : null, c.needs(1) ? sumToParam(mul(c, dYg, xhat)) : null, c.needs(2) ? sumToParam(dYg) : null];
}

/** Nearest-neighbour upsampling by integer factors maps each output pixel to block ⌊i/s⌋. */
function resizeRule(c: GradContext): (Value | null)[] {
  const n = c.node;
  const mode = n.attrString('mode', 'nearest');
  if (mode !== 'nearest') c.fail(`only mode "nearest" has a gradient rule (got "${mode}")`);
  if (n.opType === 'Resize' && c.opset >= 11) {
    const coord = n.attrString('coordinate_transformation_mode', 'half_pixel');
    const rounding = n.attrString('nearest_mode', 'round_prefer_floor');
    const blocky =
      (coord === 'asymmetric' && rounding === 'floor') ||
      (coord === 'tf_half_pixel_for_nn' && rounding === 'floor') ||
      ((coord === 'half_pixel' || coord === 'pytorch_half_pixel') &&
        (rounding === 'round_prefer_floor' || rounding === 'round_prefer_ceil'));
    if (!blocky) c.fail(`nearest resize with ${coord}/${rounding} does not copy whole blocks`);
  }
  const [x, y] = [c.shape(c.I(0)), c.shape(c.O(0))];
  const split: number[] = [];
  const sumAxes: number[] = [];
  x.forEach((d, i) => {
    if (y[i] % d !== 0) c.fail(`scale ${y[i]}/${d} on axis ${i} is not an integer`);
    split.push(d);
    if (y[i] !== d) {
      sumAxes.push(split.length);
      split.push(y[i] / d);
    }
  });
  // dX = block sums of dY: reshape each upsampled dim d·s to [d, s] and sum the s axes.
  const dX = c.e.reshape(c.e.reduce('ReduceSum', c.e.reshape(c.dY, split), sumAxes, false), x);
  return [dX, ...n.inputs.slice(1).map(() => null)];
}

function sliceRule(c: GradContext): (Value | null)[] {
  const x = c.shape(c.I(0));
  const n = c.node;
  const r =
    c.opset < 10
      ? resolveSlice(x, n.attrInts('starts'), n.attrInts('ends'), n.attr('axes') ? n.attrInts('axes') : undefined, undefined, n.name)
      : resolveSlice(x, c.ints(1), c.ints(2), n.inputs[3] ? c.ints(3) : undefined, n.inputs[4] ? c.ints(4) : undefined, n.name);
  if (r.steps.some((s, i) => s !== 1 && r.lengths[i] > 1)) c.fail('slices with steps other than 1 are not supported');
  // dX = dY padded with zeros back to X's shape
  const pads = [...r.starts, ...x.map((d, i) => d - r.starts[i] - r.lengths[i])];
  return [c.e.pad(c.dY, pads), ...n.inputs.slice(1).map(() => null)];
}

function concatRule(c: GradContext): (Value | null)[] {
  const rank = c.shape(c.O(0)).length;
  const axis = normalizeAxis(c.node.attrInt('axis'), rank, c.node.name);
  let offset = 0;
  // dXᵢ = dY[offsetᵢ : offsetᵢ + sizeᵢ] along the axis
  return c.node.inputs.map((v, i) => {
    const size = c.shape(v!)[axis];
    const start = offset;
    offset += size;
    return c.needs(i) ? c.e.slice(c.dY, [start], [start + size], [axis]) : null;
  });
}

function splitRule(c: GradContext): (Value | null)[] {
  const rank = c.shape(c.I(0)).length;
  const axis = normalizeAxis(c.node.attrInt('axis', 0), rank, c.node.name);
  // dX = concat(dYᵢ), zeros for outputs that get no gradient
  const parts = c.node.outputs.map((o, i) => c.GO(i) ?? c.e.zeros(c.shape(o), elemTypeOf(o)));
  return [c.e.op('Concat', parts, { axis }), ...c.node.inputs.slice(1).map(() => null)];
}

function gatherRule(c: GradContext): (Value | null)[] {
  const x = c.shape(c.I(0));
  const indices = c.shape(c.I(1));
  const axis = normalizeAxis(c.node.attrInt('axis', 0), x.length, c.node.name);
  const [P, D, Q] = [x.slice(0, axis).reduce((a, d) => a * d, 1), x[axis], x.slice(axis + 1).reduce((a, d) => a * d, 1)];
  const K = indices.reduce((a, d) => a * d, 1);
  const e = c.e;
  // dX[.., j, ..] = Σ_k [idx_k = j]·dY[.., k, ..]: a one-hot matrix product (handles repeats)
  const cast = elemTypeOf(c.I(1)) === DataType.INT64 ? c.I(1) : e.op('Cast', [c.I(1)], { to: DataType.INT64 });
  const idx = indices.length === 0 ? e.reshape(cast, [1]) : cast; // OneHot wants rank >= 1
  let oneHot = e.op('OneHot', [idx, e.int64s([D]), e.values([0, 1], DataType.FLOAT)], { axis: -1 });
  if (elemTypeOf(c.I(0)) !== DataType.FLOAT) oneHot = e.op('Cast', [oneHot], { to: elemTypeOf(c.I(0)) });
  const selector = e.transpose(e.reshape(oneHot, [K, D]), [1, 0]);
  const dX = e.reshape(e.op('MatMul', [selector, e.reshape(c.dY, [P, K, Q])]), x);
  return [dX, null];
}

function padRule(c: GradContext): (Value | null)[] {
  const mode = c.node.attrString('mode', 'constant');
  if (mode !== 'constant') c.fail(`only constant padding has a gradient rule (got "${mode}")`);
  const x = c.shape(c.I(0));
  const pads = c.opset < 11 ? c.node.attrInts('pads') : c.ints(1);
  if (c.opset >= 18 && c.node.inputs[3]) c.fail('Pad with an axes input is not supported');
  if (pads.some((p) => p < 0)) c.fail('negative pads are not supported');
  // dX = dY[begin : begin + shape X]
  const dX = c.e.slice(
    c.dY,
    pads.slice(0, x.length),
    x.map((d, i) => pads[i] + d),
    x.map((_, i) => i),
  );
  return [dX, ...c.node.inputs.slice(1).map(() => null)];
}

function einsumRule(c: GradContext): (Value | null)[] {
  const terms = parseEinsum(c.node.attrString('equation'), c.node.name);
  return terms.inputs.map((term, i) => {
    if (!c.needs(i)) return null;
    if (new Set(term).size !== term.length) c.fail(`operand ${i} repeats a label (diagonal) in "${term}"`);
    const others = terms.inputs.filter((_, j) => j !== i);
    const seen = new Set([...terms.output, ...others.join('')]);
    const kept = [...term].filter((ch) => seen.has(ch)).join('');
    // dAᵢ = einsum(dY, other operands -> termᵢ); labels summed away in the forward come back by Expand
    const inputs = [c.dY, ...c.node.inputs.filter((_, j) => j !== i).map((v) => v!)];
    let g = c.e.op('Einsum', inputs, { equation: `${[terms.output, ...others].join(',')}->${kept}` });
    const shape = c.shape(c.I(i));
    if (kept.length !== term.length) {
      g = c.e.op('Expand', [
        c.e.reshape(
          g,
          [...term].map((ch, k) => (seen.has(ch) ? shape[k] : 1)),
        ),
        c.e.int64s(shape),
      ]);
    }
    return g;
  });
}

const sameShapeReshape: GradientRule = (c) => [c.e.reshape(c.dY, c.shape(c.I(0))), ...c.node.inputs.slice(1).map(() => null)];

// ---------------------------------------------------------------------------------------------
// The table

export const GRADIENT_RULES: Readonly<Record<string, GradientRule>> = {
  Identity: (c) => [c.dY], // dX = dY
  Dropout: (c) => {
    if (c.node.inputs[2] && constantInts(c.node, 2)?.[0] !== 0) c.fail('Dropout in training mode has no gradient rule');
    return [c.dY, null, null]; // inference-mode Dropout is the identity
  },
  Neg: (c) => [c.e.op('Neg', [c.dY])], // dX = −dY
  Add: (c) => [unbroadcast(c, c.dY, 0), unbroadcast(c, c.dY, 1)], // dA = dB = dY (summed over broadcast dims)
  Sum: (c) => c.node.inputs.map((_, i) => unbroadcast(c, c.dY, i)), // dXᵢ = dY
  Sub: (c) => [unbroadcast(c, c.dY, 0), c.needs(1) ? unbroadcast(c, c.e.op('Neg', [c.dY]), 1) : null], // dA = dY, dB = −dY
  Mul: (c) => [c.needs(0) ? unbroadcast(c, mul(c, c.dY, c.I(1)), 0) : null, c.needs(1) ? unbroadcast(c, mul(c, c.dY, c.I(0)), 1) : null], // dA = dY·B, dB = dY·A
  Div: (c) => [
    c.needs(0) ? unbroadcast(c, c.e.op('Div', [c.dY, c.I(1)]), 0) : null, // dA = dY/B
    c.needs(1) ? unbroadcast(c, c.e.op('Neg', [c.e.op('Div', [mul(c, c.dY, c.O(0)), c.I(1)])]), 1) : null, // dB = −dY·Y/B
  ],
  Pow: (c) => [
    c.needs(0)
      ? unbroadcast(c, mul(c, c.dY, mul(c, c.I(1), c.e.op('Pow', [c.I(0), c.e.op('Sub', [c.I(1), c.e.scalarLike(1, c.I(1))])]))), 0)
      : null, // dA = dY·B·A^(B−1)
    c.needs(1) ? unbroadcast(c, mul(c, c.dY, mul(c, c.O(0), c.e.op('Log', [c.I(0)]))), 1) : null, // dB = dY·Y·ln A
  ],
  Sqrt: (c) => [c.e.op('Div', [c.dY, mul(c, c.O(0), c.e.scalarLike(2, c.O(0)))])], // dX = dY/(2Y)
  Exp: (c) => [mul(c, c.dY, c.O(0))], // dX = dY·Y
  Log: (c) => [c.e.op('Div', [c.dY, c.I(0)])], // dX = dY/X
  Reciprocal: (c) => [c.e.op('Neg', [mul(c, c.dY, mul(c, c.O(0), c.O(0)))])], // dX = −dY·Y²
  Abs: (c) => [mul(c, c.dY, c.e.op('Sign', [c.I(0)]))], // dX = dY·sign X
  Relu: (c) => [c.e.op('Where', [c.e.op('Greater', [c.I(0), c.e.scalarLike(0, c.I(0))]), c.dY, c.e.scalarLike(0, c.dY)])], // dX = dY·[X > 0]
  Sigmoid: (c) => [mul(c, c.dY, mul(c, c.O(0), c.e.op('Sub', [c.e.scalarLike(1, c.O(0)), c.O(0)])))], // dX = dY·Y·(1−Y)
  Tanh: (c) => [mul(c, c.dY, c.e.op('Sub', [c.e.scalarLike(1, c.O(0)), mul(c, c.O(0), c.O(0))]))], // dX = dY·(1−Y²)
  Erf: (c) => [
    mul(c, c.dY, mul(c, c.e.scalarLike(2 / Math.sqrt(Math.PI), c.I(0)), c.e.op('Exp', [c.e.op('Neg', [mul(c, c.I(0), c.I(0))])]))),
  ], // dX = dY·(2/√π)·e^(−X²)
  Sin: (c) => [mul(c, c.dY, c.e.op('Cos', [c.I(0)]))], // dX = dY·cos X
  Cos: (c) => [c.e.op('Neg', [mul(c, c.dY, c.e.op('Sin', [c.I(0)]))])], // dX = −dY·sin X
  Softmax: softmaxRule(false), // dX = Y·(dY − Σ_axis dY·Y)
  LogSoftmax: softmaxRule(true), // dX = dY − exp(Y)·Σ_axis dY
  MatMul: matmulRule, // dA = dY·Bᵀ, dB = Aᵀ·dY (summed over broadcast batch dims)
  Gemm: gemmRule, // dA' = α·dY·B'ᵀ, dB' = α·A'ᵀ·dY, dC = β·Σ dY
  Einsum: einsumRule, // dAᵢ = einsum(dY, others → termᵢ)
  Conv: convRule, // dX = ConvTranspose(dY, W); dW = Σ_n X ⋆ dY; dB = Σ dY
  ConvTranspose: convTransposeRule, // dX = Conv(dY, W)
  InstanceNormalization: instanceNormRule, // dX = (γ·dY − mean(γ·dY) − x̂·mean(γ·dY·x̂))/σ per (n, c)
  LayerNormalization: layerNormRule, // the same over the trailing axes
  GroupNormalization: groupNormRule, // the same per (n, group)
  ReduceSum: (c) => [expandReduced(c, reduceAxes(c, 13)), null], // dX = broadcast(dY)
  ReduceMean: (c) => {
    const axes = reduceAxes(c, 18);
    const count = axes.reduce((a, i) => a * c.shape(c.I(0))[i], 1);
    return [mul(c, expandReduced(c, axes), c.e.scalarLike(1 / count, c.dY)), null]; // dX = broadcast(dY)/N
  },
  Reshape: sameShapeReshape, // dX = reshape(dY, shape X)
  Flatten: sameShapeReshape,
  Squeeze: sameShapeReshape,
  Unsqueeze: sameShapeReshape,
  Transpose: (c) => {
    const rank = c.shape(c.I(0)).length;
    const perm = c.node.attrInts(
      'perm',
      Array.from({ length: rank }, (_, i) => rank - 1 - i),
    );
    const inverse = new Array<number>(rank);
    perm.forEach((p, i) => (inverse[p] = i));
    return [c.e.transpose(c.dY, inverse)]; // dX = transpose(dY, perm⁻¹)
  },
  Expand: (c) => [unbroadcast(c, c.dY, 0), null], // dX = Σ over the expanded dims
  Concat: concatRule, // dXᵢ = dY[offsetᵢ : offsetᵢ + sizeᵢ]
  Split: splitRule, // dX = concat(dYᵢ)
  Slice: sliceRule, // dX = zero-pad(dY)
  Pad: padRule, // dX = dY[begin : begin + shape X]
  Gather: gatherRule, // dX = onehot(idx)ᵀ·dY
  Resize: resizeRule, // dX = block sums of dY (integer nearest upsampling)
  Upsample: resizeRule,
  Cast: (c) => [isFloatType(elemTypeOf(c.I(0))) ? c.e.op('Cast', [c.dY], { to: elemTypeOf(c.I(0)) }) : null], // dX = cast back
  Where: (c) => {
    const zero = c.e.scalarLike(0, c.dY);
    return [
      null,
      c.needs(1) ? unbroadcast(c, c.e.op('Where', [c.I(0), c.dY, zero]), 1) : null, // dA = dY·[cond]
      c.needs(2) ? unbroadcast(c, c.e.op('Where', [c.I(0), zero, c.dY]), 2) : null, // dB = dY·[¬cond]
    ];
  },
};
