/**
 * infer.onnx: path 1 is the base UNet (no LoRA) up to the hollow activation, conditioned on the
 * class prompt (`base_encoder_hidden_states`, SDXL also `base_text_embeds`); path 2 is the
 * hollowed net with LoRA on the usual inputs, fed path 1's activation. Path 1 is a copy of the
 * nodes that read the same initializers, so every weight is stored once.
 */
import { copyNodes, nodesFeeding } from '../compiler/clone';
import { Graph, Node, Value } from '../compiler/ir';
import { HollowPoint, findNode, hollowOut } from './hollow-net';

/** Node-name prefix of path 1's copies: how later passes (bake) tell the two paths apart. */
export const BASE_PATH_PREFIX = '/base';

export function isBasePath(n: Node): boolean {
  return n.name.startsWith(`${BASE_PATH_PREFIX}/`);
}

/** Conditioning inputs that path 1 takes under a `base_` name. */
export const BASE_CONDITIONING = ['encoder_hidden_states', 'text_embeds'] as const;

/**
 * Splits off path 1 for the activation at `point`; returns it. Call before inserting LoRA into
 * path 2, then `hollowOut(g, point, activation)`.
 */
export function addBasePath(g: Graph, point: HollowPoint): Value {
  const concat = findNode(g, point.concat);
  const activation = concat.input(0);
  const substitute = new Map<Value, Value>();
  for (const name of BASE_CONDITIONING) {
    const original = g.inputs.find((v) => v.name === name);
    if (original) substitute.set(original, g.addInput(`base_${name}`, original.type ?? { elemType: 1 }));
  }
  const copies = copyNodes(g, nodesFeeding(g, [activation]), BASE_PATH_PREFIX, substitute);
  return copies.get(activation)!;
}

export { hollowOut };
