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
 *   written-out       below opset 17 torch writes LayerNorm out (ReduceMean, Sub, Pow, ReduceMean,
 *   LayerNorms        Add, Sqrt, Div, Mul, Add), whose backward reads x − mean(x) where
 *                     LayerNormalization's reads x: the backward recomputes x − mean(x) from x
 *                     (one ReduceMean and one Sub), so that x is what it keeps, recomputed by the
 *                     rules above (a residual sum) as LayerNormalization's input is; and in a
 *                     recomputed chain such a LayerNorm costs what one LayerNormalization does, so
 *                     that the GEGLU halves after it are recomputed as they are after one (torch
 *                     1.13's SD 2.1 export, 39.2%, 64x64: live set at the peak 833 -> 495 MiB,
 *                     the builder form's 490)
 *
 * For each such value the pass clones its producer chain (at most MAX_CHAIN nodes, ops in CHEAP
 * and the products above; a residual sum's at most MAX_RESIDUAL_CHAIN) into the backward, rooted
 * only at values the backward keeps anyway (saved values it does not recompute, weights, graph
 * inputs, constants, or other recomputed values), and points the backward's reads at the clone.
 * The forward value then dies at its last forward read. A clone runs the same kernel on the same
 * inputs, so every value, the loss and every gradient are bit for bit what they were: only the
 * lifetimes change (and a few recomputations per step).
 *
 * `recompute blocks` (the spec's line; gradient checkpointing per transformer block) goes further:
 * every saved value inside a transformer block is recomputed from the block's input, products with
 * weights and attention included, so a block keeps only its input and output from forward to
 * backward. The clones of one block share their values, so the block's forward runs once more,
 * at the start of its backward. Values the cheap rules recompute (attention probabilities per block
 * of rows) are cloned again where a block's chain needs them, so each clone still dies at its own
 * reader. Full SD 2.1, 39.2%, 64x64: live set at the peak 490 -> 274 MiB (liveness.js).
 *
 * The clones are identical to their originals, so a runtime's common-subexpression elimination
 * would merge them back: training sessions disable onnxruntime's CommonSubexpressionElimination
 * (runtime/train/step-session.ts trainingSession).
 */
import { isWeightView } from '../../compiler/flops';
import { Graph, Node, Value } from '../../compiler/ir';
import { HollowcError } from '../../compiler/errors';
import { moduleOfNode } from '../../compiler/module-scope';
import { Pass } from '../../compiler/pass';
import { staticBytes, staticShape } from '../../compiler/shape-inference';
import { ArtifactState } from '../lib/artifact-state';
import { expandingProjection } from '../lib/expanding-projection';

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
 * Nodes cloned to recompute a residual sum h + W·t (+ bias, + the LoRA branch B·A·t) at most: the
 * transformer blocks' h + attn(…) sums, the LayerNorms' inputs, from the block input h and the
 * attention output t, both kept anyway (the LayerNorm's and the LoRA gradients' read). One matmul
 * (and the branch) per sum instead of keeping it: at 64x64 latents 5 MiB per level-0 sum.
 */
export const MAX_RESIDUAL_CHAIN = 10;

/**
 * The nodes of every LayerNorm written out as opset 14 exports do, ReduceMean(x) → Sub(x, mean) →
 * Pow → ReduceMean → Add(eps) → Sqrt → Div(x − mean, ·) → Mul(weight) → Add(bias) (the affine
 * optional), that a recompute chain may clone from x and the Sqrt's output, each with its cost
 * in the chain: the Div 1, the mean, the Sub and the affine 0, so that the LayerNorm costs one
 * node, as LayerNormalization does. Also each one's x − mean(x) and x.
 */
function writtenOutLayerNorms(
  g: Graph,
  forward: ReadonlySet<Node>,
): { cost: Map<Node, number>; centered: { x: Value; centered: Value }[] } {
  const cost = new Map<Node, number>();
  const centered: { x: Value; centered: Value }[] = [];
  const op = (v: Value | null | undefined, type: string) =>
    v?.producer?.opType === type && v.producer.domain === '' ? v.producer : undefined;
  // The one forward reader (the backward may read it too: a Div's gradient reads its output).
  const only = (v: Value, type: string) => {
    const readers = v.uses.filter((u) => forward.has(u.node));
    return readers.length === 1 ? op(readers[0].node.outputs[0], type) : undefined;
  };
  const constant = (v: Value | null) => !!v && (isWeightView(v) || v.producer?.opType === 'Constant');
  for (const div of g.nodes) {
    if (div.opType !== 'Div' || div.domain !== '' || !forward.has(div)) continue;
    const sub = op(div.inputs[0], 'Sub');
    const mean = op(sub?.inputs[1], 'ReduceMean');
    const x = sub?.inputs[0];
    const sqrt = op(div.inputs[1], 'Sqrt');
    const eps = op(sqrt?.inputs[0], 'Add');
    const variance = op(eps?.inputs[0], 'ReduceMean');
    const pow = op(variance?.inputs[0], 'Pow');
    if (
      !sub ||
      !mean ||
      !x ||
      mean.inputs[0] !== x ||
      !sqrt ||
      !eps ||
      !constant(eps.inputs[1]) ||
      !pow ||
      pow.inputs[0] !== sub.outputs[0]
    )
      continue;
    for (const n of [mean, sub]) cost.set(n, 0);
    cost.set(div, 1);
    const scale = only(div.outputs[0], 'Mul');
    if (scale && constant(scale.inputs[1])) {
      cost.set(scale, 0);
      const shift = only(scale.outputs[0], 'Add');
      if (shift && constant(shift.inputs[1])) cost.set(shift, 0);
    }
    centered.push({ x, centered: sub.outputs[0] });
  }
  return { cost, centered };
}

/**
 * Points the backward's reads of each written-out LayerNorm's x − mean(x) at a clone of its mean
 * and Sub, so that the backward reads x (then saved, kept or recomputed as any value is) where
 * it read x − mean(x). The clones run the same kernels on the same x.
 */
function recenterInBackward(g: Graph, forward: ReadonlySet<Node>, centered: { x: Value; centered: Value }[]): number {
  let added = 0;
  for (const { centered: d } of centered) {
    const readers = d.uses.filter((u) => !forward.has(u.node));
    if (!readers.length) continue;
    const at = g.nodes.find((n) => readers.some((u) => u.node === n))!;
    const sub = d.producer!;
    const mean = sub.inputs[1]!.producer!;
    const copy = (n: Node, inputs: (Value | null)[]): Value => {
      const c = g.addNode(
        {
          opType: n.opType,
          domain: n.domain,
          name: `${n.name}/recompute`,
          inputs,
          outputs: 1,
          attributes: n.attributes.map((a) => ({ ...a })),
        },
        at,
      );
      c.outputs[0].type = n.outputs[0].type && { ...n.outputs[0].type, shape: n.outputs[0].type.shape && [...n.outputs[0].type.shape] };
      added++;
      return c.outputs[0];
    };
    const again = copy(sub, [sub.inputs[0], copy(mean, [...mean.inputs])]);
    for (const u of readers) g.setInput(u.node, u.index, again);
  }
  return added;
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
  /** Transformer blocks recomputed from their inputs (`blocks`). */
  blocks: number;
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

/** A module path's transformer block (`down_blocks.1.attentions.0.transformer_blocks.2`), if inside one. */
const TRANSFORMER_BLOCK = /^(?:.*\.)?transformer_blocks\.\d+(?=\.|$)/;
/** Module paths of the UNet's own layers outside any transformer block (resnets, proj_in, samplers). */
const UNET_LAYER = /^(down_blocks|mid_block|up_blocks)(\.|$)/;

/**
 * The transformer block each forward node belongs to (`recompute blocks`), by its module. Nodes
 * the passes added under an export's anonymous name (torch's dynamo exporter names nodes
 * `node_<fx name>`, so a split attention's are `node_matmul_3/heads/...`) take their inputs'
 * block when every computed input comes from the same one.
 */
export function transformerBlocks(g: Graph, forward: ReadonlySet<Node>): Map<Node, string> {
  const blocks = new Map<Node, string>();
  for (const n of g.nodes) {
    if (!forward.has(n)) continue;
    const module = moduleOfNode(n);
    const own = TRANSFORMER_BLOCK.exec(module)?.[0];
    if (own !== undefined) blocks.set(n, own);
    if (own !== undefined || UNET_LAYER.test(module)) continue;
    const from = new Set(
      n.inputs.flatMap((v) => (v?.producer && forward.has(v.producer) && v.producer.opType !== 'Constant' ? [blocks.get(v.producer)] : [])),
    );
    const [only] = from;
    if (from.size === 1 && only !== undefined) blocks.set(n, only);
  }
  return blocks;
}

export interface RematerializeOptions {
  /**
   * Gradient checkpointing by transformer block (the spec's `recompute blocks`): every value inside
   * a block that the backward reads is recomputed from the block's input, which with the block's
   * output is all a block keeps from forward to backward. Costs one more forward of each block.
   */
  blocks?: boolean;
}

export function rematerialize(g: Graph, loss: Value, seed: Value, options: RematerializeOptions = {}): RematerializeResult {
  const forward = forwardNodes(loss);
  const layerNorms = writtenOutLayerNorms(g, forward);
  let nodesAdded = recenterInBackward(g, forward, layerNorms.centered);
  const costOf = (n: Node) => layerNorms.cost.get(n) ?? 1;
  const blockOf = options.blocks ? transformerBlocks(g, forward) : new Map<Node, string>();
  const blocks = new Set(blockOf.values()).size;
  if (options.blocks && blocks === 0)
    throw new HollowcError(
      'recompute blocks: the graph names no transformer block (no node scoped `...transformer_blocks.<i>`, by name or dynamo metadata); use recompute cheap',
    );
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
  /** Values inside transformer blocks (`blocks`) whose clone every later chain of the block shares. */
  const sharedInBlock = new Set<Value>();
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
    if (!p || !forward.has(p) || !(recomputable(p, projections) || layerNorms.cost.has(p)) || budget.left < costOf(p)) return false;
    // Not yet decided (a later saved value): only values decided before can be roots.
    if (!top && savedSet.has(v)) return false;
    budget.left -= costOf(p);
    // Below a projection, no other: its input comes from kept values through cheap ops only.
    for (const i of p.inputs) if (i && !plan(i, false, budget, order, projections && !isProjection(p))) return false;
    if (!order.includes(p)) order.push(p);
    return true;
  }

  /**
   * Like `plan`, for `v` inside `block`: any node of the block is cloned, rooted at values from
   * outside it that are kept, free or recomputable the cheap way.
   */
  function planInBlock(v: Value, top: boolean, block: string, order: Node[], placed: Set<Node>): boolean {
    if (!top && (free(v) || sharedInBlock.has(v) || kept.has(v))) return true;
    const p = v.producer;
    if (!p || !forward.has(p)) return false;
    if (blockOf.get(p) !== block) {
      // A failed attempt leaves nothing behind in `order`.
      const attempt = [...order];
      if (plan(v, false, { left: MAX_CHAIN }, attempt)) {
        order.splice(0, order.length, ...attempt);
        return true;
      }
      // The block's input: kept as its checkpoint (the first block's has no other reader).
      kept.add(v);
      return true;
    }
    // A value the cheap way recomputes is recomputed again here rather than shared: its clone
    // (attention probabilities, per block of rows) is made to die at its own reader.
    if (!top && savedSet.has(v) && !clones.has(v)) return false;
    if (placed.has(p)) return true;
    for (const i of p.inputs) if (i && !planInBlock(i, false, block, order, placed)) return false;
    placed.add(p);
    order.push(p);
    return true;
  }

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
    const block = v.producer ? blockOf.get(v.producer) : undefined;
    // A block's output is the next block's input: the checkpoint both recompute from.
    if (block !== undefined && v.uses.some((u) => forward.has(u.node) && blockOf.get(u.node) !== block)) {
      kept.add(v);
      continue;
    }
    let order: Node[] = [];
    const cheap = plan(v, true, { left: MAX_CHAIN }, order);
    if (!cheap) {
      order = [];
      const recomputedAnyway =
        block !== undefined
          ? planInBlock(v, true, block, order, new Set())
          : residualSum(v) && plan(v, true, { left: MAX_RESIDUAL_CHAIN }, order, true);
      if (!recomputedAnyway) {
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
    // In a recomputed block, every value on the way is shared the same way.
    if (block !== undefined && !cheap) for (const [original, c] of local) (sharedInBlock.add(original), clones.set(original, c));
    else if (order.some(expandingProjection)) for (const [original, c] of local) clones.set(original, c);
    recomputed.push(v);
    bytesFreed += bytesOf(v);
  }
  const moved = scheduleBackward(g, forward, seed);
  return { recomputed, nodesAdded, bytesFreed, moved, blocks };
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
    const r = rematerialize(model.graph, state.loss!, state.gradientSeed!, { blocks: state.training.recompute === 'blocks' });
    return {
      changed: r.nodesAdded + r.moved > 0,
      summary: `${r.recomputed.length} saved values recomputed (${(r.bytesFreed / 2 ** 20).toFixed(1)} MiB)${r.blocks ? `, ${r.blocks} transformer blocks from their inputs` : ''}, ${r.nodesAdded} nodes added, ${r.moved} moved`,
    };
  },
};
