/**
 * Per-op precision of onnxruntime's WebGPU kernels against the CPU provider (not part of
 * `npm test`): one small graph per op on seeded random inputs, worst |gpu - cpu| / max |cpu|.
 *   VK_ICD_FILENAMES=... LD_LIBRARY_PATH=/usr/lib/chromium node dist/tests/bench/webgpu-ops.js
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import * as ort from 'onnxruntime-node';
import { GraphBuilder } from '../../compiler/builder';
import { DataType } from '../../compiler/dtype';
import { Graph, Model, Value } from '../../compiler/ir';
import { saveModel } from '../../compiler/serde';
import { Rng, fillNormal } from '../../models/random';
import { useSoftwareVulkan } from '../../runtime/ort/vulkan';

interface Case {
  name: string;
  inputs: { shape: number[]; scale?: number; offset?: number; positive?: boolean }[];
  build: (b: GraphBuilder, x: Value[]) => Value;
}

const N = 4096;

/** InstanceNormalization over 8 channels, unit scale, zero bias. */
const instanceNorm = (b: GraphBuilder, x: Value, epsilon: number) =>
  b.op('InstanceNormalization', [x, b.constant(new Float32Array(8).fill(1), [8]), b.constant(new Float32Array(8), [8])], {
    epsilon: { f: epsilon },
  });
const CASES: Case[] = [
  {
    name: 'Sin [0, 1000)',
    inputs: [{ shape: [N], scale: 0, offset: 0 }],
    build: (b, [x]) => b.op('Sin', [b.op('Mul', [x, b.scalar(1000)])]),
  },
  {
    name: 'Cos [0, 1000)',
    inputs: [{ shape: [N], scale: 0, offset: 0 }],
    build: (b, [x]) => b.op('Cos', [b.op('Mul', [x, b.scalar(1000)])]),
  },
  { name: 'Sin [0, 3)', inputs: [{ shape: [N], scale: 0, offset: 0 }], build: (b, [x]) => b.op('Sin', [b.op('Mul', [x, b.scalar(3)])]) },
  { name: 'Exp', inputs: [{ shape: [N], scale: 3 }], build: (b, [x]) => b.op('Exp', [x]) },
  { name: 'Erf', inputs: [{ shape: [N], scale: 2 }], build: (b, [x]) => b.op('Erf', [x]) },
  { name: 'Sigmoid', inputs: [{ shape: [N], scale: 4 }], build: (b, [x]) => b.op('Sigmoid', [x]) },
  { name: 'Tanh', inputs: [{ shape: [N], scale: 2 }], build: (b, [x]) => b.op('Tanh', [x]) },
  { name: 'Sqrt', inputs: [{ shape: [N], positive: true }], build: (b, [x]) => b.op('Sqrt', [x]) },
  { name: 'Reciprocal', inputs: [{ shape: [N], positive: true }], build: (b, [x]) => b.op('Reciprocal', [x]) },
  { name: 'Div', inputs: [{ shape: [N] }, { shape: [N], positive: true }], build: (b, [x, y]) => b.op('Div', [x, y]) },
  {
    name: 'Pow 0.999^t',
    inputs: [{ shape: [N], positive: true }],
    build: (b, [x]) => b.op('Pow', [b.scalar(0.999), b.op('Mul', [x, b.scalar(1000)])]),
  },
  {
    name: '1 - 0.999^t, t = 1..4096',
    inputs: [{ shape: [N], scale: 0, offset: 0 }],
    build: (b, [x]) =>
      b.op('Sub', [b.scalar(1), b.op('Pow', [b.scalar(0.999), b.op('Add', [b.op('Mul', [x, b.scalar(N)]), b.scalar(1)])])]),
  },
  {
    name: '1 - exp(t ln 0.999), t = 1..4096',
    inputs: [{ shape: [N], scale: 0, offset: 0 }],
    build: (b, [x]) =>
      b.op('Sub', [
        b.scalar(1),
        b.op('Exp', [b.op('Mul', [b.op('Add', [b.op('Mul', [x, b.scalar(N)]), b.scalar(1)]), b.scalar(Math.log(0.999))])]),
      ]),
  },
  { name: 'Softmax 64', inputs: [{ shape: [64, 64], scale: 3 }], build: (b, [x]) => b.op('Softmax', [x], { axis: -1 }) },
  { name: 'ReduceMean 4096', inputs: [{ shape: [4, N] }], build: (b, [x]) => b.op('ReduceMean', [x], { axes: [1], keepdims: 0 }) },
  {
    name: 'ReduceSum 4096',
    inputs: [{ shape: [4, N] }],
    build: (b, [x]) => b.op('ReduceSum', [x, b.constant(BigInt64Array.of(1n), [1])], { keepdims: 0 }),
  },
  { name: 'MatMul 64x512x64', inputs: [{ shape: [64, 512] }, { shape: [512, 64] }], build: (b, [x, y]) => b.op('MatMul', [x, y]) },
  {
    name: 'Gemm transB 64x512x64',
    inputs: [{ shape: [64, 512] }, { shape: [64, 512] }],
    build: (b, [x, y]) => b.op('Gemm', [x, y], { transB: 1 }),
  },
  {
    name: 'InstanceNormalization 8x256',
    inputs: [{ shape: [1, 8, 256], scale: 2, offset: 3 }],
    build: (b, [x]) => instanceNorm(b, x, 1e-5),
  },
  {
    // Per-instance mean 20 times the deviation: what a GroupNorm sees after a few residual adds.
    name: 'InstanceNormalization 8x256, mean 20 sd',
    inputs: [{ shape: [1, 8, 256], scale: 1, offset: 20 }],
    build: (b, [x]) => instanceNorm(b, x, 1e-6),
  },
  {
    name: 'same, mean subtracted first',
    inputs: [{ shape: [1, 8, 256], scale: 1, offset: 20 }],
    build: (b, [x]) => instanceNorm(b, b.op('Sub', [x, b.op('ReduceMean', [x], { axes: [2], keepdims: 1 })]), 1e-6),
  },
  {
    // Two nodes on one input shape: the WebGPU provider runs both with one epsilon (one shader per shape).
    name: 'InstanceNormalization eps 1e-5 - eps 1e-6',
    inputs: [{ shape: [1, 8, 96], scale: 0.4 }],
    build: (b, [x]) => b.op('Sub', [instanceNorm(b, x, 1e-5), instanceNorm(b, x, 1e-6)]),
  },
  {
    name: 'LayerNormalization 256, mean 20 sd',
    inputs: [{ shape: [16, 256], scale: 1, offset: 20 }],
    build: (b, [x]) =>
      b.op('LayerNormalization', [x, b.constant(new Float32Array(256).fill(1), [256]), b.constant(new Float32Array(256), [256])], {
        axis: -1,
        epsilon: { f: 1e-5 },
      }),
  },
  {
    name: 'LayerNormalization 256',
    inputs: [{ shape: [16, 256], scale: 2, offset: 3 }],
    build: (b, [x]) =>
      b.op('LayerNormalization', [x, b.constant(new Float32Array(256).fill(1), [256]), b.constant(new Float32Array(256), [256])], {
        axis: -1,
        epsilon: { f: 1e-5 },
      }),
  },
  {
    name: 'Conv 3x3 16->16 on 8x8',
    inputs: [{ shape: [1, 16, 8, 8] }, { shape: [16, 16, 3, 3] }],
    build: (b, [x, w]) => b.op('Conv', [x, w], { pads: [1, 1, 1, 1] }),
  },
  {
    name: 'ConvTranspose 3x3 16->16 on 8x8',
    inputs: [{ shape: [1, 16, 8, 8] }, { shape: [16, 16, 3, 3] }],
    build: (b, [x, w]) => b.op('ConvTranspose', [x, w], { pads: [1, 1, 1, 1] }),
  },
];

