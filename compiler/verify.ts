/**
 * Structural checks run after every pass in tests: a pass that leaves a dangling reference or
 * a cycle is caught where it happened, not when onnxruntime refuses the model later.
 */
import { Graph, Node, Value } from './ir';

/**
 * Whether `v`'s use list names input `index` of `node`: a scan of a short list; a long one (a shared
 * constant read by thousands of nodes) is indexed once per check, or the check is quadratic.
 */
function useListHas(v: Value, node: Node, index: number, indexed: Map<Value, Map<Node, Set<number>>>): boolean {
  if (v.uses.length <= 16) return v.uses.some((u) => u.node === node && u.index === index);
  let byNode = indexed.get(v);
  if (!byNode) {
    byNode = new Map();
    for (const u of v.uses) {
      let slots = byNode.get(u.node);
      if (!slots) byNode.set(u.node, (slots = new Set()));
      slots.add(u.index);
    }
    indexed.set(v, byNode);
  }
  return byNode.get(node)?.has(index) ?? false;
}

export function verifyGraph(g: Graph): string[] {
  const problems: string[] = [];
  const indexed = new Map<Value, Map<Node, Set<number>>>();
  const defined = new Set<Value>([...g.inputs, ...g.initializers()]);
  const seenNodes = new Set<string>();
  for (const n of g.nodes) {
    n.inputs.forEach((v, i) => {
      if (!v) return;
      if (g.tryValue(v.name) !== v) problems.push(`node ${n.name} input ${i} (${v.name}) is not a value of this graph`);
      else if (!defined.has(v)) {
        problems.push(
          v.producer
            ? `node ${n.name} reads ${v.name} before its producer ${v.producer.name} (order or cycle)`
            : `node ${n.name} reads ${v.name}, which nothing defines`,
        );
      }
      if (!useListHas(v, n, i, indexed)) problems.push(`use list of ${v.name} misses node ${n.name} input ${i}`);
    });
    for (const out of n.outputs) {
      if (out.producer !== n) problems.push(`output ${out.name} of ${n.name} names another producer`);
      if (defined.has(out)) problems.push(`value ${out.name} is defined more than once`);
      defined.add(out);
    }
    if (n.name && seenNodes.has(n.name)) problems.push(`node name ${n.name} is used twice`);
    seenNodes.add(n.name);
  }
  for (const o of g.outputs) if (!defined.has(o)) problems.push(`graph output ${o.name} is not defined`);
  for (const v of g.values.values()) {
    for (const u of v.uses) {
      if (u.node.inputs[u.index] !== v)
        problems.push(`use list of ${v.name} names ${u.node.name} input ${u.index}, which reads something else`);
    }
  }
  return problems;
}

/** Throws with every problem listed; `context` says which pass produced the graph. */
export function assertValidGraph(g: Graph, context: string): void {
  const problems = verifyGraph(g);
  if (problems.length) {
    const shown = problems.slice(0, 20).join('\n  ');
    throw new Error(`invalid graph after ${context}:\n  ${shown}${problems.length > 20 ? `\n  ... and ${problems.length - 20} more` : ''}`);
  }
}
