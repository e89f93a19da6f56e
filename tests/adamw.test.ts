/**
 * The in-graph AdamW step and the weighted loss against plain TypeScript references: a
 * Linear model y = x·Wᵀ + b trained for several steps, each step one session.run whose
 * updated parameters and moments are fed back.
 */
import * as path from 'path';
import * as ort from 'onnxruntime-node';
import { DataType } from '../compiler/dtype';
import { GraphBuilder } from '../compiler/builder';
import { Graph, Model } from '../compiler/ir';
import { saveModel } from '../compiler/serde';
import { assertValidGraph } from '../compiler/verify';
import { addAdamW, AdamWOptions } from '../passes/training/add-adamw';
import { HostAdamW } from '../runtime/train/host-adamw';
import { addLoss } from '../passes/training/add-loss';
import { differentiate } from '../passes/training/differentiate';
import { addGradientOutputs } from '../passes/training/expose-gradients';
import { inferShapes } from '../compiler/shape-inference';
import { normal, rng } from './support/gradient-check';
import { tempDir } from './support/fixture';

const [B, IN, OUT] = [5, 4, 3];

/** torch.optim.AdamW, one tensor, amsgrad off (torch/optim/adamw.py, single-tensor path). */
class ReferenceAdamW {
  private readonly m: number[];
  private readonly v: number[];
  constructor(
    readonly p: number[],
    private readonly o: Required<Pick<AdamWOptions, 'beta1' | 'beta2' | 'eps' | 'weightDecay'>>,
  ) {
    this.m = p.map(() => 0);
    this.v = p.map(() => 0);
  }
  step(grad: ArrayLike<number>, lr: number, t: number): void {
    const { beta1, beta2, eps, weightDecay } = this.o;
    const stepSize = lr / (1 - beta1 ** t);
    const bc2Sqrt = Math.sqrt(1 - beta2 ** t);
    for (let i = 0; i < this.p.length; i++) {
      this.p[i] *= 1 - lr * weightDecay;
      this.m[i] = beta1 * this.m[i] + (1 - beta1) * grad[i];
      this.v[i] = beta2 * this.v[i] + (1 - beta2) * grad[i] * grad[i];
      this.p[i] -= (stepSize * this.m[i]) / (Math.sqrt(this.v[i]) / bc2Sqrt + eps);
    }
  }
}

interface Setup {
  dtype: 'float32' | 'float64';
  options: AdamWOptions & Required<Pick<AdamWOptions, 'beta1' | 'beta2' | 'eps' | 'weightDecay'>>;
  tolerance: number;
}

function buildTrainModel(s: Setup): Model {
  const elemType = s.dtype === 'float32' ? DataType.FLOAT : DataType.DOUBLE;
  const g = new Graph();
  const model = new Model(g);
  model.opsetImports = [{ domain: '', version: 17 }];
  const x = g.addInput('x', { elemType, shape: [B, IN] });
  const w = g.addInput('linear.weight', { elemType, shape: [OUT, IN] });
  const b = g.addInput('linear.bias', { elemType, shape: [OUT] });
  const gb = new GraphBuilder(g, '/linear');
  const y = gb.op('Gemm', [x, w, b], { transB: 1 });
  g.outputs.push(y);
  inferShapes(model);
  const { loss } = addLoss(model, y);
  const { gradients } = differentiate(model, loss, [w, b]);
  addGradientOutputs(g, gradients);
  addAdamW(model, [w, b], gradients, s.options);
  assertValidGraph(g, 'addAdamW');
  return model;
}

const SETUPS: [string, Setup][] = [
  [
    'float32, int64 step, lr [1], torch defaults',
    { dtype: 'float32', options: { beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 1e-2 }, tolerance: 2e-6 },
  ],
  [
    'float64, float step, scalar lr, no weight decay, other betas',
    { dtype: 'float64', options: { beta1: 0.8, beta2: 0.99, eps: 1e-6, weightDecay: 0, lrShape: [], stepType: 'float' }, tolerance: 1e-12 },
  ],
];