function modelFor(c: Case, file: string): void {
  const g = new Graph();
  g.name = c.name;
  const b = new GraphBuilder(g);
  const xs = c.inputs.map((inp, i) => g.addInput(`x${i}`, { elemType: DataType.FLOAT, shape: inp.shape }));
  const node = g.addNode({ opType: 'Identity', inputs: [c.build(b, xs)], outputs: ['y'], name: 'out' });
  g.outputs.push(node.outputs[0]);
  const m = new Model(g);
  m.irVersion = 8;
  m.opsetImports = [{ domain: '', version: 17 }];
  saveModel(m, file);
}

async function main() {
  useSoftwareVulkan();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hollowc-ops-'));
  const only = process.argv.slice(2);
  for (const c of CASES.filter((k) => !only.length || only.some((o) => k.name.includes(o)))) {
    const file = path.join(dir, `${c.name.replace(/\W+/g, '_')}.onnx`);
    modelFor(c, file);
    const feeds: Record<string, ort.Tensor> = {};
    c.inputs.forEach((inp, i) => {
      const n = inp.shape.reduce((a, b) => a * b, 1);
      const a = new Float32Array(n);
      const rng = new Rng(5, `${c.name}/${i}`);
      if (inp.scale === 0) for (let j = 0; j < n; j++) a[j] = j / n;
      else {
        fillNormal(rng, a, inp.scale ?? 1);
        for (let j = 0; j < n; j++) a[j] = inp.positive ? 0.1 + Math.abs(a[j]) : a[j] + (inp.offset ?? 0);
      }
      feeds[`x${i}`] = new ort.Tensor('float32', a, inp.shape);
    });
    const cpu = await ort.InferenceSession.create(file, { executionProviders: ['cpu'] });
    const gpu = await ort.InferenceSession.create(file, { executionProviders: ['webgpu'] });
    const want = (await cpu.run(feeds)).y.data as Float32Array;
    const got = (await gpu.run(feeds)).y.data as Float32Array;
    let maxAbs = 0;
    let scale = 0;
    let worstRelElem = 0;
    for (let i = 0; i < want.length; i++) {
      const d = Math.abs(want[i] - got[i]);
      maxAbs = Math.max(maxAbs, d);
      scale = Math.max(scale, Math.abs(want[i]));
      if (Math.abs(want[i]) > 1e-3) worstRelElem = Math.max(worstRelElem, d / Math.abs(want[i]));
    }
    console.log(
      `${c.name.padEnd(34)} max abs ${maxAbs.toExponential(2)}  / max|cpu| ${(maxAbs / scale).toExponential(2)}  worst elementwise rel ${worstRelElem.toExponential(2)}`,
    );
    await cpu.release();
    await gpu.release();
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
