/**
 * Reverse-mode differentiation over an ONNX graph, emitting plain ONNX ops.
 *
 * Only nodes on a path from a `wrt` value to the loss get a backward: everything else (frozen
 * weights, the time embedding when only LoRA tensors train, shape arithmetic) gets none. The
 * walk visits those nodes in reverse topological order, sums the gradient contributions of
 * each output (Add), and asks the node's rule in `GRADIENT_RULES` for its inputs' gradients,
 * telling it which inputs need one. An op on a gradient path without a rule is an error that
 * names the op and the node. Gradient nodes are appended after the forward graph.
 */
import { GraphBuilder } from '../../compiler/builder';
import { HollowcError } from '../../compiler/errors';
import { Graph, Model, Node, Value } from '../../compiler/ir';
import { Pass } from '../../compiler/pass';
import { ArtifactState, trainableValues } from '../lib/artifact-state';
import { isFloatType, mergeEqualConstants } from '../../compiler/constant-eval';
import { GRADIENT_RULES, GradContext, NO_GRADIENT_OPS } from '../lib/gradient-rules';
import { OpEmitter, staticShapeOf } from '../../compiler/op-emitter';
import { constantInts, inferShapes, staticShape } from '../../compiler/shape-inference';

export interface DifferentiateOptions {
  /** Gradient of the loss itself (default: ones shaped like the loss). */
  seed?: Value;
  /** A `wrt` value the loss does not depend on gets zeros (default) or an error. */
  unreachable?: 'zeros' | 'error';
}

export interface DifferentiateResult {
  /** The gradient value of each `wrt`, typed like it. */
  gradients: Map<Value, Value>;
  /** d loss / d loss: every node that carries a gradient depends on it. */
  seed: Value;
  /** Forward nodes that got a backward, and nodes added. */
  nodesDifferentiated: number;
  nodesAdded: number;
}

function valuesFrom(wrt: readonly Value[]): Set<Value> {
  const seen = new Set<Value>(wrt);
  const stack = [...wrt];
  while (stack.length) {
    const v = stack.pop()!;
    for (const u of v.uses) {
      for (const out of u.node.outputs) {
        if (!seen.has(out)) {
          seen.add(out);
          stack.push(out);
        }
      }
    }
  }
  return seen;
}

function valuesReaching(loss: Value): Set<Value> {
  const seen = new Set<Value>([loss]);
  const stack = [loss];
  while (stack.length) {
    const v = stack.pop()!;
    for (const input of v.producer?.inputs ?? []) {
      if (input && !seen.has(input)) {
        seen.add(input);
        stack.push(input);
      }
    }
  }
  return seen;
}

/** Sums gradient contributions lazily, once per value. */
class Accumulator {
  private readonly parts = new Map<Value, Value[]>();
  private readonly totals = new Map<Value, Value>();

  constructor(private readonly e: OpEmitter) {}

  add(v: Value, g: Value): void {
    if (this.totals.has(v)) throw new Error(`internal: gradient of ${v.name} read before all contributions arrived`);
    const list = this.parts.get(v) ?? [];
    list.push(g);
    this.parts.set(v, list);
  }

  total(v: Value): Value | null {
    const done = this.totals.get(v);
    if (done) return done;
    const list = this.parts.get(v);
    if (!list) return null;
    let sum = list[0];
    for (let i = 1; i < list.length; i++) sum = this.e.op('Add', [sum, list[i]]);
    if (!sum.type && v.type) sum.type = { ...v.type, shape: v.type.shape ? [...v.type.shape] : undefined };
    this.totals.set(v, sum);
    return sum;
  }
}

/** Values on a path from a `wrt` value to the loss. */
type Active = (v: Value | null) => v is Value;

/**
 * The nodes on a gradient path, in topological order (shapes inferred where the path lacks
 * static ones), and which values carry a gradient.
 */
function gradientPath(model: Model, loss: Value, wrt: readonly Value[]): { nodes: Node[]; active: Active } {
  const g = model.graph;
  const fromWrt = valuesFrom(wrt);
  const toLoss = valuesReaching(loss);
  const active = (v: Value | null): v is Value => !!v && fromWrt.has(v) && toLoss.has(v);
  const path = () => g.nodes.filter((n) => n.outputs.some(active));
  if (path().some((n) => [...n.inputs, ...n.outputs].some((v) => v && !staticShape(v)))) inferShapes(model);
  else g.topologicalSort();
  return { nodes: path(), active };
}

/** Every op on the path has a rule (or needs none); the first that has not is named, with the `wrt` it is reached from. */
function checkGradientRules(nodes: readonly Node[], loss: Value, wrt: readonly Value[], active: Active): void {
  for (const n of nodes) {
    const known = (n.domain === '' || n.domain === 'ai.onnx') && (GRADIENT_RULES[n.opType] || NO_GRADIENT_OPS.has(n.opType));
    if (!known) {
      const from = wrt.find((w) => valuesFrom([w]).has(n.outputs.find(active)!));
      throw new HollowcError(
        `differentiate: no gradient rule for op ${n.domain ? `${n.domain}.` : ''}${n.opType} (node ${JSON.stringify(n.name)}, on the path from ${from?.name ?? '?'} to ${loss.name})`,
      );
    }
  }
}

