/**
 * Makes the backward finish each block of attention rows before the next, in the training graphs
 * (after differentiation, before rematerialize).
 *
 * Why: the gradient of a block's scores, dS (one block of the map: [rows, keys]), is read twice by
 * the scores' MatMul rule: dq = dS·k (a block of q's gradient, joined to the others by a Concat)
 * and dkᵀ = qᵀ·dS (one term of kᵀ's gradient, summed over the blocks by a chain of Adds).
 * onnxruntime's depth-first execution order reaches the Concat and the Adds on different paths,
 * so it computed every block's dS for one of them and kept them all for the other: the whole map's
 * gradient alive at once (at 64x64 latents, 80 blocks of 4 MiB per attention), however small the
 * blocks. Joined here, the dq block and the running sum of kᵀ's gradient up to this block come out
 * of one Split of one Concat, so reading either computes both, and the chain of Adds walks the
 * blocks one after another: one block's dS alive at a time.
 *
 * The values are unchanged (a Concat and a Split copy them, bit for bit); the cost is that copy,
 * small next to the block's products (dq block + kᵀ's gradient: (rows + keys) x head dim values).
 */
import { GraphBuilder } from '../../compiler/builder';
import { Graph, Model, Node, Value } from '../../compiler/ir';
import { OpEmitter } from '../../compiler/op-emitter';
import { Pass, PassSites, passSites } from '../../compiler/pass';
import { staticShape } from '../../compiler/shape-inference';
import { ArtifactState } from '../lib/artifact-state';

function sameShape(v: Value, shape: number[] | undefined): boolean {
  const s = staticShape(v);
  return !!s && !!shape && s.length === shape.length && s.every((d, i) => d === shape[i]);
}

/** The rule's two products of a scores MatMul(q, kᵀ): q's gradient and kᵀ's, told apart by shape. */
function gradientsOf(g: Graph, scores: Node): { dq: Value; dk: Value } | undefined {
  const prefix = `${scores.name}/grad/`;
  const [q, kT] = scores.inputs.map((v) => (v ? staticShape(v) : undefined));
  const products = g.nodes.filter((n) => n.opType === 'MatMul' && n.name.startsWith(prefix)).map((n) => n.outputs[0]);
  const dq = products.find((v) => sameShape(v, q));
  const dk = products.find((v) => sameShape(v, kT));
  return dq && dk && dq !== dk ? { dq, dk } : undefined;
}

/** Replaces every read of `v` except by `keep` with `by`. */
function redirect(g: Graph, v: Value, by: Value, keep: Node): void {
  for (const u of [...v.uses]) if (u.node !== keep) g.setInput(u.node, u.index, by);
}

/** The joins made, and the sites: the scores MatMul of every block split-attention made. */
export function pairAttentionGradients(model: Model, scores: readonly Node[]): { joins: number; sites: PassSites } {
  const g = model.graph;
  const opset = model.opsetVersion('');
  // Blocks whose kᵀ-gradient term enters the same Add (the chain's first Add takes two terms) share one join.
  const joins = new Map<Value, Value[]>();
  const unmatched: string[] = [];
  for (const s of scores) {
    const d = gradientsOf(g, s);
    if (!d) {
      unmatched.push('no q and kᵀ gradient products of its scores MatMul (not differentiated, or shapes unknown)');
      continue;
    }
    const reader = d.dk.uses.length === 1 ? d.dk.uses[0].node : undefined;
    const partner = reader?.opType === 'Add' && !g.outputs.includes(reader.outputs[0]) ? reader.outputs[0] : d.dk;
    if (!staticShape(partner) || g.outputs.includes(partner)) {
      unmatched.push("kᵀ's gradient term has no static shape or is a graph output");
      continue;
    }
    joins.set(partner, [...(joins.get(partner) ?? []), d.dq]);
  }
  const paired = scores.length - unmatched.length;
  const sites = passSites('attention blocks', scores.length, unmatched, paired);
  for (const [partner, dqs] of joins) {
    const parts = [...dqs, partner];
    // Just before the first read of any of them (a topological sort afterwards moves what must).
    const readers = new Set(parts.flatMap((v) => v.uses.map((u) => u.node)));
    const before = g.nodes.find((n) => readers.has(n));
    const b = new GraphBuilder(g, `${partner.producer!.name}/paired`);
    const e = new OpEmitter(b, opset, before);
    const shapes = parts.map((v) => staticShape(v)!);
    const sizes = shapes.map((s) => s.reduce((a, x) => a * x, 1));
    const flat = parts.map((v) => e.op('Reshape', [v, e.int64s([-1])]));
    const joined = e.op('Concat', flat, { axis: 0 });
    const split =
      opset >= 13
        ? b.node('Split', [joined, e.int64s(sizes)], { axis: 0 }, { outputs: parts.length, before })
        : b.node('Split', [joined], { axis: 0, split: sizes }, { outputs: parts.length, before });
    parts.forEach((v, i) => {
      split[i].type = { elemType: v.type!.elemType, shape: [sizes[i]] };
      const back = e.op('Reshape', [split[i], e.int64s(shapes[i])]);
      redirect(g, v, back, flat[i].producer!);
    });
  }
  if (joins.size) g.topologicalSort();
  return { joins: joins.size, sites };
}

export const pairAttentionGradientsPass: Pass<ArtifactState> = {
  name: 'pair-attention-gradients',
  requires: ['gradients'],
  run(model, state) {
    const r = pairAttentionGradients(model, state.attentionScores ?? []);
    return {
      changed: r.joins > 0,
      summary: `${r.joins} joins of a block's q gradient with kᵀ's running gradient (${r.sites.matched} of ${r.sites.found} attention blocks)`,
      sites: r.sites,
    };
  },
};