describe.each(SETUPS)('AdamW step in the graph (%s)', (_name, s) => {
  it('matches a plain TypeScript AdamW (and loss, gradients) over 6 steps', async () => {
    const model = buildTrainModel(s);
    expect(model.graph.nodes.every((n) => n.domain === '')).toBe(true);
    expect(model.graph.inputs.map((v) => v.name)).toEqual([
      'x',
      'linear.weight',
      'linear.bias',
      'target',
      'loss_weight',
      'lr',
      'step',
      'linear.weight.exp_avg',
      'linear.weight.exp_avg_sq',
      'linear.bias.exp_avg',
      'linear.bias.exp_avg_sq',
    ]);
    expect(model.graph.outputs.map((v) => v.name)).toEqual(
      expect.arrayContaining([
        'loss',
        'linear.weight.updated',
        'linear.weight.exp_avg.updated',
        'linear.weight.exp_avg_sq.updated',
        'linear.bias.updated',
        'linear.bias.exp_avg.updated',
        'linear.bias.exp_avg_sq.updated',
      ]),
    );
    const file = path.join(tempDir(), 'train.onnx');
    saveModel(model, file);
    const session = await ort.InferenceSession.create(file, { executionProviders: ['cpu'] });

    const gauss = normal(rng(4242));
    const draw = (n: number) => Array.from({ length: n }, gauss);
    const [x, target] = [draw(B * IN), draw(B * OUT)];
    const lossWeight = [1, 0.5, 2, 1, 0.25];
    const T = s.dtype === 'float32' ? Float32Array : Float64Array;
    const round = (a: number[]) => Array.from(T.from(a));
    const ref = { w: new ReferenceAdamW(round(draw(OUT * IN)), s.options), b: new ReferenceAdamW(round(draw(OUT)), s.options) };
    let state: Record<string, ArrayLike<number>> = {
      'linear.weight': T.from(ref.w.p),
      'linear.bias': T.from(ref.b.p),
      'linear.weight.exp_avg': new T(OUT * IN),
      'linear.weight.exp_avg_sq': new T(OUT * IN),
      'linear.bias.exp_avg': new T(OUT),
      'linear.bias.exp_avg_sq': new T(OUT),
    };
    const shapes: Record<string, number[]> = { 'linear.weight': [OUT, IN], 'linear.bias': [OUT] };
    const lrs = [0.05, 0.05, 0.02, 0.02, 0.01, 0.01];
    let worst = 0;
    for (let t = 1; t <= lrs.length; t++) {
      const tensor = (data: ArrayLike<number>, dims: number[]) => new ort.Tensor(s.dtype, T.from(data as number[]), dims);
      const feeds: Record<string, ort.Tensor> = {
        x: tensor(x, [B, IN]),
        target: tensor(target, [B, OUT]),
        loss_weight: tensor(lossWeight, [B]),
        lr: tensor([lrs[t - 1]], s.options.lrShape ?? [1]),
        step: s.options.stepType === 'float' ? tensor([t], [1]) : new ort.Tensor('int64', BigInt64Array.of(BigInt(t)), [1]),
      };
      for (const [name, data] of Object.entries(state)) feeds[name] = tensor(data, shapes[name.replace(/\.exp_avg(_sq)?$/, '')]);
      const out = await session.run(feeds);

      // The loss and its gradients, by hand: dL/dy[b,o] = 2·w_b·(y − t)[b,o] / (B·OUT).
      const p = { w: state['linear.weight'], b: state['linear.bias'] };
      let loss = 0;
      const dW = new Array(OUT * IN).fill(0);
      const dB = new Array(OUT).fill(0);
      for (let bi = 0; bi < B; bi++) {
        let sq = 0;
        for (let o = 0; o < OUT; o++) {
          let y = p.b[o];
          for (let i = 0; i < IN; i++) y += x[bi * IN + i] * p.w[o * IN + i];
          const d = y - target[bi * OUT + o];
          sq += d * d;
          const dy = (2 * lossWeight[bi] * d) / (B * OUT);
          dB[o] += dy;
          for (let i = 0; i < IN; i++) dW[o * IN + i] += dy * x[bi * IN + i];
        }
        loss += (lossWeight[bi] * sq) / OUT / B;
      }
      const close = (got: ArrayLike<number>, want: number[], what: string) => {
        const scale = Math.max(...want.map(Math.abs), 1e-3);
        const err = Math.max(...want.map((v, i) => Math.abs(got[i] - v))) / scale;
        if (!(err <= s.tolerance)) throw new Error(`step ${t}: ${what} differs from the reference by ${err} (relative)`);
        worst = Math.max(worst, err);
      };
      close(out.loss.data as Float32Array, [loss], 'loss');
      close(out['linear.weight.grad'].data as Float32Array, dW, 'dW');
      close(out['linear.bias.grad'].data as Float32Array, dB, 'db');

      // The reference optimizer consumes the graph's own gradients (checked just above).
      ref.w.step(out['linear.weight.grad'].data as Float32Array, lrs[t - 1], t);
      ref.b.step(out['linear.bias.grad'].data as Float32Array, lrs[t - 1], t);
      close(out['linear.weight.updated'].data as Float32Array, ref.w.p, 'weight');
      close(out['linear.bias.updated'].data as Float32Array, ref.b.p, 'bias');
      state = {
        'linear.weight': out['linear.weight.updated'].data as Float32Array,
        'linear.bias': out['linear.bias.updated'].data as Float32Array,
        'linear.weight.exp_avg': out['linear.weight.exp_avg.updated'].data as Float32Array,
        'linear.weight.exp_avg_sq': out['linear.weight.exp_avg_sq.updated'].data as Float32Array,
        'linear.bias.exp_avg': out['linear.bias.exp_avg.updated'].data as Float32Array,
        'linear.bias.exp_avg_sq': out['linear.bias.exp_avg_sq.updated'].data as Float32Array,
      };
      // Keep the reference on the graph's parameters so float32 rounding does not accumulate.
      ref.w.p.splice(0, ref.w.p.length, ...Array.from(state['linear.weight']));
      ref.b.p.splice(0, ref.b.p.length, ...Array.from(state['linear.bias']));
    }
    await session.release();
    // eslint-disable-next-line no-console
    console.log(`AdamW ${s.dtype}: ${lrs.length} steps, max relative difference from the TypeScript reference ${worst.toExponential(3)}`);
  });
});