/** One node's backward: its rule's gradients for the inputs that need one, checked against their shapes and added to `acc`. */
function emitBackward(g: Graph, opset: number, node: Node, acc: Accumulator, active: Active): void {
  if (NO_GRADIENT_OPS.has(node.opType)) return;
  const outputGrads = node.outputs.map((o) => (active(o) ? acc.total(o) : null));
  if (outputGrads.every((x) => x === null)) return;
  const needs = node.inputs.map((v) => active(v) && isFloatType(v.type!.elemType));
  if (!needs.some(Boolean)) return;
  const fail = (message: string): never => {
    throw new HollowcError(`differentiate: ${node.opType} node ${JSON.stringify(node.name)}: ${message}`);
  };
  const ctx: GradContext = {
    node,
    opset,
    e: new OpEmitter(new GraphBuilder(g, `${node.name}/grad`), opset),
    I: (i) => node.input(i),
    O: (i) => node.outputs[i],
    GO: (i) => outputGrads[i] ?? null,
    get dY(): Value {
      return outputGrads[0] ?? fail('output 0 has no gradient');
    },
    needs: (i) => needs[i] ?? false,
    shape: (v) => staticShapeOf(v),
    ints: (i) => constantInts(node, i) ?? fail(`input ${i} is not a compile-time constant`),
    fail,
  };
  let grads: (Value | null)[];
  try {
    grads = GRADIENT_RULES[node.opType](ctx);
  } catch (e) {
    if (e instanceof HollowcError) throw e;
    return fail((e as Error).message);
  }
  node.inputs.forEach((v, i) => {
    const gi = grads[i];
    if (!v || !needs[i] || !gi) return;
    const want = staticShapeOf(v);
    if (!gi.type) gi.type = { elemType: v.type!.elemType, shape: [...want] };
    const got = gi.type.shape;
    if (!got || got.length !== want.length || got.some((d, k) => d !== want[k]))
      fail(`the gradient of input ${i} has shape [${got?.join(',')}], expected [${want.join(',')}]`);
    acc.add(v, gi);
  });
}

export function differentiate(model: Model, loss: Value, wrt: readonly Value[], options: DifferentiateOptions = {}): DifferentiateResult {
  const g: Graph = model.graph;
  const opset = model.opsetVersion('');
  const before = g.nodes.length;
  const forwardNodes = new Set(g.nodes);
  const added = () => g.nodes.filter((n) => !forwardNodes.has(n));
  const { nodes, active } = gradientPath(model, loss, wrt);
  checkGradientRules(nodes, loss, wrt, active);

  const root = new OpEmitter(new GraphBuilder(g), opset);
  const acc = new Accumulator(root.within('grad_accumulate'));
  const seed = options.seed ?? root.within('grad_seed').scalar(1, loss.type!.elemType, staticShapeOf(loss));
  acc.add(loss, seed);
  for (const node of [...nodes].reverse()) emitBackward(g, opset, node, acc, active);

  const gradients = new Map<Value, Value>();
  for (const w of wrt) {
    let gw = acc.total(w);
    if (!gw) {
      if (options.unreachable === 'error') throw new HollowcError(`differentiate: ${loss.name} does not depend on ${w.name}`);
      gw = root.within('grad_zeros').zeros(staticShapeOf(w), w.type!.elemType);
    }
    gradients.set(w, gw);
  }
  const results = new Set(gradients.values());
  removeUnreadNodes(g, added(), results);
  // The seed stays its own constant: later passes find the gradient-carrying nodes from it.
  mergeEqualConstants(g, new Set([...results, seed]));
  mergeDuplicateNodes(g, added(), results);
  return { gradients, seed, nodesDifferentiated: nodes.length, nodesAdded: g.nodes.length - before };
}

/** Common subexpressions among `added` (rules reshape the same gradient the same way twice). */
function mergeDuplicateNodes(g: Graph, added: readonly Node[], keep: ReadonlySet<Value>): void {
  const seen = new Map<string, Node>();
  for (const n of added) {
    if (n.opType === 'Constant') continue;
    const key = `${n.opType}(${n.inputs.map((v) => v?.name ?? '').join(',')})${JSON.stringify(n.attributes)}`;
    const first = seen.get(key);
    if (!first) {
      seen.set(key, n);
      continue;
    }
    if (n.outputs.some((o) => keep.has(o) || g.outputs.includes(o))) continue;
    n.outputs.forEach((o, i) => g.replaceAllUsesWith(o, first.outputs[i]));
    g.removeNode(n);
  }
}

/** Drops nodes among `added` that nothing reads (peepholes leave some behind). */
function removeUnreadNodes(g: Graph, added: readonly Node[], keep: ReadonlySet<Value>): void {
  for (const n of [...added].reverse()) {
    if (n.outputs.every((o) => o.uses.length === 0 && !keep.has(o) && !g.outputs.includes(o))) g.removeNode(n);
  }
}

/** Gradients of the loss w.r.t. the LoRA parameters and the base weights that train: the rest of the base stays frozen. */
export const differentiatePass: Pass<ArtifactState> = {
  name: 'differentiate',
  requires: ['loss', 'loraParams', 'baseParams'],
  ensures: ['gradients', 'gradientSeed'],
  run(model, state) {
    const r = differentiate(model, state.loss!, trainableValues(model, state));
    state.gradients = r.gradients;
    state.gradientSeed = r.seed;
    return { changed: true, summary: `${r.nodesDifferentiated} nodes differentiated, ${r.nodesAdded} added` };
  },
};
