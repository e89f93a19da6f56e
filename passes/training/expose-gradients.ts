/**
 * grads.onnx's outputs: the loss and the gradient of every trained parameter (LoRA, then the base weights that train), `<param>.grad`, for
 * runtimes that apply the optimizer themselves. Under `gradients fp16` each gradient leaves as
 * float16 with a float32 scale beside it, `<param>.grad_scale`.
 */
import { GraphBuilder } from '../../compiler/builder';
import { DataType } from '../../compiler/dtype';
import { HollowcError } from '../../compiler/errors';
import { Graph, Model, Node, Value } from '../../compiler/ir';
import { FLOAT16_GRADIENT_PEAK, gradientName, gradientScaleName } from '../../compiler/manifest';
import { OpEmitter, staticShapeOf } from '../../compiler/op-emitter';
import { Pass } from '../../compiler/pass';
import { ArtifactState, trainableValues } from '../lib/artifact-state';

/**
 * Exposes gradients as graph outputs named `<wrt name><suffix>` (Identity nodes, so the
 * names are exact). Returns the output values by wrt.
 */
export function addGradientOutputs(
  graph: Graph,
  gradients: ReadonlyMap<Value, Value>,
  nameOf: (wrt: string) => string = gradientName,
): Map<Value, Value> {
  const out = new Map<Value, Value>();
  for (const [w, gw] of gradients) {
    const name = nameOf(w.name);
    if (graph.tryValue(name)) throw new HollowcError(`cannot name the gradient of ${w.name} ${JSON.stringify(name)}: the name is taken`);
    const node: Node = graph.addNode({ opType: 'Identity', name: `/grad_outputs/${name}`, inputs: [gw], outputs: [name] });
    const v = node.outputs[0];
    v.type = { elemType: w.type!.elemType, shape: [...staticShapeOf(w)] };
    graph.outputs.push(v);
    out.set(w, v);
  }
  return out;
}

// Below this largest magnitude a gradient is taken as zero: FLOAT16_GRADIENT_PEAK / 2^-100 stays finite in float32.
const SMALLEST_SCALED_MAGNITUDE = 2 ** -100;

/**
 * `<param>.grad` as float16 and `<param>.grad_scale` (float32 scalar): g · (PEAK / m) rounded to
 * float16, and m / PEAK, where m = max|g|. The scale is per tensor, found in the graph, so no
 * gradient overflows float16 and none needs a loss scale kept across steps (resume stays exact).
 */
function addFloat16GradientOutputs(model: Model, gradients: ReadonlyMap<Value, Value>): Map<Value, Value[]> {
  const graph = model.graph;
  const out = new Map<Value, Value[]>();
  for (const [w, gw] of gradients) {
    const name = gradientName(w.name);
    const scaleName = gradientScaleName(w.name);
    for (const n of [name, scaleName])
      if (graph.tryValue(n)) throw new HollowcError(`cannot name a gradient output of ${w.name} ${JSON.stringify(n)}: the name is taken`);
    const e = new OpEmitter(new GraphBuilder(graph, `/grad_outputs/${name}`), model.opsetVersion(''));
    // ReduceMax without axes reduces every axis in every opset.
    const largest = e.op('Max', [e.op('ReduceMax', [e.op('Abs', [gw])], { keepdims: 0 }), e.scalar(SMALLEST_SCALED_MAGNITUDE, DataType.FLOAT)]);
    const peak = e.scalar(FLOAT16_GRADIENT_PEAK, DataType.FLOAT);
    const scaled = e.op('Mul', [gw, e.op('Div', [peak, largest])]);
    const half = named(graph, e.op('Cast', [scaled], { to: DataType.FLOAT16 }), name, DataType.FLOAT16, staticShapeOf(w));
    const scale = named(graph, e.op('Div', [largest, peak]), scaleName, DataType.FLOAT, []);
    out.set(w, [half, scale]);
  }
  return out;
}

/** `v` as the graph output `name` (an Identity node, so the name is exact). */
function named(graph: Graph, v: Value, name: string, elemType: number, shape: number[]): Value {
  const out = graph.addNode({ opType: 'Identity', name: `/grad_outputs/${name}`, inputs: [v], outputs: [name] }).outputs[0];
  out.type = { elemType, shape };
  return out;
}

/** grads.onnx: outputs the loss and `<param>.grad` for every trained parameter (LoRA, then base weights), in parameter order. */
export const exposeGradientsPass: Pass<ArtifactState> = {
  name: 'expose-gradients',
  requires: ['loss', 'loraParams', 'baseParams', 'gradients'],
  run(model, state) {
    const params = trainableValues(model, state);
    if (state.training.optimizer.gradients === 'fp16') {
      const outputs = addFloat16GradientOutputs(model, state.gradients!);
      model.graph.outputs = [state.loss!, ...params.flatMap((p) => outputs.get(p)!)];
      return { changed: true, summary: `${params.length} float16 gradient outputs, each with its float32 scale` };
    }
    const outputs = addGradientOutputs(model.graph, state.gradients!);
    model.graph.outputs = [state.loss!, ...params.map((p) => outputs.get(p)!)];
    return { changed: true, summary: `${params.length} gradient outputs` };
  },
};
