/**
 * Runs each wide feed-forward in blocks of token rows, in the training graphs (before
 * differentiation, so that the backward runs in the same blocks).
 *
 * Why: SD's feed-forward (GEGLU) widens every token 8x (proj: 320 → 2560 at level 0) and its
 * forward and backward hold several such tensors at once (the two halves, erf, products and their
 * gradients: 20-40 MiB each at 64x64 latents). onnxruntime's planner hands a dead tensor's buffer
 * to the next tensor of the same shape, so the most of these a block ever needed at once stay
 * allocated from the first feed-forward to the last, idle in between: at 64x64, ~240 MiB held
 * through the backward's peak (tests/bench/liveness.ts, "held with onnxruntime's buffer reuse").
 * In blocks of rows (FF_CHUNK_BYTES per widest tensor), every such tensor is a block's size.
 *
 * Matched: x·W with W a weight whose output is EXPANSION times wider than x (rematerialize's
 * expanding projection), then every node that reads its results, up to the first value of x's
 * shape (the contracting x·W₂, with its bias Add): a closed region of row-wise ops (weight
 * products, elementwise ops with weights or constants, Split/Slice along the channels). Each row
 * of the output depends on the same row of x only, so the rows are computed by the same kernels
 * on the same numbers: Split of x along the tokens, the region per block, Concat.
 */
import { GraphBuilder } from '../../compiler/builder';
import { copyNodes } from '../../compiler/clone';
import { isWeightView } from '../../compiler/flops';
import { Graph, Model, Node, Value } from '../../compiler/ir';
import { OpEmitter } from '../../compiler/op-emitter';
import { Pass, PassSites, passSites } from '../../compiler/pass';
import { constantOfValue, staticShape } from '../../compiler/shape-inference';
import { ArtifactState } from '../lib/artifact-state';
import { expandingProjection } from '../lib/expanding-projection';
import { rowBlocks } from '../lib/row-blocks';

/** The widest tensor of one block of rows (SD at 64x64: level 0's 40 MiB projection in 4 blocks; level 1's 10 MiB whole). */
export const FF_CHUNK_BYTES = 10 * 2 ** 20;

const ROW_WISE = new Set([
  'MatMul',
  'Add',
  'Sub',
  'Mul',
  'Div',
  'Erf',
  'Tanh',
  'Sigmoid',
  'Relu',
  'Gelu',
  'Sqrt',
  'Pow',
  'Split',
  'Slice',
  'Cast',
]);

interface FeedForward {
  input: Value;
  /** Region nodes in graph order. */
  nodes: Node[];
  output: Value;
  tokenAxis: number;
  rows: number[];
}

function sameShape(a: readonly number[] | undefined, b: readonly number[]): boolean {
  return !!a && a.length === b.length && a.every((d, i) => d === b[i]);
}

const isConstant = (v: Value | null) => !v || isWeightView(v) || v.producer?.opType === 'Constant' || !!constantOfValue(v);

/** Split and Slice must cut along an axis other than the tokens'. */
function keepsRows(n: Node, rank: number, tokenAxis: number): boolean {
  const norm = (a: number) => (a < 0 ? a + rank : a);
  if (n.opType === 'Split') return norm(n.attrInt('axis', 0)) !== tokenAxis && n.inputs.slice(1).every(isConstant);
  if (n.opType === 'Slice') {
    const axes = n.inputs[3] ? constantOfValue(n.inputs[3])?.data?.map(Number) : undefined;
    return !!axes && axes.every((a) => norm(a) !== tokenAxis) && n.inputs.slice(1).every(isConstant);
  }
  if (n.opType === 'MatMul') return isWeightView(n.inputs[1]);
  return true;
}

/** A feed-forward to run in blocks; or why not: `small` when it is one, but no wider than a block. */
type FeedForwardMatch = { ff: FeedForward } | { reason: string; small?: boolean };

