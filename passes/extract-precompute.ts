/**
 * precompute.onnx: the base UNet (no LoRA) from its inputs up to the hollow activation, and
 * nothing else. Its single output is named `hollow_activation`.
 */
import { Dim, Graph } from '../compiler/ir';
import { DataType } from '../compiler/dtype';

export const HOLLOW_ACTIVATION = 'hollow_activation';

export function extractPrecompute(g: Graph, activation: string, shape: Dim[]): void {
  const source = g.value(activation);
  const node = g.addNode({ opType: 'Identity', name: '/hollow_activation/Identity', inputs: [source], outputs: [HOLLOW_ACTIVATION] });
  node.outputs[0].type = { elemType: source.type?.elemType ?? DataType.FLOAT, shape };
  g.outputs = [node.outputs[0]];
  g.eliminateDeadNodes();
}
