/**
 * Recomputes cheap forward values in the backward instead of keeping them from forward to
 * backward (activation rematerialization), for the training graphs.
 *
 * After differentiation, every forward value a backward node reads stays alive from its forward
 * producer until that backward read: the saved activations. Many of them are cheap functions of
 * tensors that are saved anyway. On SD's blocks:
 *
 *   GEGLU (ff.net.0)  x/√2, 1 + erf(x/√2) and x·(1 + erf(x/√2))·0.5 are saved next to the two
 *                     halves x and a they come from (three of five saved tensors)
 *   attention         softmax(q·kᵀ·s) is saved next to q and kᵀ (the largest tensors at 64x64);
 *                     recomputed once for each gradient rule that reads it
 *   SiLU              sigmoid(x) is saved next to x
 *   GroupNorm + SiLU  the normalized input of a resnet's SiLU (GroupNorm as the exporters write it:
 *                     Reshape, InstanceNormalization, Reshape, Mul, Add) is saved next to the
 *                     GroupNorm's input, which its own backward reads: at 64x64 latents ~240 MiB
 *   LoRA inputs       LayerNorm(x) (read by the LoRA gradients) is saved next to x (read by its backward)
 *   GEGLU halves      x and a, the two halves of ff.net.0.proj(LayerNorm(h)), are 8x wider than h
 *                     (the residual stream, saved anyway): recomputing the projection costs one
 *                     matmul per transformer block and frees the largest saved tensors after softmax
 *   residual sums     h + to_out(attention) (+ the LoRA branch), the input of the next LayerNorm,
 *                     is saved next to h and the attention output, both kept for other gradients:
 *                     recomputing to_out costs one matmul of the stream's width per sum (at 64x64
 *                     latents −57 MiB of live tensors at the 39.2% peak)
 *
 * For each such value the pass clones its producer chain (at most MAX_CHAIN nodes, ops in CHEAP
 * and the products above; a residual sum's at most MAX_RESIDUAL_CHAIN) into the backward, rooted
 * only at values the backward keeps anyway (saved values it does not recompute, weights, graph
 * inputs, constants, or other recomputed values), and points the backward's reads at the clone.
 * The forward value then dies at its last forward read. A clone runs the same kernel on the same
 * inputs, so every value, the loss and every gradient are bit for bit what they were: only the
 * lifetimes change (and a few recomputations per step).
 *
 * The clones are identical to their originals, so a runtime's common-subexpression elimination
 * would merge them back: training sessions disable onnxruntime's CommonSubexpressionElimination
 * (runtime/train/step-graph.ts trainingSession).
 */
import { isWeightView } from '../compiler/flops';
import { Graph, Node, Value } from '../compiler/ir';
import { Pass } from '../compiler/pass';
import { staticBytes, staticShape } from '../compiler/shape-inference';
import { ArtifactState } from './lib/artifact-state';

/** Elementwise ops, Softmax, the normalizations and layout ops: O(n) to recompute. */
const CHEAP = new Set([
  'Add',
  'Sub',
  'Mul',
  'Div',
  'Neg',
  'Sigmoid',
  'Erf',
  'Tanh',
  'Exp',
  'Sqrt',
  'Reciprocal',
  'Relu',
  'Softmax',
  'LayerNormalization',
  'InstanceNormalization',
  'Transpose',
  'Reshape',
  'Slice',
  'Split',
]);
/**
 * Nodes cloned to recompute one value at most (softmax(q·kᵀ·s) from q and k: Softmax, Mul, MatMul,
 * Transpose; a GEGLU half: LayerNormalization, MatMul, Add, Slice, and in blocks of token rows
 * (chunk-feed-forward) the Split of the rows before the MatMul).
 */
export const MAX_CHAIN = 5;
/**
 * A product with a weight is recomputed only when its output has at least this many times the
 * elements of its input: then keeping its input instead saves that factor in memory for one matmul.
 */
export const EXPANSION = 4;
/**
 * Nodes cloned to recompute a residual sum h + W·t (+ bias, + the LoRA branch B·A·t) at most: the
 * transformer blocks' h + attn(…) sums, the LayerNorms' inputs, from the block input h and the
 * attention output t, both kept anyway (the LayerNorm's and the LoRA gradients' read). One matmul
 * (and the branch) per sum instead of keeping it: at 64x64 latents 5 MiB per level-0 sum.
 */
export const MAX_RESIDUAL_CHAIN = 10;

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

/** A product with a weight: recomputed in a residual sum's chain only (MAX_RESIDUAL_CHAIN). */
const isProjection = (n: Node) => n.opType === 'MatMul' && !!n.inputs[0] && isWeightView(n.inputs[1]);

