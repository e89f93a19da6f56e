/**
 * The differentiation driver on a tiny UNet-like block (GroupNorm as exported, SiLU, frozen
 * Conv, LayerNorm, LoRA'd attention with Softmax, GEGLU feed-forward, nearest upsampling)
 * against central differences, plus the driver's errors and pruning.
 */
import { DataType } from '../compiler/dtype';
import { GraphBuilder } from '../compiler/builder';
import { Graph, Model, Value } from '../compiler/ir';
import { HollowcError } from '../compiler/errors';
import { differentiate } from '../passes/training/differentiate';
import { OpEmitter } from '../compiler/op-emitter';
import { inferShapes } from '../compiler/shape-inference';
import { InputSpec, checkGradient } from './support/gradient-check';

const SEED = Number(process.env.HOLLOWC_GRAD_SEED ?? 777);
const half = (x: number) => 0.5 * x;
const frozen = (name: string, shape: number[]): InputSpec => ({ name, shape, grad: false, transform: half });
const lora = (name: string, shape: number[]): InputSpec => ({ name, shape, transform: half });

/** y + (x·Aᵀ)·Bᵀ, LoRA on a frozen Linear (weight [in, out] as exported). */
function linearWithLora(e: OpEmitter, x: Value, w: Value, a?: Value, b?: Value): Value {
  const y = e.op('MatMul', [x, w]);
  if (!a || !b) return y;
  const delta = e.op('MatMul', [e.op('MatMul', [x, e.transpose(a, [1, 0])]), e.transpose(b, [1, 0])]);
  return e.op('Add', [y, e.op('Mul', [delta, e.scalar(2, DataType.FLOAT)])]);
}

function block(e: OpEmitter, x: Record<string, Value>): Value {
  const f = (v: number) => e.scalar(v, DataType.FLOAT);
  // GroupNorm(2 groups) as torch exports it, then SiLU and a frozen 3x3 conv.
  const grouped = e.reshape(x.x, [1, 2, -1]);
  const normed = e.op('InstanceNormalization', [grouped, e.scalar(1, DataType.FLOAT, [2]), e.scalar(0, DataType.FLOAT, [2])]);
  const gn = e.op('Add', [e.op('Mul', [e.reshape(normed, [1, 4, 4, 4]), x.gamma]), x.beta]);
  const h = e.op('Conv', [e.op('Mul', [gn, e.op('Sigmoid', [gn])]), x.conv, x.convBias], { pads: [1, 1, 1, 1] });
  // Tokens [1, 16, 4], LayerNorm, single-head-pair attention with LoRA on q, v and out.
  const tokens = e.transpose(e.reshape(h, [1, 4, 16]), [0, 2, 1]);
  const ln = e.op('LayerNormalization', [tokens, x.lnScale, x.lnBias], { axis: -1 });
  const heads = (t: Value) => e.transpose(e.reshape(t, [1, 16, 2, 2]), [0, 2, 1, 3]);
  const q = heads(linearWithLora(e, ln, x.wq, x.aq, x.bq));
  const k = heads(linearWithLora(e, ln, x.wk));
  const v = heads(linearWithLora(e, ln, x.wv, x.av, x.bv));
  const scores = e.op('Mul', [e.op('MatMul', [q, e.transpose(k, [0, 1, 3, 2])]), f(1 / Math.SQRT2)]);
  const attn = e.reshape(e.transpose(e.op('MatMul', [e.op('Softmax', [scores], { axis: -1 }), v]), [0, 2, 1, 3]), [1, 16, 4]);
  const out = e.op('Add', [tokens, linearWithLora(e, attn, x.wo, x.ao, x.bo)]);
  // GEGLU feed-forward: proj to 8, chunk, a·gelu(gate) with erf.
  const proj = e.op('MatMul', [out, x.wff]);
  const value = e.slice(proj, [0], [4], [-1]);
  const gate = e.slice(proj, [4], [8], [-1]);
  const gelu = e.op('Mul', [e.op('Mul', [gate, e.op('Add', [e.op('Erf', [e.op('Div', [gate, f(Math.SQRT2)])]), f(1)])]), f(0.5)]);
  const ff = e.op('Add', [out, e.op('Mul', [value, gelu])]);
  // Back to an image, nearest x2 upsampling, frozen output conv.
  const image = e.reshape(e.transpose(ff, [0, 2, 1]), [1, 4, 4, 4]);
  const up = e.op('Resize', [image, null, e.values([1, 1, 2, 2], DataType.FLOAT)], {
    mode: 'nearest',
    coordinate_transformation_mode: 'asymmetric',
    nearest_mode: 'floor',
  });
  return e.op('Conv', [up, x.convOut], { pads: [1, 1, 1, 1] });
}

const INPUTS: InputSpec[] = [
  frozen('x', [1, 4, 4, 4]),
  frozen('gamma', [4, 1, 1]),
  frozen('beta', [4, 1, 1]),
  frozen('conv', [4, 4, 3, 3]),
  frozen('convBias', [4]),
  frozen('lnScale', [4]),
  frozen('lnBias', [4]),
  frozen('wq', [4, 4]),
  frozen('wk', [4, 4]),
  frozen('wv', [4, 4]),
  frozen('wo', [4, 4]),
  frozen('wff', [4, 8]),
  frozen('convOut', [2, 4, 3, 3]),
  lora('aq', [2, 4]),
  lora('bq', [4, 2]),
  lora('av', [2, 4]),
  lora('bv', [4, 2]),
  lora('ao', [2, 4]),
  lora('bo', [4, 2]),
];

