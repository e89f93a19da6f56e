/**
 * Computes each large attention map a block of query rows at a time in the inference graphs
 * (precompute.onnx, infer.onnx), whose shapes stay dynamic.
 *
 * Why: at 64x64 latents SD's outer self-attentions are [heads, 4096, 4096] (320 MiB at 5 heads and
 * batch 1, twice that with guidance's batch 2), and the scores and the probabilities are both alive
 * while the softmax runs. Softmax normalizes each row on its own, so a block of rows of q with the
 * whole kᵀ and v gives those rows of the output: the same kernels on the same values, row for row.
 * The training graphs do this per head with static shapes (split-attention.ts); here the row
 * count is only known at run time, so the blocks are Slices whose bounds come from q's shape:
 * `blocks` near-equal blocks (the last one takes the rest), with `blocks` fixed at compile time
 * from the map's size at the spec's training shapes (the design point): at most INFER_CHUNK_BYTES
 * a block there, at other resolutions proportionally more or less.
 *
 * Matched (passes/lib/attention-match.ts): MatMul(q, kᵀ) → optional Mul or Div by a constant →
 * optional Add of baddbmm's zeros (torch exports; left out) → Softmax over the last axis →
 * optional Cast → MatMul(·, v), each value read once. q's rows are its second-to-last axis
 * (MatMul's), whatever its rank.
 */
import { cloneModel } from '../../compiler/clone';
import { DataType } from '../../compiler/dtype';
import { GraphBuilder } from '../../compiler/builder';
import { HollowcError } from '../../compiler/errors';
import { Graph, Model, Node, Value } from '../../compiler/ir';
import { OpEmitter } from '../../compiler/op-emitter';
import { Pass, PassSites, passSites } from '../../compiler/pass';
import { inferShapes, staticShape } from '../../compiler/shape-inference';
import { ArtifactState } from '../lib/artifact-state';
import { trainingShapes } from '../lib/training-shapes';
import { AttentionCore, matchAttention, removeAttentionCore } from '../lib/attention-match';

/** The largest block of an inference attention map at the design point (all heads, the training batch). */
export const INFER_CHUNK_BYTES = 16 * 2 ** 20;

/** A Slice end past any row count (Slice clamps it): the last block takes every remaining row. */
const TO_END = Number.MAX_SAFE_INTEGER;

/**
 * The static shape of every chain's scores at the design point: a copy of the graph whose inputs
 * take `shapes` (an input named `base_<x>` takes x's: infer.onnx's class conditioning), shape
 * inference on it (no weight is read), and the scores' shapes read off by value name.
 */
function designShapes(model: Model, shapes: Record<string, number[]>, scores: Value[]): (number[] | undefined)[] {
  const copy = cloneModel(model);
  for (const v of copy.graph.inputs) {
    if (v.initializer || staticShape(v)) continue;
    const shape = shapes[v.name] ?? shapes[v.name.replace(/^base_/, '')];
    if (!shape) return scores.map(() => undefined);
    v.type = { elemType: v.type?.elemType ?? DataType.FLOAT, shape: [...shape] };
  }
  try {
    inferShapes(copy);
  } catch (e) {
    // A graph shape inference cannot follow keeps its maps whole (nothing is wrong with it).
    if (e instanceof HollowcError) return scores.map(() => undefined);
    throw e;
  }
  return scores.map((s) => staticShape(copy.graph.value(s.name)));
}