/** h + f(…) with h and the sum of one shape (a residual stream), not a bias or a broadcast. */
function residualSum(v: Value): boolean {
  const p = v.producer;
  if (p?.opType !== 'Add' || p.inputs.some((x) => !x || isWeightView(x) || !x.producer)) return false;
  const shape = staticShape(v)?.join('x');
  return shape !== undefined && p.inputs.every((x) => staticShape(x!)?.join('x') === shape);
}

function recomputable(n: Node, projections: boolean): boolean {
  if (n.domain !== '' || (n.outputs.length !== 1 && n.opType !== 'Split')) return false;
  if (CHEAP.has(n.opType)) return true;
  if (expandingProjection(n) || (projections && isProjection(n))) return true;
  // Activation × activation products (attention scores): one batched matmul, no weight read.
  return n.opType === 'MatMul' && n.inputs.every((v) => !!v && !isWeightView(v) && !!v.producer && v.producer.opType !== 'Constant');
}

export interface RematerializeResult {
  /** Forward values the backward now recomputes. */
  recomputed: Value[];
  nodesAdded: number;
  /** Bytes of float tensors no longer kept from forward to backward (static shapes). */
  bytesFreed: number;
  /** Nodes whose position changed when the backward was ordered (scheduleBackward). */
  moved: number;
}

function forwardNodes(loss: Value): Set<Node> {
  const nodes = new Set<Node>();
  const stack = [loss];
  const seen = new Set<Value>([loss]);
  while (stack.length) {
    const v = stack.pop()!;
    const p = v.producer;
    if (!p || nodes.has(p)) continue;
    nodes.add(p);
    for (const i of p.inputs) {
      if (i && !seen.has(i)) {
        seen.add(i);
        stack.push(i);
      }
    }
  }
  return nodes;
}

function bytesOf(v: Value): number {
  return staticBytes(v) ?? 0;
}

export function rematerialize(g: Graph, loss: Value, seed: Value): RematerializeResult {
  const forward = forwardNodes(loss);
  const outputs = new Set(g.outputs);
  const isBackward = (n: Node) => !forward.has(n);
  // Saved values: forward values that some backward node reads, in forward order.
  const saved = g.nodes
    .filter((n) => forward.has(n))
    .flatMap((n) => n.outputs)
    .filter((v) => !outputs.has(v) && v.uses.some((u) => isBackward(u.node)));
  const savedSet = new Set(saved);
  const clones = new Map<Value, Value>();
  const kept = new Set<Value>();
  // A weight read through a Transpose (dynamo exports) is a constant too: onnxruntime folds it.
  const free = (v: Value) => isWeightView(v) || !v.producer || v.producer.opType === 'Constant' || g.inputs.includes(v);

  /**
   * The nodes to clone (roots first) to recompute `v` from kept values, or undefined. With
   * `projections`, products with a weight are cloned too, but not one below another: the
   * projection's input comes from kept values through cheap ops.
   */
  function plan(v: Value, top: boolean, budget: { left: number }, order: Node[], projections = false): boolean {
    if (!top && (free(v) || clones.has(v) || kept.has(v))) return true;
    const p = v.producer;
    if (!p || !forward.has(p) || !recomputable(p, projections) || budget.left === 0) return false;
    // Not yet decided (a later saved value): only values decided before can be roots.
    if (!top && savedSet.has(v)) return false;
    budget.left--;
    // Below a projection, no other: its input comes from kept values through cheap ops only.
    for (const i of p.inputs) if (i && !plan(i, false, budget, order, projections && !isProjection(p))) return false;
    if (!order.includes(p)) order.push(p);
    return true;
  }

  let nodesAdded = 0;
  let bytesFreed = 0;
  const recomputed: Value[] = [];
  for (const v of saved) {
    const shared = clones.get(v);
    if (shared) {
      // Cut from a projection recomputed for an earlier value (the other GEGLU half).
      for (const u of v.uses.filter((u) => isBackward(u.node) && u.node !== shared.producer)) g.setInput(u.node, u.index, shared);
      recomputed.push(v);
      bytesFreed += bytesOf(v);
      continue;
    }
    let order: Node[] = [];
    if (!plan(v, true, { left: MAX_CHAIN }, order)) {
      order = [];
      if (!residualSum(v) || !plan(v, true, { left: MAX_RESIDUAL_CHAIN }, order, true)) {
        kept.add(v);
        continue;
      }
    }
    const readers = v.uses.filter((u) => isBackward(u.node));
    /** Clones `order` just before `at` (names tagged `tag`); the clone of every value of the chain. */
    const emit = (at: Node, tag = ''): Map<Value, Value> => {
      const local = new Map<Value, Value>();
      const mapped = (x: Value | null) => (x ? (local.get(x) ?? clones.get(x) ?? x) : null);
      for (const n of order) {
        const c = g.addNode(
          {
            opType: n.opType,
            domain: n.domain,
            name: `${n.name}${tag}/recompute`,
            inputs: n.inputs.map(mapped),
            outputs: n.outputs.length,
            attributes: n.attributes.map((a) => ({ ...a })),
          },
          at,
        );
        n.outputs.forEach((o, k) => {
          const out = c.outputs[k];
          out.type = o.type ? { elemType: o.type.elemType, shape: o.type.shape ? [...o.type.shape] : undefined } : undefined;
          local.set(o, out);
        });
        nodesAdded++;
      }
      return local;
    };
    const firstOf = (us: typeof readers) => g.nodes.find((n) => us.some((u) => u.node === n))!;
    const local = emit(firstOf(readers));
    const clone = local.get(v)!;
    if (v.producer?.opType === 'Softmax') {
      // Attention probabilities are read by two gradient rules (v's gradient Pᵀ·dO and the
      // softmax's own), which onnxruntime's depth-first order reaches on different paths: v's
      // gradient sums over every block of rows first, so one shared clone per block kept all of
      // them alive at once (at 64x64, ~70 blocks of 4 MiB). One clone per rule (the forward node
      // a backward node's name says it differentiates) dies at that rule's last read.
      const rule = (n: Node) => (n.name.includes('/grad/') ? n.name.slice(0, n.name.indexOf('/grad/')) : n.name);
      const groups = new Map<string, typeof readers>();
      for (const u of readers) groups.set(rule(u.node), [...(groups.get(rule(u.node)) ?? []), u]);
      [...groups.values()].forEach((us, i) => {
        const mine = i === 0 ? clone : emit(firstOf(us), `/again${i}`).get(v)!;
        for (const u of us) g.setInput(u.node, u.index, mine);
      });
    } else for (const u of readers) g.setInput(u.node, u.index, clone);
    clones.set(v, clone);
    // A recomputed projection serves every value cut from it (both GEGLU halves): later chains
    // root at its clone instead of repeating the matmul (the final topological sort places it
    // before whichever reader comes first).
    if (order.some(expandingProjection)) for (const [original, c] of local) clones.set(original, c);
    recomputed.push(v);
    bytesFreed += bytesOf(v);
  }
  const moved = scheduleBackward(g, forward, seed);
  return { recomputed, nodesAdded, bytesFreed, moved };
}

