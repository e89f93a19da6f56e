/**
 * infer.onnx's path 1: the base UNet (no LoRA) up to the hollow activation, conditioned on the
 * class prompt (`base_encoder_hidden_states`, SDXL also `base_text_embeds`). Path 2 is the rest
 * of the artifact's passes (LoRA, then hollow-out wires path 1's activation into it). Path 1 is a copy of
 * the nodes that read the same initializers, so every weight is stored once.
 */
import { copyNodes, nodesFeeding } from '../../compiler/clone';
import { Graph, Value } from '../../compiler/ir';
import { BASE_CONDITIONING, baseInputName } from '../../compiler/manifest';
import { Pass } from '../../compiler/pass';
import { ArtifactState } from '../lib/artifact-state';
import { BASE_PATH_PREFIX } from '../lib/base-path';
import { HollowPoint, findNode, hollowPointOf } from './hollow-out';

/** Copies everything feeding the activation at `point` as path 1; returns path 1's activation. */
export function addBasePath(g: Graph, point: HollowPoint): Value {
  const concat = findNode(g, point.concat);
  const activation = concat.input(0);
  const substitute = new Map<Value, Value>();
  for (const name of BASE_CONDITIONING) {
    const original = g.inputs.find((v) => v.name === name);
    if (original) substitute.set(original, g.addInput(baseInputName(name), original.type ?? { elemType: 1 }));
  }
  const copies = copyNodes(g, nodesFeeding(g, [activation]), BASE_PATH_PREFIX, substitute);
  return copies.get(activation)!;
}

/** With `hollow none` infer.onnx is the UNet with LoRA: there is no path 1. */
export const addBasePathPass: Pass<ArtifactState> = {
  name: 'add-base-path',
  run(model, state) {
    if (!state.cut) return { changed: false };
    const before = model.graph.nodes.length;
    state.baseActivation = addBasePath(model.graph, hollowPointOf(state.cut));
    return { changed: true, summary: `copied ${model.graph.nodes.length - before} nodes as the base path` };
  },
};