describe('addAdamW errors', () => {
  it('refuses a parameter without a gradient and a taken output name', () => {
    const g = new Graph();
    const model = new Model(g);
    const p = g.addInput('p', { elemType: DataType.FLOAT, shape: [2] });
    expect(() => addAdamW(model, [p], new Map())).toThrow('addAdamW: no gradient for parameter p');
    g.addInput('p.updated', { elemType: DataType.FLOAT, shape: [2] });
    expect(() => addAdamW(model, [p], new Map([[p, p]]))).toThrow('addAdamW: the graph already has a value named "p.updated"');
  });
});

describe('host-side AdamW (runtime/train/host-adamw.ts) against the in-graph step', () => {
  it.each([
    ['torch defaults', { beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 1e-2 }],
    ['no weight decay, other betas', { beta1: 0.8, beta2: 0.99, eps: 1e-6, weightDecay: 0 }],
  ])('%s: moments bit for bit, values within two ulps, at steps 1..300 and far ones', async (_name, options) => {
    const model = buildTrainModel({ dtype: 'float32', options, tolerance: 0 });
    const file = path.join(tempDir(), 'train.onnx');
    saveModel(model, file);
    const session = await ort.InferenceSession.create(file, { executionProviders: ['cpu'] });
    const gauss = normal(rng(77));
    const draw = (n: number, scale = 1) => Float32Array.from({ length: n }, () => scale * gauss());
    const shapes: Record<string, number[]> = { 'linear.weight': [OUT, IN], 'linear.bias': [OUT] };
    const adamw = new HostAdamW({ betas: [options.beta1, options.beta2], eps: options.eps, weightDecay: options.weightDecay });
    const x = draw(B * IN);
    const target = draw(B * OUT);
    // Moments as after some training (exp_avg_sq > 0), so the step is not the first-step special case.
    const state = Object.fromEntries(
      Object.entries(shapes).map(([name, shape]) => {
        const n = shape.reduce((a, b) => a * b, 1);
        return [name, { name, shape, value: draw(n), expAvg: draw(n, 0.01), expAvgSq: Float32Array.from(draw(n, 0.01), (v) => v * v) }];
      }),
    );
    const steps = [...Array.from({ length: 300 }, (_, i) => i + 1), 517, 1000, 2047, 5000, 10000];
    let mismatches = 0;
    for (const t of steps) {
      const lr = [1e-4, 1e-2, 0.05][t % 3];
      const feeds: Record<string, ort.Tensor> = {
        x: new ort.Tensor('float32', x, [B, IN]),
        target: new ort.Tensor('float32', target, [B, OUT]),
        loss_weight: new ort.Tensor('float32', Float32Array.of(1, 0.5, 2, 1, 0.25), [B]),
        lr: new ort.Tensor('float32', Float32Array.of(lr), [1]),
        step: new ort.Tensor('int64', BigInt64Array.of(BigInt(t)), [1]),
      };
      for (const p of Object.values(state)) {
        feeds[p.name] = new ort.Tensor('float32', p.value, p.shape);
        feeds[`${p.name}.exp_avg`] = new ort.Tensor('float32', p.expAvg, p.shape);
        feeds[`${p.name}.exp_avg_sq`] = new ort.Tensor('float32', p.expAvgSq, p.shape);
      }
      const out = await session.run(feeds);
      const params = Object.values(state).map((p) => ({
        ...p,
        value: Float32Array.from(p.value),
        expAvg: Float32Array.from(p.expAvg),
        expAvgSq: Float32Array.from(p.expAvgSq),
      }));
      adamw.step(
        params,
        params.map((p) => out[`${p.name}.grad`].data as Float32Array),
        lr,
        t,
      );
      for (const p of params) {
        const same = (a: Float32Array, name: string) => Buffer.from(a.buffer).equals(Buffer.from((out[name].data as Float32Array).buffer));
        expect(same(p.expAvg, `${p.name}.exp_avg.updated`)).toBe(true);
        expect(same(p.expAvgSq, `${p.name}.exp_avg_sq.updated`)).toBe(true);
        if (!same(p.value, `${p.name}.updated`)) mismatches++;
        // β^t = exp(t·ln β) is onnxruntime's float32 exp in the graph (not always correctly rounded)
        // and the correctly rounded one here: an update may differ in its last two bits, no more.
        const want = out[`${p.name}.updated`].data as Float32Array;
        p.value.forEach((v, i) => expect(Math.abs(v - want[i])).toBeLessThanOrEqual(Math.abs(want[i]) * 2 ** -21));
      }
    }
    await session.release();
    // eslint-disable-next-line no-console
    console.log(`host AdamW vs graph: ${mismatches} of ${steps.length * 2} parameter updates differ in any bit`);
    expect(mismatches).toBeLessThanOrEqual(Math.ceil(0.02 * steps.length * 2));
  });

  it('refuses gradients that do not match the parameters', () => {
    const adamw = new HostAdamW({ betas: [0.9, 0.999], eps: 1e-8, weightDecay: 0.01 });
    const p = { name: 'p', shape: [2], value: new Float32Array(2), expAvg: new Float32Array(2), expAvgSq: new Float32Array(2) };
    expect(() => adamw.step([p], [], 1e-3, 1)).toThrow('AdamW: 0 gradients for 1 parameters');
    expect(() => adamw.step([p], [new Float32Array(3)], 1e-3, 1)).toThrow('AdamW: gradient of p has 3 values, the parameter 2');
  });
});
