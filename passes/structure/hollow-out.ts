/**
 * The hollowed net: the UNet minus its hollowed blocks. The first kept up layer's skip Concat
 * reads its hidden state from a new graph input, `hollow_activation` (or, in infer.onnx, from
 * the base path's copy), instead of the hollowed middle; everything only the middle needed then
 * falls away as dead code.
 */
import { DataType } from '../../compiler/dtype';
import { Dim, Graph, Node, Value } from '../../compiler/ir';
import { HOLLOW_ACTIVATION } from '../../compiler/manifest';
import { Pass } from '../../compiler/pass';
import { CutInfo } from '../lib/analyze-unet';
import { ArtifactState } from '../lib/artifact-state';

export interface HollowPoint {
  /** Name of the first kept up layer's skip Concat node. */
  concat: string;
  /** Shape of the hollow activation (dims or symbolic names). */
  shape: Dim[];
}

export function hollowPointOf(cut: CutInfo): HollowPoint {
  return { concat: cut.activation.concat, shape: cut.activation.shape };
}

export function findNode(g: Graph, name: string): Node {
  const n = g.nodes.find((x) => x.name === name);
  if (!n) throw new Error(`graph has no node named ${name}`);
  return n;
}

/** Rewires the hollow point to `replacement` (a new `hollow_activation` input when omitted). */
export function hollowOut(g: Graph, point: HollowPoint, replacement?: Value): Value {
  const concat = findNode(g, point.concat);
  const activation = replacement ?? g.addInput(HOLLOW_ACTIVATION, { elemType: DataType.FLOAT, shape: point.shape });
  g.setInput(concat, 0, activation);
  g.eliminateDeadNodes();
  dropUnreadInputs(g, (v) => v !== activation);
  return activation;
}

/** Removes graph inputs nothing reads any more (e.g. LoRA tensors of hollowed layers). */
export function dropUnreadInputs(g: Graph, mayDrop: (v: Value) => boolean): string[] {
  const dropped = g.inputs.filter((v) => v.uses.length === 0 && !g.outputs.includes(v) && mayDrop(v));
  for (const v of dropped) g.deleteValue(v);
  return dropped.map((v) => v.name);
}

/** With `hollow none` there is nothing to hollow and the pass changes nothing. */
export const hollowOutPass: Pass<ArtifactState> = {
  name: 'hollow-out',
  run(model, state) {
    if (!state.cut) return { changed: false };
    const before = model.graph.nodes.length;
    hollowOut(model.graph, hollowPointOf(state.cut), state.baseActivation);
    // The base path's nodes were appended after the nodes that now read them.
    if (state.baseActivation) model.graph.topologicalSort();
    return { changed: true, summary: `removed ${before - model.graph.nodes.length} nodes` };
  },
};
