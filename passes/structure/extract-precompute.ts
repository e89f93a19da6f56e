/**
 * precompute.onnx: the base UNet (no LoRA) from its inputs up to the hollow activation, and
 * nothing else. Its single output is named `hollow_activation`.
 */
import { DataType } from '../../compiler/dtype';
import { HollowcError } from '../../compiler/errors';
import { Dim, Graph } from '../../compiler/ir';
import { HOLLOW_ACTIVATION } from '../../compiler/manifest';
import { Pass } from '../../compiler/pass';
import { ArtifactState } from '../lib/artifact-state';

export function extractPrecompute(g: Graph, activation: string, shape: Dim[]): void {
  const source = g.value(activation);
  const node = g.addNode({ opType: 'Identity', name: `/${HOLLOW_ACTIVATION}/Identity`, inputs: [source], outputs: [HOLLOW_ACTIVATION] });
  node.outputs[0].type = { elemType: source.type?.elemType ?? DataType.FLOAT, shape };
  g.outputs = [node.outputs[0]];
  g.eliminateDeadNodes();
}

export const extractPrecomputePass: Pass<ArtifactState> = {
  name: 'extract-precompute',
  run(model, state) {
    if (!state.cut)
      throw new HollowcError('precompute.onnx needs a hollow: with `hollow none` there is no hollow activation to precompute');
    const before = model.graph.nodes.length;
    extractPrecompute(model.graph, state.cut.activation.tensor, state.cut.activation.shape);
    return { changed: true, summary: `kept ${model.graph.nodes.length} of ${before} nodes` };
  },
};
