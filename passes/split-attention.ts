/**
 * Computes each large attention map one head at a time, in the training graphs (before
 * differentiation, so the backward is per head too).
 *
 * Why: softmax(q·kᵀ·s)·v over all heads at once makes [heads, tokens, tokens] tensors: at 32x32
 * latents SD's outer self-attentions have 5 heads of 1024x1024 (20 MiB per map), at 64x64 they are
 * 320 MiB. The backward of one attention holds three such maps (the recomputed probabilities,
 * their gradient and the scores' gradient), and onnxruntime keeps a freed buffer for the next
 * tensor of the same shape, so the three stay allocated through the rest of the backward. Head by
 * head the maps are 1/heads the size; the products, softmax and the gradients are the same
 * computations on the same values (heads never mix), one head's slice at a time.
 *
 * Matched: MatMul(q, kᵀ) → optional Mul or Div by a constant → Softmax over the last axis →
 * MatMul(·, v), each value read once, q, kᵀ, v and the scores of one static rank with equal batch
 * axes, the scores over SPLIT_ABOVE_BYTES. The chain becomes Split of q, kᵀ and v along the heads
 * axis (the last batch axis), the chain per head, and a Concat.
 */
import { GraphBuilder } from '../compiler/builder';
import { elementSize } from '../compiler/dtype';
import { Graph, Model, Node, TensorType, Value } from '../compiler/ir';
import { OpEmitter } from '../compiler/op-emitter';
import { Pass } from '../compiler/pass';
import { staticShape } from '../compiler/shape-inference';
import { ArtifactState } from './lib/artifact-state';

/** Attention maps larger than this are split (SD at 32x32 latents: the 20 MiB outer self-attentions, not the 2.5 MiB ones). */
export const SPLIT_ABOVE_BYTES = 8 * 2 ** 20;

interface AttentionChain {
  scores: Node;
  scale: Node | undefined;
  softmax: Node;
  output: Node;
  /** The axis the heads run along (the last batch axis) and how many there are. */
  axis: number;
  heads: number;
}

function onlyReader(v: Value, graph: Graph): Node | undefined {
  return v.uses.length === 1 && !graph.outputs.includes(v) ? v.uses[0].node : undefined;
}

function isScalarConstant(v: Value | null): boolean {
  if (!v) return false;
  const shape = staticShape(v);
  const constant = !!v.initializer || v.producer?.opType === 'Constant';
  return constant && !!shape && shape.reduce((a, b) => a * b, 1) === 1;
}

function matchChain(graph: Graph, softmax: Node, aboveBytes: number): AttentionChain | undefined {
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
  const [q, kT] = scores.inputs;
  const v = output.inputs[1];
  const shapes = [q, kT, v, scoresValue].map((x) => (x ? staticShape(x) : undefined));
  if (shapes.some((s) => !s)) return undefined;
  const [qs, ks, vs, ss] = shapes as number[][];
  const rank = ss.length;
  if (rank < 3 || [qs, ks, vs].some((s) => s.length !== rank)) return undefined;
  const axis = rank - 3;
  for (let i = 0; i <= axis; i++) if (qs[i] !== ss[i] || ks[i] !== ss[i] || vs[i] !== ss[i]) return undefined;
  const softmaxAxis = softmax.attrInt('axis', -1);
  if (softmaxAxis !== -1 && softmaxAxis !== rank - 1) return undefined;
  const bytes = ss.reduce((a, b) => a * b, 1) * (elementSize(scoresValue.type!.elemType) ?? 4);
  const heads = ss[axis];
  if (heads < 2 || bytes <= aboveBytes) return undefined;
  return { scores, scale, softmax, output, axis, heads };
}

function typeWith(t: TensorType, axis: number, extent: number): TensorType {
  const shape = [...(t.shape as number[])];
  shape[axis] = extent;
  return { elemType: t.elemType, shape };
}

function splitHeads(graph: Graph, opset: number, c: AttentionChain): void {
  const b = new GraphBuilder(graph, `${c.scores.name}/heads`);
  const before = c.output;
  const e = new OpEmitter(b, opset, before);
  const ones = new Array<number>(c.heads).fill(1);
  const split = (x: Value): Value[] => {
    const parts =
      opset >= 13
        ? b.node('Split', [x, e.int64s(ones)], { axis: c.axis }, { outputs: c.heads, before })
        : b.node('Split', [x], { axis: c.axis, split: ones }, { outputs: c.heads, before });
    for (const part of parts) part.type = typeWith(x.type!, c.axis, 1);
    return parts;
  };
  const [q, kT] = c.scores.inputs as Value[];
  const v = c.output.inputs[1]!;
  const [qs, ks, vs] = [split(q), split(kT), split(v)];
  const perHead = (node: Node, inputs: Value[], head: number): Value => {
    const out = b.op(node.opType, inputs, undefined, { name: `${node.opType}_head${head}`, before });
    out.producer!.attributes = node.attributes.map((a) => ({ ...a }));
    out.type = typeWith(node.outputs[0].type!, c.axis, 1);
    return out;
  };
  const outputs = qs.map((_, h) => {
    let s = perHead(c.scores, [qs[h], ks[h]], h);
    if (c.scale)
      s = perHead(
        c.scale,
        c.scale.inputs.map((x) => (x === c.scores.outputs[0] ? s : x!)),
        h,
      );
    return perHead(c.output, [perHead(c.softmax, [s], h), vs[h]], h);
  });
  const joined = b.op('Concat', outputs, { axis: c.axis }, { before });
  joined.type = c.output.outputs[0].type;
  graph.replaceAllUsesWith(c.output.outputs[0], joined);
  for (const n of [c.output, c.softmax, ...(c.scale ? [c.scale] : []), c.scores]) graph.removeNode(n);
}

export function splitAttention(model: Model, aboveBytes = SPLIT_ABOVE_BYTES): { split: number; heads: number } {
  const g = model.graph;
  const chains = g.nodes
    .filter((n) => n.opType === 'Softmax' && n.domain === '')
    .map((n) => matchChain(g, n, aboveBytes))
    .filter((c): c is AttentionChain => !!c);
  const opset = model.opsetVersion('');
  for (const c of chains) splitHeads(g, opset, c);
  return { split: chains.length, heads: chains.reduce((a, c) => a + c.heads, 0) };
}

export const splitAttentionPass: Pass<ArtifactState> = {
  name: 'split-attention',
  run(model, state) {
    const r = splitAttention(model, state.splitAttentionAboveBytes);
    return { changed: r.split > 0, summary: `${r.split} attention maps computed per head (${r.heads} heads)` };
  },
};
