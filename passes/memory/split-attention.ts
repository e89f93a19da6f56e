/**
 * Computes each large attention map one head at a time and, within a head, a block of query rows
 * at a time, in the training graphs (before differentiation, so the backward is per block too).
 *
 * Why: softmax(q·kᵀ·s)·v over all heads at once makes [heads, tokens, tokens] tensors: at 32x32
 * latents SD's outer self-attentions have 5 heads of 1024x1024 (20 MiB per map), at 64x64 they are
 * 320 MiB. The backward of one attention holds three such maps (the recomputed probabilities,
 * their gradient and the scores' gradient), and onnxruntime keeps a freed buffer for the next
 * tensor of the same shape, so the three stay allocated through the rest of the backward. Head by
 * head the maps are 1/heads the size; the products, softmax and the gradients are the same
 * computations on the same values (heads never mix), one head's slice at a time.
 *
 * At 64x64 latents one head's map is itself 64 MiB (4096 x 4096 tokens). Softmax normalizes each
 * row on its own, so a block of query rows needs only its rows of q with the whole kᵀ and v: the
 * chain runs per block of rows, each block's map at most CHUNK_BYTES, and the outputs are
 * concatenated. The backward of a block reads its probabilities, which passes/memory/rematerialize.ts
 * recomputes from the block's q rows and kᵀ right before they are read (what FlashAttention's
 * backward does with the row statistics; here the softmax is simply run again, the same kernel on
 * the same values), so at most a few block-sized maps are alive at once, forward or backward.
 *
 * Matched (passes/lib/attention-match.ts): MatMul(q, kᵀ) → optional Mul or Div by a constant →
 * optional Add of baddbmm's zeros (left out) → Softmax over the last axis → optional Cast →
 * MatMul(·, v), each value read once, q, kᵀ, v and the scores of one static rank with equal batch
 * axes, the scores over SPLIT_ABOVE_BYTES. The chain becomes Split of q, kᵀ and v along the heads
 * axis (the last batch axis), a Split of each head's q along its rows, the chain per block, and
 * Concats.
 */
import { GraphBuilder } from '../../compiler/builder';
import { Graph, Model, Node, TensorType, Value } from '../../compiler/ir';
import { OpEmitter } from '../../compiler/op-emitter';
import { Pass, PassSites, passSites } from '../../compiler/pass';
import { staticBytes, staticShape } from '../../compiler/shape-inference';
import { ArtifactState } from '../lib/artifact-state';
import { AttentionCore, matchAttention, removeAttentionCore } from '../lib/attention-match';
import { rowBlocks } from '../lib/row-blocks';

/** Attention maps larger than this are split (SD at 32x32 latents: the 20 MiB outer self-attentions, not the 2.5 MiB ones). */
export const SPLIT_ABOVE_BYTES = 8 * 2 ** 20;
/**
 * The largest map of one block of query rows (one head): SD at 32x32 latents keeps whole heads
 * (1024 x 1024 = 4 MiB), at 64x64 a head of 4096 x 4096 runs as 16 blocks of 256 rows.
 */
export const CHUNK_BYTES = 4 * 2 ** 20;

interface AttentionChain extends AttentionCore {
  /** The axis the heads run along (the last batch axis) and how many there are. */
  axis: number;
  heads: number;
  /** Query rows of each block, in order (one block: the whole head). */
  rows: number[];
}

/** A chain to split; or why not: `small` when it is one, but its map is not worth splitting. */
type ChainMatch = { chain: AttentionChain } | { reason: string; small?: boolean };

function matchChain(graph: Graph, softmax: Node, aboveBytes: number, chunkBytes: number): ChainMatch {
  const m = matchAttention(graph, softmax);
  if (!m.match) return { reason: m.reason };
  const core = m.match;
  const scoresValue = core.scores.outputs[0];
  const [q, kT] = core.scores.inputs;
  const v = core.output.inputs[1];
  const shapes = [q, kT, v, scoresValue].map((x) => (x ? staticShape(x) : undefined));
  if (shapes.some((s) => !s)) return { reason: 'q, kᵀ, v or the scores have no static shape' };
  const [qs, ks, vs, ss] = shapes as number[][];
  const rank = ss.length;
  if (rank < 3 || [qs, ks, vs].some((s) => s.length !== rank))
    return { reason: 'q, kᵀ, v and the scores are not of one rank of at least 3' };
  const axis = rank - 3;
  for (let i = 0; i <= axis; i++)
    if (qs[i] !== ss[i] || ks[i] !== ss[i] || vs[i] !== ss[i]) return { reason: 'q, kᵀ and v broadcast along the heads' };
  const bytes = staticBytes(scoresValue)!;
  const heads = ss[axis];
  const [queries, keys] = ss.slice(rank - 2);
  const rowBytes = bytes / heads / queries;
  const rows = rowBlocks(queries, chunkBytes / rowBytes);
  if ((heads < 2 && rows.length < 2) || bytes <= aboveBytes || keys < 1) return { reason: 'small', small: true };
  return { chain: { ...core, axis, heads, rows } };
}

