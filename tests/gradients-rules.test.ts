/**
 * Every gradient rule against central differences in onnxruntime, on random inputs and
 * broadcast shapes: float64 where onnxruntime has CPU kernels, float32 (larger step and
 * tolerance) for Conv, ConvTranspose, InstanceNormalization, Erf and Resize. Set
 * HOLLOWC_GRAD_SEED to rerun with another seed; a failure prints the seed it used.
 */
import { DataType } from '../compiler/dtype';
import { GRADIENT_RULES } from '../passes/lib/gradient-rules';
import { GradientCase, InputSpec, checkGradient } from './support/gradient-check';

const BASE_SEED = Number(process.env.HOLLOWC_GRAD_SEED ?? 20240611);
const positive = (x: number) => Math.abs(x) + 0.5;
const away = (x: number) => (x >= 0 ? x + 0.2 : x - 0.2);

type Case = Omit<GradientCase, 'seed' | 'dtype'> & { dtype?: GradientCase['dtype']; rule: string };
const f = (name: string, shape: number[], extra: Partial<InputSpec> = {}): InputSpec => ({ name, shape, ...extra });

const CASES: Case[] = [
  // Elementwise with numpy broadcasting
  { rule: 'Add', name: 'Add [2,3,4] + [4]', inputs: [f('a', [2, 3, 4]), f('b', [4])], build: (e, x) => e.op('Add', [x.a, x.b]) },
  {
    rule: 'Add',
    name: 'Add [3,1] + [1,3,4] + scalar chain',
    inputs: [f('a', [3, 1]), f('b', [2, 3, 4]), f('c', [])],
    build: (e, x) => e.op('Add', [e.op('Add', [x.a, x.b]), x.c]),
  },
  { rule: 'Sub', name: 'Sub [2,1,4] - [3,1]', inputs: [f('a', [2, 1, 4]), f('b', [3, 1])], build: (e, x) => e.op('Sub', [x.a, x.b]) },
  { rule: 'Mul', name: 'Mul [2,3,4] * [3,1]', inputs: [f('a', [2, 3, 4]), f('b', [3, 1])], build: (e, x) => e.op('Mul', [x.a, x.b]) },
  { rule: 'Mul', name: 'Mul x * x (accumulation)', inputs: [f('a', [5])], build: (e, x) => e.op('Mul', [x.a, x.a]) },
  {
    rule: 'Div',
    name: 'Div [4] / [2,3,1]',
    inputs: [f('a', [4]), f('b', [2, 3, 1], { transform: away })],
    build: (e, x) => e.op('Div', [x.a, x.b]),
  },
  {
    rule: 'Pow',
    name: 'Pow x^2 (constant exponent, as exported)',
    inputs: [f('a', [2, 5])],
    build: (e, x) => e.op('Pow', [x.a, e.scalar(2, DataType.DOUBLE)]),
  },
  {
    rule: 'Pow',
    name: 'Pow [2,3]^[3] (both)',
    inputs: [f('a', [2, 3], { transform: positive }), f('b', [3])],
    build: (e, x) => e.op('Pow', [x.a, x.b]),
  },
  {
    rule: 'Sum',
    name: 'Sum of [2,3], [3], [1,1]',
    inputs: [f('a', [2, 3]), f('b', [3]), f('c', [1, 1])],
    build: (e, x) => e.op('Sum', [x.a, x.b, x.c]),
  },
  {
    rule: 'Where',
    name: 'Where(cond [2,1,4], a [3,1], b [4])',
    inputs: [f('cond', [2, 1, 4], { kind: 'bool' }), f('a', [3, 1]), f('b', [4])],
    build: (e, x) => e.op('Where', [x.cond, x.a, x.b]),
  },
  {
    rule: 'Expand',
    name: 'Expand [3,1] -> [2,3,4]',
    inputs: [f('a', [3, 1])],
    build: (e, x) => e.op('Expand', [x.a, e.int64s([2, 3, 4])]),
  },
  // Unary
  { rule: 'Identity', name: 'Identity', inputs: [f('a', [3, 2])], build: (e, x) => e.op('Identity', [x.a]) },
  { rule: 'Neg', name: 'Neg', inputs: [f('a', [3, 2])], build: (e, x) => e.op('Neg', [x.a]) },
  { rule: 'Sqrt', name: 'Sqrt', inputs: [f('a', [6], { transform: positive })], build: (e, x) => e.op('Sqrt', [x.a]) },
  { rule: 'Exp', name: 'Exp', inputs: [f('a', [6])], build: (e, x) => e.op('Exp', [x.a]) },
  { rule: 'Log', name: 'Log', inputs: [f('a', [6], { transform: positive })], build: (e, x) => e.op('Log', [x.a]) },
  { rule: 'Reciprocal', name: 'Reciprocal', inputs: [f('a', [6], { transform: away })], build: (e, x) => e.op('Reciprocal', [x.a]) },
  { rule: 'Abs', name: 'Abs', inputs: [f('a', [6], { transform: away })], build: (e, x) => e.op('Abs', [x.a]) },
  { rule: 'Relu', name: 'Relu', inputs: [f('a', [8], { transform: away })], build: (e, x) => e.op('Relu', [x.a]) },
  {
    rule: 'Sigmoid',
    name: 'Sigmoid (and SiLU x·σ(x))',
    inputs: [f('a', [2, 4])],
    build: (e, x) => e.op('Mul', [x.a, e.op('Sigmoid', [x.a])]),
  },
  { rule: 'Tanh', name: 'Tanh', inputs: [f('a', [2, 4])], build: (e, x) => e.op('Tanh', [x.a]) },
  { rule: 'Sin', name: 'Sin', inputs: [f('a', [5])], build: (e, x) => e.op('Sin', [x.a]) },
  { rule: 'Cos', name: 'Cos', inputs: [f('a', [5])], build: (e, x) => e.op('Cos', [x.a]) },
  {
    rule: 'Erf',
    dtype: 'float32',
    name: 'Erf (GELU x·(1+erf(x/√2))/2, float32)',
    inputs: [f('a', [2, 5])],
    build: (e, x) =>
      e.op('Mul', [
        e.op('Mul', [
          x.a,
          e.op('Add', [e.op('Erf', [e.op('Div', [x.a, e.scalar(Math.SQRT2, DataType.FLOAT)])]), e.scalar(1, DataType.FLOAT)]),
        ]),
        e.scalar(0.5, DataType.FLOAT),
      ]),
  },
  {
    rule: 'Cast',
    dtype: 'float32',
    name: 'Cast float32 -> float64 -> float32',
    inputs: [f('a', [2, 3])],
    build: (e, x) => e.op('Cast', [e.op('Tanh', [e.op('Cast', [x.a], { to: DataType.DOUBLE })])], { to: DataType.FLOAT }),
  },
  { rule: 'Dropout', name: 'Dropout (inference)', inputs: [f('a', [2, 3])], build: (e, x) => e.op('Dropout', [x.a]) },
  // Softmax family
  { rule: 'Softmax', name: 'Softmax axis -1', inputs: [f('a', [2, 3, 5])], build: (e, x) => e.op('Softmax', [x.a], { axis: -1 }) },
  {
    rule: 'Softmax',
    name: 'Softmax axis 1, opset 11 (flattened)',
    opset: 11,
    inputs: [f('a', [2, 3, 4])],
    build: (e, x) => e.op('Softmax', [x.a], { axis: 1 }),
  },
  { rule: 'LogSoftmax', name: 'LogSoftmax axis 1', inputs: [f('a', [3, 4])], build: (e, x) => e.op('LogSoftmax', [x.a], { axis: 1 }) },
  // Linear algebra
  {
    rule: 'MatMul',
    name: 'MatMul [2,3,4] x [4,5] (Linear)',
    inputs: [f('a', [2, 3, 4]), f('b', [4, 5])],
    build: (e, x) => e.op('MatMul', [x.a, x.b]),
  },
  {
    rule: 'MatMul',
    name: 'MatMul [2,1,3,4] x [3,4,2] (batch broadcast)',
    inputs: [f('a', [2, 1, 3, 4]), f('b', [3, 4, 2])],
    build: (e, x) => e.op('MatMul', [x.a, x.b]),
  },
  {
    rule: 'MatMul',
    name: 'MatMul [3,4] x [2,4,5]',
    inputs: [f('a', [3, 4]), f('b', [2, 4, 5])],
    build: (e, x) => e.op('MatMul', [x.a, x.b]),
  },
  {
    rule: 'MatMul',
    name: 'MatMul [4] x [2,4,3] and [2,3,4] x [4]',
    inputs: [f('a', [4]), f('b', [2, 4, 3]), f('c', [2, 3, 4]), f('d', [4])],
    build: (e, x) => e.op('Add', [e.op('MatMul', [x.a, x.b]), e.op('MatMul', [x.c, x.d])]),
  },
  {
    rule: 'Gemm',
    name: 'Gemm A·B + C[4]',
    inputs: [f('a', [3, 2]), f('b', [2, 4]), f('c', [4])],
    build: (e, x) => e.op('Gemm', [x.a, x.b, x.c], { alpha: { f: 0.7 }, beta: { f: 1.3 } }),
  },
  {
    rule: 'Gemm',
    name: 'Gemm Aᵀ·Bᵀ + C[3,1]',
    inputs: [f('a', [2, 3]), f('b', [4, 2]), f('c', [3, 1])],
    build: (e, x) => e.op('Gemm', [x.a, x.b, x.c], { transA: 1, transB: 1 }),
  },
  {
    rule: 'Gemm',
    name: 'Gemm Aᵀ·B and A·Bᵀ (no C)',
    inputs: [f('a', [2, 3]), f('b', [2, 4]), f('c', [3, 2]), f('d', [4, 2])],
    build: (e, x) => e.op('Add', [e.op('Gemm', [x.a, x.b], { transA: 1 }), e.op('Gemm', [x.c, x.d], { transB: 1 })]),
  },
  {
    rule: 'Einsum',
    name: 'Einsum bij,bjk->bik',
    inputs: [f('a', [2, 3, 4]), f('b', [2, 4, 2])],
    build: (e, x) => e.op('Einsum', [x.a, x.b], { equation: 'bij,bjk->bik' }),
  },
  {
    rule: 'Einsum',
    name: 'Einsum bid,bjd->bij (attention scores)',
    inputs: [f('a', [2, 3, 4]), f('b', [2, 5, 4])],
    build: (e, x) => e.op('Einsum', [x.a, x.b], { equation: 'bid,bjd->bij' }),
  },
  {
    rule: 'Einsum',
    name: 'Einsum ij->i (label summed away)',
    inputs: [f('a', [3, 4])],
    build: (e, x) => e.op('Einsum', [x.a], { equation: 'ij->i' }),
  },
  // Convolutions (float32: no float64 kernels in onnxruntime's CPU provider)
  {
    rule: 'Conv',
    dtype: 'float32',
    name: 'Conv 3x3 pad 1 (x, W, b)',
    inputs: [f('x', [2, 3, 5, 5]), f('w', [4, 3, 3, 3]), f('b', [4])],
    build: (e, x) => e.op('Conv', [x.x, x.w, x.b], { kernel_shape: [3, 3], pads: [1, 1, 1, 1] }),
  },
  {
    rule: 'Conv',
    dtype: 'float32',
    name: 'Conv stride 2 on even size (output_padding)',
    inputs: [f('x', [1, 2, 8, 6]), f('w', [3, 2, 3, 3])],
    build: (e, x) => e.op('Conv', [x.x, x.w], { strides: [2, 2], pads: [1, 0, 1, 1] }),
  },
  {
    rule: 'Conv',
    dtype: 'float32',
    name: 'Conv dilation 2, 1x1 shortcut',
    inputs: [f('x', [1, 2, 7, 7]), f('w', [2, 2, 3, 3]), f('w1', [3, 2, 1, 1])],
    build: (e, x) => e.op('Conv', [e.op('Conv', [x.x, x.w], { dilations: [2, 2], pads: [2, 2, 2, 2] }), x.w1]),
  },
  {
    rule: 'Conv',
    dtype: 'float32',
    name: 'Conv group 2 (input gradient, frozen weight)',
    inputs: [f('x', [1, 4, 5, 5]), f('w', [6, 2, 3, 3], { grad: false })],
    build: (e, x) => e.op('Conv', [x.x, x.w], { group: 2, pads: [1, 1, 1, 1] }),
  },
  {
    rule: 'Conv',
    dtype: 'float32',
    name: 'Conv SAME_UPPER stride 2',
    inputs: [f('x', [1, 2, 6, 5]), f('w', [2, 2, 3, 3])],
    build: (e, x) => e.op('Conv', [x.x, x.w], { auto_pad: 'SAME_UPPER', strides: [2, 2] }),
  },
  {
    rule: 'ConvTranspose',
    dtype: 'float32',
    name: 'ConvTranspose stride 2',
    inputs: [f('x', [1, 3, 4, 4]), f('w', [3, 2, 3, 3], { grad: false })],
    build: (e, x) => e.op('ConvTranspose', [x.x, x.w], { strides: [2, 2], pads: [1, 1, 1, 1], output_padding: [1, 1] }),
  },
  // Normalizations
  {
    rule: 'InstanceNormalization',
    dtype: 'float32',
    name: 'GroupNorm as exported: Reshape, InstanceNormalization, Reshape, Mul, Add',
    inputs: [f('x', [2, 4, 3, 3]), f('gamma', [4, 1, 1]), f('beta', [4, 1, 1])],
    build: (e, x) =>
      e.op('Add', [
        e.op('Mul', [
          e.reshape(
            e.op(
              'InstanceNormalization',
              [e.reshape(x.x, [2, 2, -1]), e.scalar(1, DataType.FLOAT, [2]), e.scalar(0, DataType.FLOAT, [2])],
              { epsilon: { f: 1e-5 } },
            ),
            [2, 4, 3, 3],
          ),
          x.gamma,
        ]),
        x.beta,
      ]),
  },
  {
    rule: 'InstanceNormalization',
    dtype: 'float32',
    name: 'InstanceNormalization scale and bias',
    inputs: [f('x', [2, 3, 4]), f('s', [3]), f('b', [3])],
    build: (e, x) => e.op('InstanceNormalization', [x.x, x.s, x.b]),
  },
  {
    rule: 'LayerNormalization',
    name: 'LayerNormalization axis -1',
    inputs: [f('x', [2, 3, 5]), f('s', [5]), f('b', [5])],
    build: (e, x) => e.op('LayerNormalization', [x.x, x.s, x.b], { epsilon: { f: 1e-5 } }),
  },
  {
    rule: 'LayerNormalization',
    name: 'LayerNormalization axis 1, broadcast scale',
    inputs: [f('x', [2, 3, 4]), f('s', [1, 4]), f('b', [3, 1])],
    build: (e, x) => e.op('LayerNormalization', [x.x, x.s, x.b], { axis: 1 }),
  },
  {
    rule: 'GroupNormalization',
    name: 'GroupNormalization opset 18 (per-group scale)',
    opset: 18,
    inputs: [f('x', [2, 4, 3]), f('s', [2]), f('b', [2])],
    build: (e, x) => e.op('GroupNormalization', [x.x, x.s, x.b], { num_groups: 2 }),
  },
  {
    rule: 'GroupNormalization',
    name: 'GroupNormalization opset 21 (per-channel scale, float64 stash)',
    opset: 21,
    inputs: [f('x', [2, 6, 2, 2]), f('s', [6]), f('b', [6])],
    build: (e, x) => e.op('GroupNormalization', [x.x, x.s, x.b], { num_groups: 3, stash_type: DataType.DOUBLE }),
  },
  {
    rule: 'ReduceMean',
    name: 'LayerNorm as opset 14 exports it (ReduceMean, Sub, Pow, Sqrt, Div)',
    opset: 14,
    inputs: [f('x', [2, 3, 6]), f('s', [6])],
    build: (e, x) => {
      const centered = e.op('Sub', [x.x, e.reduce('ReduceMean', x.x, [-1], true)]);
      const variance = e.reduce('ReduceMean', e.op('Pow', [centered, e.scalar(2, DataType.DOUBLE)]), [-1], true);
      return e.op('Mul', [e.op('Div', [centered, e.op('Sqrt', [e.op('Add', [variance, e.scalar(1e-5, DataType.DOUBLE)])])]), x.s]);
    },
  },
  {
    rule: 'ReduceMean',
    name: 'ReduceMean opset 18 axes input, keepdims 0',
    opset: 18,
    inputs: [f('x', [2, 3, 4])],
    build: (e, x) => e.reduce('ReduceMean', x.x, [0, 2], false),
  },
  {
    rule: 'ReduceMean',
    name: 'ReduceMean over all axes (no axes)',
    inputs: [f('x', [2, 3])],
    build: (e, x) => e.op('ReduceMean', [x.x], { keepdims: 0 }),
  },
  {
    rule: 'ReduceSum',
    name: 'ReduceSum axes input, keepdims 1',
    inputs: [f('x', [2, 3, 4])],
    build: (e, x) => e.reduce('ReduceSum', x.x, [1], true),
  },
  {
    rule: 'ReduceSum',
    name: 'ReduceSum opset 11 axes attribute, keepdims 0',
    opset: 11,
    inputs: [f('x', [2, 3, 4])],
    build: (e, x) => e.reduce('ReduceSum', x.x, [-1, 0], false),
  },
  // Data movement
  {
    rule: 'Reshape',
    name: 'Reshape with 0 and -1',
    inputs: [f('x', [2, 3, 4])],
    build: (e, x) => e.op('Reshape', [x.x, e.int64s([0, -1, 2])]),
  },
  { rule: 'Flatten', name: 'Flatten axis 2', inputs: [f('x', [2, 3, 4])], build: (e, x) => e.op('Flatten', [x.x], { axis: 2 }) },
  {
    rule: 'Unsqueeze',
    name: 'Unsqueeze/Squeeze (opset 17 inputs)',
    inputs: [f('x', [2, 3])],
    build: (e, x) => e.op('Squeeze', [e.unsqueeze(x.x, [0, 3]), e.int64s([0])]),
  },
  {
    rule: 'Squeeze',
    name: 'Squeeze/Unsqueeze (opset 11 attributes)',
    opset: 11,
    inputs: [f('x', [2, 1, 3])],
    build: (e, x) => e.unsqueeze(e.op('Squeeze', [x.x], { axes: [1] }), [-1]),
  },
  { rule: 'Transpose', name: 'Transpose perm [0,2,3,1]', inputs: [f('x', [2, 3, 4, 1])], build: (e, x) => e.transpose(x.x, [0, 2, 3, 1]) },
  {
    rule: 'Concat',
    name: 'Concat axis 1 of three',
    inputs: [f('a', [2, 1, 3]), f('b', [2, 2, 3]), f('c', [2, 3, 3], { grad: false })],
    build: (e, x) => e.op('Concat', [x.a, x.b, x.c], { axis: 1 }),
  },
  {
    rule: 'Split',
    name: 'Split into [1,3] (one output unused)',
    inputs: [f('x', [2, 4])],
    build: (e, x) => e.b.node('Split', [x.x, e.int64s([1, 3])], { axis: 1 }, { outputs: 2 })[1],
  },
  {
    rule: 'Split',
    name: 'Split opset 11 (attribute), both used',
    opset: 11,
    inputs: [f('x', [4, 3])],
    build: (e, x) => {
      const [p, q] = e.b.node('Split', [x.x], { axis: 0, split: [1, 3] }, { outputs: 2 });
      return e.op('Mul', [q, e.op('Sin', [p])]);
    },
  },
  {
    rule: 'Slice',
    name: 'Slice GEGLU halves (chunk 2 on the last axis)',
    inputs: [f('x', [2, 3, 8])],
    build: (e, x) => e.op('Mul', [e.slice(x.x, [0], [4], [-1]), e.slice(x.x, [4], [1000], [-1])]),
  },
  {
    rule: 'Slice',
    name: 'Slice negative starts, two axes, opset 9 attributes',
    opset: 9,
    inputs: [f('x', [4, 5])],
    build: (e, x) => e.slice(x.x, [-3, 1], [-1, 4], [0, 1]),
  },
  { rule: 'Pad', name: 'Pad constant', inputs: [f('x', [2, 3])], build: (e, x) => e.pad(x.x, [1, 0, 0, 2]) },
  {
    rule: 'Gather',
    name: 'Gather axis 1 with repeated indices',
    inputs: [f('x', [2, 4, 3]), f('i', [2, 2], { kind: 'int64', data: [3, 0, 3, -1] })],
    build: (e, x) => e.op('Gather', [x.x, x.i], { axis: 1 }),
  },
  {
    rule: 'Gather',
    name: 'Gather scalar index (x[:, 0])',
    inputs: [f('x', [3, 4])],
    build: (e, x) => e.op('Gather', [x.x, e.b.scalar(0, DataType.INT64)], { axis: 1 }),
  },
  {
    rule: 'Resize',
    dtype: 'float32',
    name: 'Resize nearest x2 (torch export: asymmetric, floor, scales)',
    inputs: [f('x', [1, 2, 3, 3])],
    build: (e, x) =>
      e.op('Resize', [x.x, null, e.values([1, 1, 2, 2], DataType.FLOAT)], {
        mode: 'nearest',
        coordinate_transformation_mode: 'asymmetric',
        nearest_mode: 'floor',
      }),
  },
  {
    rule: 'Resize',
    dtype: 'float32',
    name: 'Resize nearest by sizes (half_pixel, round_prefer_floor), x3 on one axis',
    inputs: [f('x', [1, 2, 2, 3])],
    build: (e, x) =>
      e.op('Resize', [x.x, e.values([], DataType.FLOAT, [0]), e.values([], DataType.FLOAT, [0]), e.int64s([1, 2, 6, 3])], {
        mode: 'nearest',
      }),
  },
  {
    rule: 'Upsample',
    dtype: 'float32',
    name: 'Upsample nearest (opset 9)',
    opset: 9,
    inputs: [f('x', [1, 1, 2, 3])],
    build: (e, x) => e.op('Upsample', [x.x, e.values([1, 1, 2, 2], DataType.FLOAT)], { mode: 'nearest' }),
  },
];

describe('gradient rules vs central differences in onnxruntime', () => {
  const reports: string[] = [];
  const exercised = new Set<string>();
  afterAll(() => {
    // eslint-disable-next-line no-console
    console.log(`gradient checks (seed base ${BASE_SEED}):\n${reports.join('\n')}`);
  });

  it.each(CASES.map((c, i) => [c.name, c, i] as const))('%s', async (_name, c, i) => {
    const report = await checkGradient({ ...c, dtype: c.dtype ?? 'float64', seed: BASE_SEED + i });
    reports.push(
      `  ${c.name.padEnd(78)} ${c.dtype ?? 'float64'}  max rel err ${report.maxError.toExponential(2)} over ${report.elements} elements; emitted ${report.opsAdded.join(' ')}`,
    );
    expect(report.elements).toBeGreaterThan(0);
    // The case exercises the rule it is named after (the graph it builds differentiates that op).
    expect(report.opsDifferentiated).toContain(c.rule);
    report.opsDifferentiated.forEach((op) => exercised.add(op));
  });

  it('has a check for every rule in the table: each rule ran on a checked gradient path', () => {
    const missing = Object.keys(GRADIENT_RULES).filter((op) => !exercised.has(op));
    expect(missing).toEqual([]);
  });
});
