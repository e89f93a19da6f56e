/**
 * The attention core softmax(q·kᵀ·s)·v found by structure alone: every pass that works on
 * attention (split-attention, chunk-attention, and pair-attention-gradients through
 * split-attention's blocks) matches through here, so an export form one of them knows, all of them
 * know.
 *
 * Two forms: the builder's (MatMul(q, kᵀ) → Mul by the scale → Softmax → MatMul(·, v)) and
 * torch 1.13's export of diffusers' AttnProcessor, which writes the scores as `baddbmm` with
 * beta 0 and converts the probabilities back to the query's dtype:
 * Add(Mul(MatMul(q, kᵀ), scale), Mul(ConstantOfShape(shape), 0)) → Softmax → Cast → MatMul(·, v).
 * The Add's second term is zeros (a finite fill times 0), so the Add returns the scaled scores
 * unchanged (x + ±0 is x, but for the sign of a zero, which exp and the row max do not see): a
 * rewrite may leave it out, provided the zeros do not broadcast the scores to a larger shape. Their
 * shape is read from the graph (`torch.empty(q.shape[0], q.shape[1], k.shape[1])`: Shape, Gather,
 * Unsqueeze, Concat) and each axis must be one the scores have already. The Cast is kept, per block
 * (it is elementwise).
 *
 * A failed match says why (as onnxscript's rewriter `check` does), so that a pass can tell its
 * user which attention it left whole and what it found there instead.
 */
import { constFromTensor, intList } from '../../compiler/constant-eval';
import { Graph, Node, Value } from '../../compiler/ir';
import { constantOfValue, staticShape } from '../../compiler/shape-inference';

/** softmax(q·kᵀ·s)·v: the nodes of one attention's chain, each intermediate read once. */
export interface AttentionCore {
  /** MatMul(q, kᵀ). */
  scores: Node;
  /** Mul or Div by a scalar constant, if any. */
  scale: Node | undefined;
  /** baddbmm's Add of zeros (torch exports), if any: the chain is the same without it. */
  zeroBias: Node | undefined;
  softmax: Node;
  /** The Cast of the probabilities (torch exports' `.to(dtype)`), if any: rebuilt with the chain. */
  cast: Node | undefined;
  /** MatMul(probabilities, v). */
  output: Node;
}

export type AttentionMatch = { match: AttentionCore; reason?: undefined } | { match?: undefined; reason: string };

const fail = (reason: string): { reason: string } => ({ reason });

function onlyReader(v: Value, graph: Graph): Node | undefined {
  return v.uses.length === 1 && !graph.outputs.includes(v) ? v.uses[0].node : undefined;
}

/** Who reads `v`, for a reason: "2 nodes (Mul, Add)", "a graph output". */
function readersText(v: Value, graph: Graph): string {
  if (graph.outputs.includes(v)) return 'a graph output';
  return `${v.uses.length} nodes (${[...new Set(v.uses.map((u) => u.node.opType))].join(', ')})`;
}

/** One value, from a Constant node or an initializer (its shape from the type, else from the value: exports leave Constants untyped). */
function isScalarConstant(v: Value | null): boolean {
  if (!v || !(v.initializer || v.producer?.opType === 'Constant')) return false;
  const shape = staticShape(v) ?? v.initializer?.dims ?? constantOfValue(v)?.dims;
  return !!shape && shape.reduce((a, b) => a * b, 1) === 1;
}

/** The one number of a scalar constant, or undefined. */
function scalarValue(v: Value | null): number | undefined {
  const c = v && isScalarConstant(v) ? constantOfValue(v) : undefined;
  return c ? (c.splat ?? c.data?.[0]) : undefined;
}

function producedBy(v: Value | null | undefined, opType: string): Node | undefined {
  const p = v?.producer;
  return p && p.opType === opType && p.domain === '' ? p : undefined;
}

// --- The rank of a value, from its type or the op that made it (exports leave most values untyped).

const SAME_RANK = new Set(['Cast', 'Softmax', 'Mul', 'Div', 'Add', 'Sub', 'Erf', 'Sqrt', 'Neg', 'Identity']);

