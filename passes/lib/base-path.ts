/** How later passes (LoRA insertion, bake) tell infer.onnx's path 1 (passes/structure/add-base-path.ts) from path 2. */
import { Node } from '../../compiler/ir';

/** Node-name prefix of path 1's copies: how later passes (LoRA insertion, bake) tell the paths apart. */
export const BASE_PATH_PREFIX = '/base';

export function isBasePath(n: Node): boolean {
  return n.name.startsWith(`${BASE_PATH_PREFIX}/`);
}
