/** The feed-forward's widening product (SD's GEGLU projection), as rematerialize and chunk-feed-forward both recognize it. */
import { isWeightView } from '../../compiler/flops';
import { Node, Value } from '../../compiler/ir';
import { staticShape } from '../../compiler/shape-inference';

/**
 * A product with a weight is recomputed only when its output has at least this many times the
 * elements of its input: then keeping its input instead saves that factor in memory for one matmul.
 */
export const EXPANSION = 4;

function elements(v: Value): number | undefined {
  return staticShape(v)?.reduce((a, b) => a * b, 1);
}

/** x·W with W a weight and an output EXPANSION times larger than x (SD: the GEGLU projection). */
export function expandingProjection(n: Node): boolean {
  const [x, w] = n.inputs;
  if (n.opType !== 'MatMul' || !x || !isWeightView(w)) return false;
  const [inN, outN] = [elements(x), elements(n.outputs[0])];
  return inN !== undefined && outN !== undefined && inN > 0 && outN >= EXPANSION * inN;
}