function rankOf(v: Value, depth = 0): number | undefined {
  const shape = v.type?.shape ?? v.initializer?.dims;
  if (shape) return shape.length;
  const p = v.producer;
  if (!p || p.domain !== '' || depth > 12) return undefined;
  if (p.opType === 'Transpose')
    return p.attr('perm') ? p.attrInts('perm').length : p.inputs[0] ? rankOf(p.inputs[0], depth + 1) : undefined;
  if (p.opType === 'Reshape') return p.inputs[1] ? lengthOf(p.inputs[1], depth + 1) : undefined;
  if (p.opType === 'MatMul') {
    const [a, b] = p.inputs.map((x) => (x ? rankOf(x, depth + 1) : undefined));
    return a !== undefined && b !== undefined && a >= 2 && b >= 2 ? Math.max(a, b) : undefined;
  }
  if (SAME_RANK.has(p.opType)) {
    const ranks = p.inputs.map((x) => (x ? rankOf(x, depth + 1) : undefined));
    return ranks.some((r) => r === undefined) ? undefined : Math.max(...(ranks as number[]));
  }
  return undefined;
}

/**
 * The element count of a 1-D int64 vector (a shape): a constant, Shape(x), or a Concat of such
 * pieces, where an Unsqueeze of one axis is one element (a Concat into a shape takes 1-D pieces,
 * so what it unsqueezed was a scalar).
 */
function lengthOf(v: Value, depth = 0): number | undefined {
  const c = constantOfValue(v);
  if (c) return c.dims.reduce((a, b) => a * b, 1);
  const p = v.producer;
  if (!p || p.domain !== '' || depth > 12) return undefined;
  if (p.opType === 'Shape' && p.attributes.length === 0 && p.inputs[0]) return rankOf(p.inputs[0], depth + 1);
  if (p.opType === 'Unsqueeze') return unsqueezeAxes(p)?.length === 1 ? 1 : undefined;
  if (p.opType === 'Gather') {
    const index = p.inputs[1] ? constantOfValue(p.inputs[1]) : undefined;
    return index?.dims.length === 1 ? index.dims[0] : undefined;
  }
  if (p.opType === 'Concat' && p.attrInt('axis', 0) === 0) {
    const parts = p.inputs.map((x) => (x ? lengthOf(x, depth + 1) : undefined));
    return parts.some((n) => n === undefined) ? undefined : (parts as number[]).reduce((a, b) => a + b, 0);
  }
  return undefined;
}

function unsqueezeAxes(n: Node): number[] | undefined {
  if (n.attr('axes')) return n.attrInts('axes');
  const c = n.inputs[1] ? constantOfValue(n.inputs[1]) : undefined;
  return c ? intList(c) : undefined;
}

// --- The shape of baddbmm's zeros, one axis at a time.

/** An axis of a shape vector: a number, or axis `axis` of `of`'s shape. */
type Dim = { size: number } | { of: Value; axis: number };

/** The axes of a shape vector, as far as the graph says what each is. */
function dimsOf(v: Value, depth = 0): (Dim | undefined)[] | undefined {
  const c = constantOfValue(v);
  if (c) return intList(c).map((size) => ({ size }));
  const p = v.producer;
  if (!p || p.domain !== '' || depth > 8) return undefined;
  if (p.opType === 'Shape' && p.attributes.length === 0 && p.inputs[0]) {
    const rank = rankOf(p.inputs[0]);
    return rank === undefined ? undefined : Array.from({ length: rank }, (_, axis) => ({ of: p.inputs[0]!, axis }));
  }
  if (p.opType === 'Concat' && p.attrInt('axis', 0) === 0) {
    const parts = p.inputs.map((x) => (x ? dimsOf(x, depth + 1) : undefined));
    return parts.some((d) => !d) ? undefined : (parts as (Dim | undefined)[][]).flat();
  }
  // One element: Unsqueeze of a scalar; or axes of a shape, Gather(Shape(x), [i, ...]).
  if (p.opType === 'Unsqueeze' && unsqueezeAxes(p)?.length === 1 && p.inputs[0]) return [scalarDim(p.inputs[0])];
  const shape = producedBy(p.inputs[0], 'Shape');
  const index = p.opType === 'Gather' && p.inputs[1] ? constantOfValue(p.inputs[1]) : undefined;
  if (shape && !shape.attributes.length && shape.inputs[0] && index?.dims.length === 1 && p.attrInt('axis', 0) === 0)
    return intList(index).map((axis) => ({ of: shape.inputs[0]!, axis }));
  return undefined;
}

/** A scalar taken from a shape (Gather(Shape(x), i)) or a constant. */
function scalarDim(v: Value): Dim | undefined {
  const c = constantOfValue(v);
  if (c) return { size: intList(c)[0] };
  const gather = producedBy(v, 'Gather');
  const shape = producedBy(gather?.inputs[0], 'Shape');
  const index = gather?.inputs[1] ? constantOfValue(gather.inputs[1]) : undefined;
  if (!gather || !shape || shape.attributes.length || !shape.inputs[0] || !index || gather.attrInt('axis', 0) !== 0) return undefined;
  return { of: shape.inputs[0], axis: intList(index)[0] };
}