function chunkRows(graph: Graph, opset: number, c: AttentionCore, blocks: number): void {
  const b = new GraphBuilder(graph, `${c.scores.name}/rows`);
  const before = c.output;
  const e = new OpEmitter(b, opset, before);
  const [q, kT] = c.scores.inputs as Value[];
  const v = c.output.inputs[1]!;
  const rows = b.op('Gather', [b.op('Shape', [q], undefined, { before }), e.int64s([-2])], { axis: 0 }, { before });
  // ceil(rows / blocks) rows a block: Div of int64 truncates, and every operand is positive.
  const size = b.op('Div', [b.op('Add', [rows, e.int64s([blocks - 1])], undefined, { before }), e.int64s([blocks])], undefined, { before });
  // Block i is rows [starts[i], starts[i + 1]); the last one ends past any row count.
  const starts = [
    e.int64s([0]),
    ...Array.from({ length: blocks - 1 }, (_, i) => (i === 0 ? size : b.op('Mul', [size, e.int64s([i + 1])], undefined, { before }))),
  ];
  const ends = [...starts.slice(1), e.int64s([TO_END])];
  const axes = e.int64s([-2]);
  const outputs: Value[] = [];
  for (let i = 0; i < blocks; i++) {
    const qi = b.op('Slice', [q, starts[i], ends[i], axes], undefined, { before });
    const again = (node: Node, inputs: Value[]): Value => {
      const out = b.op(node.opType, inputs, undefined, { name: `${node.opType}_rows${i}`, before });
      out.producer!.attributes = node.attributes.map((a) => ({ ...a }));
      return out;
    };
    let s = again(c.scores, [qi, kT]);
    if (c.scale)
      s = again(
        c.scale,
        c.scale.inputs.map((x) => (x === c.scores.outputs[0] ? s : x!)),
      );
    const probs = again(c.softmax, [s]);
    outputs.push(again(c.output, [c.cast ? again(c.cast, [probs]) : probs, v]));
  }
  const joined = b.op('Concat', outputs, { axis: -2 }, { before });
  joined.type = c.output.outputs[0].type;
  graph.replaceAllUsesWith(c.output.outputs[0], joined);
  removeAttentionCore(graph, c);
}

export function chunkAttention(
  model: Model,
  shapes: Record<string, number[]>,
  chunkBytes = INFER_CHUNK_BYTES,
): { chunked: number; blocks: number; sites: PassSites } {
  const g = model.graph;
  const found = g.nodes.filter((n) => n.opType === 'Softmax' && n.domain === '').map((n) => matchAttention(g, n));
  const chains = found.flatMap((m) => (m.match ? [m.match] : []));
  const reasons = found.flatMap((m) => (m.reason !== undefined ? [m.reason] : []));
  const sites = (rewritten: number): PassSites => passSites('Softmax sites', found.length, reasons, rewritten);
  if (!chains.length) return { chunked: 0, blocks: 0, sites: sites(0) };
  const design = designShapes(
    model,
    shapes,
    chains.map((c) => c.scores.outputs[0]),
  );
  const opset = model.opsetVersion('');
  let [chunked, blocks] = [0, 0];
  chains.forEach((c, i) => {
    const shape = design[i];
    if (!shape) return;
    const count = Math.min(Math.ceil((shape.reduce((a, d) => a * d, 1) * 4) / chunkBytes), shape[shape.length - 2]);
    if (count < 2) return;
    chunkRows(g, opset, c, count);
    chunked++;
    blocks += count;
  });
  return { chunked, blocks, sites: sites(chunked) };
}

/**
 * The design point: the training shapes of the graph's inputs, those the spec leaves out included
 * (a `[batch]` timestep, which the spec never needs to give); the LoRA inputs have theirs already.
 */
function shapesOf(model: Model, state: ArtifactState): Record<string, number[]> {
  try {
    return trainingShapes(model, state.analysis.family, state.training);
  } catch (e) {
    // An axis the spec does not size (an infer-only spec without `shape sample`): the spec's shapes
    // as they are, and a map whose size they leave open stays whole.
    if (e instanceof HollowcError) return { ...state.training.shapes };
    throw e;
  }
}

export const chunkAttentionPass: Pass<ArtifactState> = {
  name: 'chunk-attention',
  run(model, state) {
    const r = chunkAttention(model, shapesOf(model, state), state.inferChunkBytes);
    return {
      changed: r.chunked > 0,
      summary: `${r.chunked} attention maps computed in ${r.blocks} blocks of query rows (${r.sites.matched} of ${r.sites.found} Softmax sites matched)`,
      sites: r.sites,
    };
  },
};
