/**
 * The attention core softmax(q·kᵀ·s)·v found by structure alone: every pass that works on
 * attention (split-attention, chunk-attention, pair-attention-gradients) matches through here, so
 * an export form one of them knows, all of them know.
 */
import { Graph, Node, Value } from '../../compiler/ir';
import { constantOfValue, staticShape } from '../../compiler/shape-inference';

/** softmax(q·kᵀ·s)·v as four nodes (the scale optional), each intermediate read once. */
export interface AttentionCore {
  scores: Node;
  scale: Node | undefined;
  softmax: Node;
  output: Node;
}

function onlyReader(v: Value, graph: Graph): Node | undefined {
  return v.uses.length === 1 && !graph.outputs.includes(v) ? v.uses[0].node : undefined;
}

/** One value, from a Constant node or an initializer (its shape from the type, else from the value: exports leave Constants untyped). */
function isScalarConstant(v: Value | null): boolean {
  if (!v || !(v.initializer || v.producer?.opType === 'Constant')) return false;
  const shape = staticShape(v) ?? v.initializer?.dims ?? constantOfValue(v)?.dims;
  return !!shape && shape.reduce((a, b) => a * b, 1) === 1;
}

/**
 * The attention chain whose Softmax is `softmax`, by structure alone: MatMul(q, kᵀ) → optional Mul
 * or Div by a scalar constant → Softmax over the last axis → MatMul(·, v), each value read once.
 */
export function matchAttention(graph: Graph, softmax: Node): AttentionCore | undefined {
  const probs = softmax.outputs[0];
  const output = onlyReader(probs, graph);
  if (!output || output.opType !== 'MatMul' || output.inputs[0] !== probs || graph.outputs.includes(output.outputs[0])) return undefined;
  let scale: Node | undefined;
  let scoresValue = softmax.inputs[0];
  const p = scoresValue?.producer;
  if (p && (p.opType === 'Mul' || p.opType === 'Div') && p.domain === '') {
    const operand = p.inputs.findIndex((v) => !isScalarConstant(v));
    if (operand < 0 || !isScalarConstant(p.inputs[1 - operand]) || (p.opType === 'Div' && operand !== 0)) return undefined;
    if (onlyReader(p.outputs[0], graph) !== softmax) return undefined;
    scale = p;
    scoresValue = p.inputs[operand];
  }
  const scores = scoresValue?.producer;
  if (
    !scoresValue ||
    !scores ||
    scores.opType !== 'MatMul' ||
    scores.domain !== '' ||
    onlyReader(scoresValue, graph) !== (scale ?? softmax)
  )
    return undefined;
  // The last axis: -1, or a non-negative axis that is the last of a known rank.
  const softmaxAxis = softmax.attrInt('axis', -1);
  const rank = scoresValue.type?.shape?.length;
  if (softmaxAxis !== -1 && softmaxAxis !== (rank ?? 0) - 1) return undefined;
  return { scores, scale, softmax, output };
}
