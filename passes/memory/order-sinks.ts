/**
 * Near the end of the training graphs (after the gradients and AdamW, before float16-weights and
 * release-dead-buffers): their sinks in backward order, so onnxruntime's
 * depth-first walk runs each LoRA parameter's gradient branch as soon as the backward reaches it.
 */
import { Graph, Node } from '../../compiler/ir';
import { Pass } from '../../compiler/pass';
import { ArtifactState } from '../lib/artifact-state';

/**
 * Orders the graph's sinks (the nodes that produce graph outputs and feed nothing) so the
 * outputs of the last LoRA parameters come first: onnxruntime's depth-first order starts from the
 * sinks in node order, and a parameter's gradient branch (its dA/dB products, its AdamW update)
 * runs when the walk first reaches it. Started from the first parameter's gradient, the walk ran
 * the whole backward first and every later parameter's branch at the end, keeping its inputs (the
 * LoRA inputs of every layer) alive through the backward. Started from the last parameter, each
 * branch runs as soon as the backward reaches its layer. Graph outputs keep their order.
 */
export function orderSinks(g: Graph, params: readonly string[]): number {
  const outputs = new Set(g.outputs);
  const isSink = (n: Node) => n.outputs.every((o) => o.uses.length === 0) && n.outputs.some((o) => outputs.has(o));
  const rank = (n: Node) => {
    const name = n.outputs[0].name;
    const i = params.findIndex((p) => name.startsWith(`${p}.`));
    return i < 0 ? Infinity : i;
  };
  const before = g.nodes;
  const sinks = before.filter(isSink);
  // Sinks of no parameter (the loss) first, then the parameters' from the last to the first.
  const sorted = [...sinks].sort((a, b) => {
    const [ra, rb] = [rank(a), rank(b)];
    if (ra === rb) return 0;
    if (ra === Infinity) return -1;
    if (rb === Infinity) return 1;
    return rb - ra;
  });
  g.reorderNodes([...before.filter((n) => !isSink(n)), ...sorted]);
  return g.nodes.filter((n, i) => n !== before[i]).length;
}

/** grads.onnx and train.onnx, after the gradients: the parameters' output branches in backward order (orderSinks). */
export const orderSinksPass: Pass<ArtifactState> = {
  name: 'order-sinks',
  requires: ['loraParams'],
  run(model, state) {
    const moved = orderSinks(
      model.graph,
      state.loraParams!.map((p) => p.name),
    );
    return { changed: moved > 0, summary: `${moved} nodes moved` };
  },
};
