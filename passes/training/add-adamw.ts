/**
 * One in-graph torch.optim.AdamW step (amsgrad off), so one `session.run` trains one step:
 *
 *   p ← p·(1 − lr·wd)                           (decoupled weight decay, before the update)
 *   m ← β1·m + (1 − β1)·g
 *   v ← β2·v + (1 − β2)·g²
 *   p ← p − (lr / (1 − β1^t)) · m / (√v / √(1 − β2^t) + ε)
 *
 * with t the 1-based `step` input. Inputs `lr`, `step`, `<param>.exp_avg`,
 * `<param>.exp_avg_sq`; outputs `<param>.updated`, `<param>.exp_avg.updated`,
 * `<param>.exp_avg_sq.updated`. β1, β2, ε and the weight decay are constants.
 */
import { GraphBuilder } from '../../compiler/builder';
import { DataType } from '../../compiler/dtype';
import { HollowcError } from '../../compiler/errors';
import { Graph, Model, Value } from '../../compiler/ir';
import { LEARNING_RATE, STEP, expAvgName, expAvgSqName, updatedName } from '../../compiler/manifest';
import { OpEmitter, staticShapeOf } from '../../compiler/op-emitter';
import { Pass } from '../../compiler/pass';
import { ArtifactState, trainableValues } from '../lib/artifact-state';

export interface AdamWOptions {
  beta1?: number;
  beta2?: number;
  eps?: number;
  /** torch's default is 1e-2. */
  weightDecay?: number;
  /** Shape of the `lr` input: [1] (default) or [] (scalar). */
  lrShape?: [] | [1];
  /** Element type of the `step` input (default int64, shape [1]). */
  stepType?: 'int64' | 'float';
  lrName?: string;
  stepName?: string;
}

export interface AdamWParamState {
  param: Value;
  grad: Value;
  expAvg: Value;
  expAvgSq: Value;
  updated: Value;
  expAvgUpdated: Value;
  expAvgSqUpdated: Value;
}

export interface AdamWResult {
  lr: Value;
  step: Value;
  states: AdamWParamState[];
}

function namedOutput(g: Graph, opType: string, inputs: Value[], name: string, like: Value): Value {
  if (g.tryValue(name)) throw new HollowcError(`addAdamW: the graph already has a value named ${JSON.stringify(name)}`);
  const v = g.addNode({ opType, name: `/adamw/${name}/${opType}`, inputs, outputs: [name] }).outputs[0];
  v.type = { elemType: like.type!.elemType, shape: [...staticShapeOf(like)] };
  g.outputs.push(v);
  return v;
}

export function addAdamW(
  model: Model,
  params: readonly Value[],
  gradients: ReadonlyMap<Value, Value>,
  options: AdamWOptions = {},
): AdamWResult {
  const g = model.graph;
  const { beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weightDecay = 1e-2 } = options;
  if (params.length === 0) throw new HollowcError('addAdamW: no parameters to update');
  const elemType = params[0].type!.elemType;
  for (const p of params) {
    if (p.type?.elemType !== elemType)
      throw new HollowcError(`addAdamW: parameter ${p.name} has another element type than ${params[0].name}`);
    if (!gradients.has(p)) throw new HollowcError(`addAdamW: no gradient for parameter ${p.name}`);
  }
  const lr = g.addInput(options.lrName ?? LEARNING_RATE, { elemType, shape: [...(options.lrShape ?? [1])] });
  const stepIsInt = (options.stepType ?? 'int64') === 'int64';
  const step = g.addInput(options.stepName ?? STEP, { elemType: stepIsInt ? DataType.INT64 : elemType, shape: [1] });

  const e = new OpEmitter(new GraphBuilder(g, '/adamw'), model.opsetVersion(''));
  const constants = new Map<number, Value>();
  const c = (x: number): Value => {
    if (!constants.has(x)) constants.set(x, e.scalar(x, elemType));
    return constants.get(x)!;
  };
  const t = stepIsInt ? e.op('Cast', [step], { to: elemType }) : step;
  // Shared scalars: step size lr/(1 − β1^t), √(1 − β2^t), decay factor 1 − lr·wd.
  // β^t as exp(t·ln β) with ln β taken in float64 here: onnxruntime's WebGPU Pow (exp2(y·log2 x))
  // was 1.2e-5 off absolute on SwiftShader, 100x more than its Exp, and 1 − β2^t turns that into
  // a relative error of every update (tests/bench/webgpu-ops.ts).
  const power = (beta: number) => (beta === 0 ? c(0) : e.op('Exp', [e.op('Mul', [t, c(Math.log(beta))])]));
  const biasCorrection1 = e.op('Sub', [c(1), power(beta1)]);
  const biasCorrection2Sqrt = e.op('Sqrt', [e.op('Sub', [c(1), power(beta2)])]);
  const stepSize = e.op('Div', [lr, biasCorrection1]);
  const decay = weightDecay !== 0 ? e.op('Sub', [c(1), e.op('Mul', [lr, c(weightDecay)])]) : undefined;

  const states = params.map((param): AdamWParamState => {
    const pe = e.within(param.name);
    const grad = gradients.get(param)!;
    const type = { elemType, shape: [...staticShapeOf(param)] };
    const expAvg = g.addInput(expAvgName(param.name), { ...type, shape: [...type.shape] });
    const expAvgSq = g.addInput(expAvgSqName(param.name), { ...type, shape: [...type.shape] });
    const m = pe.op('Add', [pe.op('Mul', [expAvg, c(beta1)]), pe.op('Mul', [grad, c(1 - beta1)])]);
    const v = pe.op('Add', [pe.op('Mul', [expAvgSq, c(beta2)]), pe.op('Mul', [pe.op('Mul', [grad, grad]), c(1 - beta2)])]);
    const expAvgUpdated = namedOutput(g, 'Identity', [m], updatedName(expAvgName(param.name)), param);
    const expAvgSqUpdated = namedOutput(g, 'Identity', [v], updatedName(expAvgSqName(param.name)), param);
    const denom = pe.op('Add', [pe.op('Div', [pe.op('Sqrt', [v]), biasCorrection2Sqrt]), c(eps)]);
    const delta = pe.op('Mul', [pe.op('Div', [m, denom]), stepSize]);
    const decayed = decay ? pe.op('Mul', [param, decay]) : param;
    const updated = namedOutput(g, 'Sub', [decayed, delta], updatedName(param.name), param);
    return { param, grad, expAvg, expAvgSq, updated, expAvgUpdated, expAvgSqUpdated };
  });
  return { lr, step, states };
}

/** train.onnx: the step updates every trained parameter (LoRA, then base weights) with the spec's AdamW constants. */
export const addAdamWPass: Pass<ArtifactState> = {
  name: 'add-adamw',
  requires: ['loraParams', 'baseParams', 'gradients'],
  run(model, state) {
    const { betas, eps, weightDecay } = state.training.optimizer;
    // A float32 `step` (exact to 2^24 steps): onnxruntime's WebGPU Cast takes no int64, so an int64
    // step put its Cast on the CPU with a host copy every step. The runtime feeds the declared dtype.
    const r = addAdamW(model, trainableValues(model, state), state.gradients!, {
      beta1: betas[0],
      beta2: betas[1],
      eps,
      weightDecay,
      stepType: 'float',
    });
    return { changed: true, summary: `AdamW on ${r.states.length} tensors` };
  },
};