function matchFeedForward(g: Graph, proj: Node, chunkBytes: number): FeedForwardMatch {
  const input = proj.inputs[0]!;
  const shape = staticShape(input);
  if (!shape || shape.length < 2) return { reason: 'its input has no static shape of rank 2 or more' };
  const tokenAxis = shape.length - 2;
  const region = new Set<Node>([proj]);
  const queue = [proj];
  let output: Value | undefined;
  let widest = 0;
  while (queue.length) {
    const n = queue.shift()!;
    for (const o of n.outputs) {
      const s = staticShape(o);
      if (!s || s.length !== shape.length || s[tokenAxis] !== shape[tokenAxis] || g.outputs.includes(o))
        return { reason: `${n.opType} ${n.name} changes the token rows or is a graph output` };
      widest = Math.max(widest, s.reduce((a, b) => a * b, 1) * 4);
      if (n !== proj && sameShape(s, shape)) {
        // Back to x's width: the end, with a bias Add if one follows.
        const bias = o.uses.length === 1 ? o.uses[0].node : undefined;
        const end = bias?.opType === 'Add' && bias.inputs.every((v) => v === o || isConstant(v)) ? bias : undefined;
        if (end) region.add(end);
        const out = end ? end.outputs[0] : o;
        if (output && output !== out) return { reason: "it returns to the input's width more than once" };
        output = out;
        continue;
      }
      for (const u of o.uses) {
        const r = u.node;
        if (region.has(r)) continue;
        if (r.domain !== '' || !ROW_WISE.has(r.opType) || !keepsRows(r, shape.length, tokenAxis))
          return { reason: `${r.opType} ${r.name} is not a row-wise op` };
        region.add(r);
        queue.push(r);
      }
    }
  }
  if (!output) return { reason: "it never returns to the input's width" };
  // Closed: every region node reads only region values, x (the projection) and constants.
  const produced = new Set([...region].flatMap((n) => n.outputs));
  for (const n of region)
    for (const v of n.inputs)
      if (v && !produced.has(v) && !(n === proj && v === input) && !isConstant(v))
        return { reason: `${n.opType} ${n.name} reads ${v.name} from outside` };
  for (const v of produced) if (v !== output && v.uses.some((u) => !region.has(u.node))) return { reason: `${v.name} is read outside it` };
  if (widest <= chunkBytes) return { reason: 'small', small: true };
  const limit = Math.floor((shape[tokenAxis] * chunkBytes) / widest);
  return { ff: { input, nodes: g.nodes.filter((n) => region.has(n)), output, tokenAxis, rows: rowBlocks(shape[tokenAxis], limit) } };
}

function chunk(g: Graph, opset: number, f: FeedForward): void {
  const before = f.nodes[f.nodes.length - 1];
  const b = new GraphBuilder(g, `${f.nodes[0].name}/rows`);
  const e = new OpEmitter(b, opset, before);
  const withRows = (v: Value, rows: number) => {
    const shape = [...staticShape(v)!];
    shape[f.tokenAxis] = rows;
    return { elemType: v.type!.elemType, shape };
  };
  const parts =
    opset >= 13
      ? b.node('Split', [f.input, e.int64s(f.rows)], { axis: f.tokenAxis }, { outputs: f.rows.length, before })
      : b.node('Split', [f.input], { axis: f.tokenAxis, split: f.rows }, { outputs: f.rows.length, before });
  const outputs = parts.map((part, i) => {
    part.type = withRows(f.input, f.rows[i]);
    const copies = copyNodes(g, f.nodes, `/rows${i}`, new Map([[f.input, part]]), before);
    for (const o of f.nodes.flatMap((n) => n.outputs)) copies.get(o)!.type = withRows(o, f.rows[i]);
    return copies.get(f.output)!;
  });
  const joined = b.op('Concat', outputs, { axis: f.tokenAxis }, { before });
  joined.type = { elemType: f.output.type!.elemType, shape: [...staticShape(f.output)!] };
  g.replaceAllUsesWith(f.output, joined);
  for (const n of [...f.nodes].reverse()) g.removeNode(n);
}

export function chunkFeedForward(model: Model, chunkBytes = FF_CHUNK_BYTES): { chunked: number; blocks: number; sites: PassSites } {
  const g = model.graph;
  const matches = g.nodes.filter((n) => n.domain === '' && expandingProjection(n)).map((n) => matchFeedForward(g, n, chunkBytes));
  const found = matches.flatMap((m) => ('ff' in m ? [m.ff] : []));
  const unmatched = matches.flatMap((m) => ('reason' in m && !m.small ? [m.reason] : []));
  const opset = model.opsetVersion('');
  for (const f of found) chunk(g, opset, f);
  return {
    chunked: found.length,
    blocks: found.reduce((a, f) => a + f.rows.length, 0),
    sites: passSites('expanding projections', matches.length, unmatched, found.length),
  };
}

/** grads.onnx and train.onnx: wide feed-forwards in blocks of token rows. */
export const chunkFeedForwardPass: Pass<ArtifactState> = {
  name: 'chunk-feed-forward',
  run(model, state) {
    const r = chunkFeedForward(model, state.feedForwardChunkBytes ?? FF_CHUNK_BYTES);
    return {
      changed: r.chunked > 0,
      summary: `${r.chunked} feed-forwards in ${r.blocks} blocks of rows (${r.sites.matched} of ${r.sites.found} expanding projections matched)`,
      sites: r.sites,
    };
  },
};