/**
 * Orders the graph as forward, then the backward nodes that carry no gradient (they read only
 * forward values: clones, `1 − σ`, transposed activations...), then the gradient-carrying ones (those
 * that depend on the seed). onnxruntime's default execution order is a depth-first walk from the
 * graph's sinks that visits a node's inputs highest node index first; with this order it reaches
 * a node's gradient input before its gradient-free input, so a gradient-free chain runs right
 * before the backward node that reads it instead of as soon as its forward inputs exist (which
 * kept its outputs alive from forward to backward). Returns how many nodes moved.
 */
function scheduleBackward(g: Graph, forward: ReadonlySet<Node>, seed: Value): number {
  const late = new Set<Node>();
  const stack = [seed];
  const seen = new Set<Value>(stack);
  while (stack.length) {
    const v = stack.pop()!;
    for (const u of v.uses) {
      if (forward.has(u.node) || late.has(u.node)) continue;
      late.add(u.node);
      for (const o of u.node.outputs) if (!seen.has(o)) (seen.add(o), stack.push(o));
    }
  }
  const before = g.nodes;
  const order = [
    ...before.filter((n) => forward.has(n)),
    ...before.filter((n) => !forward.has(n) && !late.has(n)),
    ...before.filter((n) => late.has(n)),
  ];
  g.reorderNodes(order);
  return g.nodes.filter((n, i) => n !== before[i]).length;
}

/** grads.onnx and train.onnx: recompute cheap saved activations in the backward. */
export const rematerializePass: Pass<ArtifactState> = {
  name: 'rematerialize',
  requires: ['loss', 'gradients', 'gradientSeed'],
  run(model, state) {
    const r = rematerialize(model.graph, state.loss!, state.gradientSeed!);
    return {
      changed: r.nodesAdded + r.moved > 0,
      summary: `${r.recomputed.length} saved values recomputed (${(r.bytesFreed / 2 ** 20).toFixed(1)} MiB), ${r.nodesAdded} nodes added, ${r.moved} moved`,
    };
  },
};