describe('differentiate on a UNet-like block', () => {
  it('matches central differences for the LoRA tensors and builds no weight gradients', async () => {
    const report = await checkGradient({ name: 'UNet-like block', dtype: 'float32', inputs: INPUTS, build: block, seed: SEED });
    // eslint-disable-next-line no-console
    console.log(
      `composite block (seed ${SEED}): max rel err ${report.maxError.toExponential(3)} over ${report.elements} LoRA elements; ${report.nodesAdded} nodes added: ${report.opsAdded.join(' ')}`,
    );
    // The convolutions are frozen: their backward is input-gradient only (ConvTranspose).
    expect(report.opsAdded).toContain('ConvTranspose');
    expect(report.opsAdded).not.toContain('Conv');
    expect(report.elements).toBe(48);
  });

  it('also matches with every tensor trainable (weight gradients of Conv, LayerNorm, MatMul)', async () => {
    const all = INPUTS.filter((s) => s.name !== 'x').map((s) => ({ ...s, grad: true }));
    const report = await checkGradient({
      name: 'UNet-like block, all weights',
      dtype: 'float32',
      inputs: [INPUTS[0], ...all],
      build: block,
      seed: SEED + 1,
    });
    // eslint-disable-next-line no-console
    console.log(
      `composite block, all weights (seed ${SEED + 1}): max rel err ${report.maxError.toExponential(3)} over ${report.elements} elements`,
    );
    expect(report.opsAdded).toContain('Conv');
  });
});

describe('differentiate errors and pruning', () => {
  function graphWith(build: (e: OpEmitter, x: Value, w: Value) => Value, opset = 17): { model: Model; loss: Value; x: Value; w: Value } {
    const g = new Graph();
    const model = new Model(g);
    model.opsetImports = [{ domain: '', version: opset }];
    const x = g.addInput('x', { elemType: DataType.FLOAT, shape: [2, 3] });
    const w = g.addInput('w', { elemType: DataType.FLOAT, shape: [3] });
    const e = new OpEmitter(new GraphBuilder(g, '/m'), opset);
    const loss = e.reduce('ReduceSum', build(e, x, w), [0, 1], false);
    g.outputs.push(loss);
    inferShapes(model);
    return { model, loss, x, w };
  }

  it('names the op and node on the gradient path that has no rule', () => {
    const { model, loss, w } = graphWith((e, x, w) => e.op('Softplus', [e.op('Mul', [x, w])]));
    expect(() => differentiate(model, loss, [w])).toThrow(
      new HollowcError('differentiate: no gradient rule for op Softplus (node "/m/Softplus", on the path from w to /m/ReduceSum_output_0)'),
    );
  });

  it('reports a rule that cannot handle a node, naming it', () => {
    const { model, loss, x } = graphWith((e, x) =>
      e.op('Resize', [e.reshape(x, [1, 1, 2, 3]), null, e.values([1, 1, 2, 2], DataType.FLOAT)], { mode: 'linear' }),
    );
    expect(() => differentiate(model, loss, [x])).toThrow(
      'differentiate: Resize node "/m/Resize": only mode "nearest" has a gradient rule (got "linear")',
    );
  });

  it('ignores ops off the gradient path and stops at ops without gradient', () => {
    // Softplus only sees x (frozen); the comparison on w's path has no gradient by definition.
    const { model, loss, w } = graphWith((e, x, w) =>
      e.op('Add', [
        e.op('Softplus', [x]),
        e.op('Where', [e.op('Greater', [w, e.scalar(0, DataType.FLOAT)]), w, e.scalar(0, DataType.FLOAT)]),
      ]),
    );
    const before = model.graph.nodes.length;
    const softplus = model.graph.nodes.find((n) => n.opType === 'Softplus')!;
    const { gradients, nodesDifferentiated } = differentiate(model, loss, [w]);
    expect(gradients.get(w)!.type?.shape).toEqual([3]);
    expect(nodesDifferentiated).toBe(4); // Greater, Where, Add, ReduceSum
    // The backward reads nothing of the frozen branch: neither x nor the Softplus output.
    const backward = model.graph.nodes.slice(before);
    expect(backward.length).toBeGreaterThan(0);
    expect(
      backward.filter((n) => n.inputs.some((v) => v === softplus.inputs[0] || v === softplus.outputs[0])).map((n) => n.opType),
    ).toEqual([]);
  });

  it('gives zeros (or an error, when asked) for a parameter the loss does not depend on', () => {
    const { model, loss, x } = graphWith((e, x) => e.op('Relu', [x]));
    const unused = model.graph.addInput('unused', { elemType: DataType.FLOAT, shape: [4, 2] });
    expect(() => differentiate(model, loss, [x, unused], { unreachable: 'error' })).toThrow(
      'differentiate: /m/ReduceSum_output_0 does not depend on unused',
    );
    const { gradients } = differentiate(model, loss, [x, unused]);
    expect(gradients.get(unused)!.producer!.opType).toBe('ConstantOfShape');
    expect(gradients.get(unused)!.type).toEqual({ elemType: DataType.FLOAT, shape: [4, 2] });
  });
});
