/**
 * Copies of graph parts. The merged two-path graph runs part of the UNet twice (once without
 * LoRA, on other conditioning): the copy gets fresh node and value names but reads the very
 * same initializer values, so the weights are stored once.
 */
import { Graph, Model, Node, Value } from './ir';

/** Every node that `outputs` depend on, in graph order. */
export function nodesFeeding(g: Graph, outputs: Value[]): Node[] {
  const needed = new Set<Node>();
  const stack = outputs.map((v) => v.producer).filter((n): n is Node => !!n);
  while (stack.length) {
    const n = stack.pop()!;
    if (needed.has(n)) continue;
    needed.add(n);
    for (const v of n.inputs) if (v?.producer && !needed.has(v.producer)) stack.push(v.producer);
  }
  return g.nodes.filter((n) => needed.has(n));
}

/**
 * Copies `nodes` (in graph order) into the same graph. Inputs found in `substitute` are read
 * from the substitute; inputs produced by copied nodes are read from the copies; anything else
 * (initializers, graph inputs) is shared. The copies go at the end, or before `before` (a node's
 * index steers onnxruntime's execution order). Returns the old-to-new value map.
 */
export function copyNodes(
  g: Graph,
  nodes: readonly Node[],
  prefix: string,
  substitute: Map<Value, Value> = new Map(),
  before?: Node,
): Map<Value, Value> {
  const map = new Map(substitute);
  for (const n of nodes) {
    const copy = g.addNode(
      {
        opType: n.opType,
        domain: n.domain,
        // Scoped names (`/down_blocks.0/...`) join as they are; a dynamo export's `node_<fx>` gets a `/`.
        name: n.name.startsWith('/') ? `${prefix}${n.name}` : `${prefix}/${n.name}`,
        attributes: n.attributes,
        inputs: n.inputs.map((v) => (v ? (map.get(v) ?? v) : null)),
        outputs: n.outputs.map((o) => g.freshName(`${prefix}${o.name}`)),
      },
      before,
    );
    n.outputs.forEach((o, i) => {
      copy.outputs[i].type = o.type;
      map.set(o, copy.outputs[i]);
    });
  }
  return map;
}

/** A structural copy of a model (nodes and values are new; tensors and their bytes are shared). */
export function cloneModel(m: Model): Model {
  const g = m.graph;
  const c = new Graph();
  c.name = g.name;
  c.docString = g.docString;
  c.metadataProps = g.metadataProps;
  c.sparseInitializers = g.sparseInitializers;
  c.quantizationAnnotation = g.quantizationAnnotation;
  const map = new Map<Value, Value>();
  const take = (v: Value): Value => {
    const nv = c.createValue(v.name, v.type);
    nv.initializer = v.initializer;
    nv.docString = v.docString;
    nv.metadataProps = v.metadataProps;
    nv.hasValueInfo = v.hasValueInfo;
    map.set(v, nv);
    return nv;
  };
  c.inputs = g.inputs.map(take);
  for (const v of g.initializers()) if (!map.has(v)) take(v);
  for (const n of g.nodes) {
    const copy = c.addNode({
      opType: n.opType,
      domain: n.domain,
      name: n.name,
      attributes: n.attributes,
      inputs: n.inputs.map((v) => (v ? (map.get(v) ?? take(v)) : null)),
      outputs: n.outputs.map((o) => o.name),
    });
    copy.docString = n.docString;
    copy.overload = n.overload;
    copy.metadataProps = n.metadataProps;
    copy.deviceConfigurations = n.deviceConfigurations;
    n.outputs.forEach((o, i) => {
      const nv = copy.outputs[i];
      nv.type = o.type;
      nv.docString = o.docString;
      nv.metadataProps = o.metadataProps;
      nv.hasValueInfo = o.hasValueInfo;
      map.set(o, nv);
    });
  }
  c.outputs = g.outputs.map((v) => map.get(v) ?? take(v));
  const out = new Model(c);
  Object.assign(out, { ...m, graph: c, opsetImports: m.opsetImports.map((o) => ({ ...o })), metadataProps: [...m.metadataProps] });
  return out;
}