/**
 * Which axis of the scores MatMul(q, kᵀ) a dimension of q, kᵀ (or what kᵀ transposes) is, when it
 * is one the scores have (the batch axes, q's rows, kᵀ's columns; not the reduced axis).
 */
function scoresAxis(d: { of: Value; axis: number }, scores: Node, depth = 0): number | undefined {
  const [q, kT] = scores.inputs as Value[];
  const [rq, rk] = [rankOf(q), rankOf(kT)];
  if (rq === undefined || rk === undefined) return undefined;
  const rank = Math.max(rq, rk);
  const norm = (r: number) => (d.axis < 0 ? d.axis + r : d.axis);
  if (d.of === scores.outputs[0]) return norm(rank);
  if (d.of === q) {
    const a = norm(rq);
    return a < rq - 2 ? rank - rq + a : a === rq - 2 ? rank - 2 : undefined;
  }
  if (d.of === kT) {
    const a = norm(rk);
    return a < rk - 2 ? rank - rk + a : a === rk - 1 ? rank - 1 : undefined;
  }
  // An axis of k where kᵀ = Transpose(k): the kᵀ axis it moved to.
  const t = producedBy(kT, 'Transpose');
  if (t && d.of === t.inputs[0] && depth === 0) {
    const perm = t.attr('perm') ? t.attrInts('perm') : Array.from({ length: rk }, (_, i) => rk - 1 - i);
    const to = perm.indexOf(norm(perm.length));
    return to < 0 ? undefined : scoresAxis({ of: kT, axis: to }, scores, depth + 1);
  }
  return undefined;
}

/**
 * Why `term` is not zeros that leave the scores as they are (undefined when it is): Mul of a
 * finite ConstantOfShape by 0, or such a ConstantOfShape of 0, whose every axis is 1 or one the
 * scores have (so the Add broadcasts nothing).
 */
function zeroTermProblem(term: Value, scores: Node): string | undefined {
  let filled = producedBy(term, 'ConstantOfShape');
  const fillOf = (n: Node): number => {
    const a = n.attr('value');
    const c = a?.type === 'tensor' ? constFromTensor(a.value) : undefined;
    return c ? (c.splat ?? c.data?.[0] ?? NaN) : 0;
  };
  if (filled) {
    if (fillOf(filled) !== 0) return `its added term is ConstantOfShape of ${fillOf(filled)}, not zeros`;
  } else {
    const mul = producedBy(term, 'Mul');
    const zero = mul?.inputs.findIndex((x) => scalarValue(x) === 0) ?? -1;
    filled = zero >= 0 ? producedBy(mul!.inputs[1 - zero], 'ConstantOfShape') : undefined;
    if (!filled)
      return `its scores have a ${term.producer?.opType ?? 'graph input'} added (an attention mask or bias; baddbmm's zeros are Mul(ConstantOfShape, 0))`;
    if (!Number.isFinite(fillOf(filled))) return `its added term is ${fillOf(filled)} times 0, not zeros`;
  }
  const dims = filled.inputs[0] ? dimsOf(filled.inputs[0]) : undefined;
  if (!dims) return 'the shape of its added zeros is not one the matcher can read (Shape, Gather, Unsqueeze, Concat)';
  const rank = rankOf(scores.outputs[0]);
  if (rank === undefined || dims.length > rank)
    return `its added zeros (rank ${dims.length}) may have more axes than the scores (rank ${rank ?? 'unknown'})`;
  const scoresShape = staticShape(scores.outputs[0]);
  for (let j = 0; j < dims.length; j++) {
    const d = dims[j];
    const axis = rank - dims.length + j;
    const fits = !!d && ('size' in d ? d.size === 1 || scoresShape?.[axis] === d.size : scoresAxis(d, scores) === axis);
    if (!fits) return `axis ${j} of its added zeros is not shown to be the scores' (it could broadcast them)`;
  }
  return undefined;
}

/**
 * The attention chain whose Softmax is `softmax`, by structure alone: MatMul(q, kᵀ) → optional Mul
 * or Div by a scalar constant → optional Add of baddbmm's zeros → Softmax over the last axis →
 * optional Cast → MatMul(·, v), each value read once. Otherwise why not, in words for a user.
 */