function typeWith(t: TensorType, axis: number, extent: number): TensorType {
  const shape = [...(t.shape as number[])];
  shape[axis] = extent;
  return { elemType: t.elemType, shape };
}

/** Rewrites one chain; returns the scores MatMul of each block. */
function splitHeads(graph: Graph, opset: number, c: AttentionChain): Node[] {
  const scores: Node[] = [];
  const b = new GraphBuilder(graph, `${c.scores.name}/heads`);
  const before = c.output;
  const e = new OpEmitter(b, opset, before);
  const split = (x: Value, axis: number, sizes: number[]): Value[] => {
    if (sizes.length === 1) return [x];
    const parts =
      opset >= 13
        ? b.node('Split', [x, e.int64s(sizes)], { axis }, { outputs: sizes.length, before })
        : b.node('Split', [x], { axis, split: sizes }, { outputs: sizes.length, before });
    parts.forEach((part, i) => (part.type = typeWith(x.type!, axis, sizes[i])));
    return parts;
  };
  const rowAxis = c.axis + 1;
  const ones = new Array<number>(c.heads).fill(1);
  const [q, kT] = c.scores.inputs as Value[];
  const v = c.output.inputs[1]!;
  const [qs, ks, vs] = [split(q, c.axis, ones), split(kT, c.axis, ones), split(v, c.axis, ones)];
  const perBlock = (node: Node, inputs: Value[], head: number, block: number): Value => {
    const suffix = c.rows.length > 1 ? `_rows${block}` : '';
    const out = b.op(node.opType, inputs, undefined, { name: `${node.opType}_head${head}${suffix}`, before });
    out.producer!.attributes = node.attributes.map((a) => ({ ...a }));
    out.type = typeWith(typeWith(node.outputs[0].type!, c.axis, 1), rowAxis, c.rows[block]);
    return out;
  };
  const join = (parts: Value[], axis: number, type: TensorType): Value => {
    if (parts.length === 1) return parts[0];
    const joined = b.op('Concat', parts, { axis }, { before });
    joined.type = type;
    return joined;
  };
  const outputs = qs.map((qh, h) => {
    const blocks = split(qh, rowAxis, c.rows).map((qb, r) => {
      let s = perBlock(c.scores, [qb, ks[h]], h, r);
      scores.push(s.producer!);
      if (c.scale)
        s = perBlock(
          c.scale,
          c.scale.inputs.map((x) => (x === c.scores.outputs[0] ? s : x!)),
          h,
          r,
        );
      const probs = perBlock(c.softmax, [s], h, r);
      return perBlock(c.output, [c.cast ? perBlock(c.cast, [probs], h, r) : probs, vs[h]], h, r);
    });
    return join(blocks, rowAxis, typeWith(c.output.outputs[0].type!, c.axis, 1));
  });
  const joined = join(outputs, c.axis, c.output.outputs[0].type!);
  graph.replaceAllUsesWith(c.output.outputs[0], joined);
  removeAttentionCore(graph, c);
  return scores;
}

export function splitAttention(
  model: Model,
  aboveBytes = SPLIT_ABOVE_BYTES,
  chunkBytes = CHUNK_BYTES,
): { split: number; heads: number; blocks: number; scores: Node[]; sites: PassSites } {
  const g = model.graph;
  const found = g.nodes.filter((n) => n.opType === 'Softmax' && n.domain === '').map((n) => matchChain(g, n, aboveBytes, chunkBytes));
  const chains = found.flatMap((m) => ('chain' in m ? [m.chain] : []));
  const unmatched = found.flatMap((m) => ('reason' in m && !m.small ? [m.reason] : []));
  const opset = model.opsetVersion('');
  const scores = chains.flatMap((c) => splitHeads(g, opset, c));
  return {
    scores,
    split: chains.length,
    heads: chains.reduce((a, c) => a + c.heads, 0),
    blocks: chains.reduce((a, c) => a + c.heads * c.rows.length, 0),
    sites: passSites('Softmax sites', found.length, unmatched, chains.length),
  };
}

export const splitAttentionPass: Pass<ArtifactState> = {
  name: 'split-attention',
  run(model, state) {
    const r = splitAttention(model, state.splitAttentionAboveBytes, state.attentionChunkBytes);
    state.attentionScores = r.scores;
    return {
      changed: r.split > 0,
      summary: `${r.split} attention maps computed per head (${r.heads} heads) in ${r.blocks} blocks of query rows (${r.sites.matched} of ${r.sites.found} Softmax sites matched)`,
      sites: r.sites,
    };
  },
};
