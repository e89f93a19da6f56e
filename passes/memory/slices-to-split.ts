/**
 * Turns Slices that cut one tensor into consecutive pieces along one axis into one Split, in the
 * training graphs (before differentiation).
 *
 * Why: the gradient of a Slice is its gradient zero-padded to the whole input, and the pieces'
 * padded gradients are then summed; the gradient of a Split is one Concat. SD's GEGLU cuts its
 * projection (8x the residual width) into two halves with two Slices, so its backward made two
 * full-width zero-padded tensors and their sum, where one Concat makes one (at 32x32 latents,
 * 10 MiB each in the outer blocks). The values are the same either way (a Split copies the same
 * elements the Slices copy; the Concat puts each gradient where the padding and the sum put it).
 */
import { GraphBuilder } from '../../compiler/builder';
import { Graph, Model, Node, Value } from '../../compiler/ir';
import { OpEmitter } from '../../compiler/op-emitter';
import { Pass } from '../../compiler/pass';
import { constantInts } from '../../compiler/shape-inference';
import { ArtifactState } from '../lib/artifact-state';

interface Piece {
  node: Node;
  axis: number;
  start: number;
  end: number;
}

/** A Slice of one axis with step 1 and constant bounds, as [start, end) clamped to the axis. */
function pieceOf(n: Node, opset: number): Piece | undefined {
  const shape = n.inputs[0]?.type?.shape;
  if (!shape || !shape.every((d) => typeof d === 'number')) return undefined;
  const dims = shape as number[];
  let starts: number[] | undefined;
  let ends: number[] | undefined;
  let axes: number[] | undefined;
  let steps: number[] | undefined;
  if (opset < 10) {
    [starts, ends] = [n.attrInts('starts'), n.attrInts('ends')];
    axes = n.attr('axes') ? n.attrInts('axes') : starts.map((_, i) => i);
  } else {
    const constant = (i: number) => constantInts(n, i);
    [starts, ends] = [constant(1), constant(2)];
    axes = n.inputs[3] ? constant(3) : starts?.map((_, i) => i);
    steps = n.inputs[4] ? constant(4) : undefined;
    if ((n.inputs[3] && !axes) || (n.inputs[4] && !steps)) return undefined;
  }
  if (!starts || !ends || !axes || starts.length !== 1 || ends.length !== 1 || axes.length !== 1) return undefined;
  if (steps && steps[0] !== 1) return undefined;
  const axis = axes[0] < 0 ? axes[0] + dims.length : axes[0];
  const size = dims[axis];
  const clamp = (x: number) => Math.min(Math.max(x < 0 ? x + size : x, 0), size);
  return { node: n, axis, start: clamp(starts[0]), end: clamp(ends[0]) };
}

/** Pieces of one input that tile its axis exactly, in order; undefined when they do not. */
function tiling(pieces: Piece[], size: number): Piece[] | undefined {
  if (pieces.length < 2 || pieces.some((p) => p.axis !== pieces[0].axis)) return undefined;
  const sorted = [...pieces].sort((a, b) => a.start - b.start);
  let at = 0;
  for (const p of sorted) {
    if (p.start !== at || p.end <= p.start) return undefined;
    at = p.end;
  }
  return at === size ? sorted : undefined;
}

export function slicesToSplit(model: Model): { splits: number; slices: number } {
  const g: Graph = model.graph;
  const opset = model.opsetVersion('');
  const byInput = new Map<Value, Piece[]>();
  for (const n of g.nodes) {
    if (n.opType !== 'Slice' || n.domain !== '' || !n.inputs[0] || g.outputs.includes(n.outputs[0])) continue;
    const p = pieceOf(n, opset);
    if (p) byInput.set(n.inputs[0], [...(byInput.get(n.inputs[0]) ?? []), p]);
  }
  let splits = 0;
  let slices = 0;
  for (const [x, pieces] of byInput) {
    const size = (x.type!.shape as number[])[pieces[0].axis];
    const parts = tiling(pieces, size);
    if (!parts) continue;
    const first = g.nodes.find((n) => parts.some((p) => p.node === n))!;
    const b = new GraphBuilder(g, `${first.name}/split`);
    const e = new OpEmitter(b, opset, first);
    const sizes = parts.map((p) => p.end - p.start);
    const axis = parts[0].axis;
    const outputs =
      opset >= 13
        ? b.node('Split', [x, e.int64s(sizes)], { axis }, { outputs: parts.length, before: first })
        : b.node('Split', [x], { axis, split: sizes }, { outputs: parts.length, before: first });
    parts.forEach((p, i) => {
      const shape = [...(x.type!.shape as number[])];
      shape[axis] = sizes[i];
      outputs[i].type = { elemType: x.type!.elemType, shape };
      g.replaceAllUsesWith(p.node.outputs[0], outputs[i]);
      const bounds = p.node.inputs.slice(1);
      g.removeNode(p.node);
      // The bounds' Constant nodes now feed nothing.
      for (const c of bounds) if (c?.producer?.opType === 'Constant' && c.uses.length === 0) g.removeNode(c.producer);
    });
    splits++;
    slices += parts.length;
  }
  return { splits, slices };
}

export const slicesToSplitPass: Pass<ArtifactState> = {
  name: 'slices-to-split',
  run(model) {
    const r = slicesToSplit(model);
    return { changed: r.splits > 0, summary: `${r.slices} Slices became ${r.splits} Splits` };
  },
};