export function matchAttention(graph: Graph, softmax: Node): AttentionMatch {
  let probs = softmax.outputs[0];
  let reader = onlyReader(probs, graph);
  let cast: Node | undefined;
  if (reader?.opType === 'Cast' && reader.domain === '') {
    cast = reader;
    probs = cast.outputs[0];
    reader = onlyReader(probs, graph);
  }
  if (!reader) return fail(`its probabilities are read by ${readersText(probs, graph)}, not one MatMul with v`);
  const output = reader;
  if (output.opType !== 'MatMul' || output.domain !== '' || output.inputs[0] !== probs)
    return fail(`its probabilities are read by ${output.opType}, not MatMul(probabilities, v)`);
  if (graph.outputs.includes(output.outputs[0])) return fail('its output is a graph output');

  let scoresValue = softmax.inputs[0];
  if (!scoresValue) return fail('the Softmax has no input');
  let zeroBias: Node | undefined;
  const add = producedBy(scoresValue, 'Add');
  if (add) {
    if (onlyReader(add.outputs[0], graph) !== softmax) return fail(`its scores are read by ${readersText(add.outputs[0], graph)}`);
    // Either side may be the zeros; the other must be the (scaled) scores.
    const problems = add.inputs.map((term, i) => {
      const other = add.inputs[1 - i];
      const below = other ? scoresBelow(other, graph, add) : undefined;
      if (!term || !below) return undefined;
      return 'reason' in below ? below.reason : (zeroTermProblem(term, below.scores) ?? '');
    });
    const zero = problems.indexOf('');
    if (zero < 0) {
      const reason = problems.find((p) => p !== undefined);
      return fail(
        reason ??
          `its scores are an Add of ${add.inputs.map((x) => x?.producer?.opType ?? 'an input').join(' and ')}, neither MatMul(q, kᵀ)`,
      );
    }
    zeroBias = add;
    scoresValue = add.inputs[1 - zero]!;
  }
  const below = scoresBelow(scoresValue, graph, zeroBias ?? softmax);
  if (!below)
    return fail(
      `its scores come from ${scoresValue.producer?.opType ?? 'a graph input'}, not MatMul(q, kᵀ) (optionally scaled by a constant)`,
    );
  if ('reason' in below) return fail(below.reason);
  // The last axis: -1, or a non-negative axis that is the last of a known rank.
  const softmaxAxis = softmax.attrInt('axis', -1);
  const rank = rankOf(below.scores.outputs[0]);
  if (softmaxAxis !== -1 && softmaxAxis !== (rank ?? 0) - 1) return fail(`its Softmax is over axis ${softmaxAxis}, not the last`);
  return { match: { scores: below.scores, scale: below.scale, zeroBias, softmax, cast, output } };
}

/** MatMul(q, kᵀ), with a scale between it and `reader` when there is one; undefined when `v` is neither. */
function scoresBelow(v: Value, graph: Graph, reader: Node): { scores: Node; scale: Node | undefined } | { reason: string } | undefined {
  let scale: Node | undefined;
  let scoresValue = v;
  const p = v.producer;
  if (p && (p.opType === 'Mul' || p.opType === 'Div') && p.domain === '') {
    const operand = p.inputs.findIndex((x) => !isScalarConstant(x));
    if (operand < 0 || !isScalarConstant(p.inputs[1 - operand]) || (p.opType === 'Div' && operand !== 0))
      return { reason: `its scores are scaled by ${p.opType} of a value that is not a scalar constant` };
    if (onlyReader(p.outputs[0], graph) !== reader) return { reason: `its scaled scores are read by ${readersText(p.outputs[0], graph)}` };
    scale = p;
    scoresValue = p.inputs[operand]!;
  }
  const scores = producedBy(scoresValue, 'MatMul');
  if (!scores) return undefined;
  if (onlyReader(scoresValue, graph) !== (scale ?? reader)) return { reason: `its scores are read by ${readersText(scoresValue, graph)}` };
  return { scores, scale };
}

/**
 * Removes a matched chain once its uses are rewired (its output read by nobody), with what only
 * baddbmm's zeros read (the Mul, the ConstantOfShape and their shape arithmetic).
 */
export function removeAttentionCore(graph: Graph, c: AttentionCore): void {
  const zeros = c.zeroBias?.inputs.filter((v): v is Value => !!v && v !== c.scale?.outputs[0] && v !== c.scores.outputs[0]) ?? [];
  const chain = [c.output, c.cast, c.softmax, c.zeroBias, c.scale, c.scores].filter((n): n is Node => !!n);
  for (const n of chain) graph.removeNode(n);
  const stack = zeros.map((v) => v.producer).filter((n): n is Node => !!n);
  while (stack.length) {
    const n = stack.pop()!;
    if (n.outputs[0]?.producer !== n || n.outputs.some((o) => o.uses.length > 0 || graph.outputs.includes(o))) continue;
    const inputs = n.inputs.map((v) => v?.producer).filter((p): p is Node => !!p);
    graph.removeNode(n);
    stack.push(...inputs);
  }
}
