/**
 * grads.onnx's outputs: the loss and the gradient of every trained parameter (LoRA, then the base weights that train), `<param>.grad`, for
 * runtimes that apply the optimizer themselves.
 */
import { HollowcError } from '../../compiler/errors';
import { Graph, Node, Value } from '../../compiler/ir';
import { gradientName } from '../../compiler/manifest';
import { staticShapeOf } from '../../compiler/op-emitter';
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

/** grads.onnx: outputs the loss and `<param>.grad` for every trained parameter (LoRA, then base weights), in parameter order. */
export const exposeGradientsPass: Pass<ArtifactState> = {
  name: 'expose-gradients',
  requires: ['loss', 'loraParams', 'baseParams', 'gradients'],
  run(model, state) {
    const params = trainableValues(model, state);
    const outputs = addGradientOutputs(model.graph, state.gradients!);
    model.graph.outputs = [state.loss!, ...params.map((p) => outputs.get(p)!)];
    return { changed: true, summary: `${params.length} gradient outputs` };
  },
};
