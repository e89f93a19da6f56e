/**
 * The graph IR every pass works on.
 *
 * Values know their producer and their uses (use-def chains), so a rewrite can ask "who reads
 * this?" without scanning the graph. Uses change only through `Graph` methods (`setInput`,
 * `replaceAllUsesWith`, `removeNode`), which keeps the chains consistent. Weights are `Tensor`s
 * whose bytes stay where they were (an external-data file range, or the decoded model buffer):
 * nothing here reads them.
 */
import { DataTypeCode, elementSize } from './dtype';

/** A dimension: a fixed size, a symbolic name (`batch`), or unknown. */
export type Dim = number | string | null;

export interface TensorType {
  elemType: DataTypeCode;
  /** undefined = rank unknown. */
  shape?: Dim[];
}

export interface StringPair {
  key: string;
  value: string;
}

/**
 * Where a tensor's bytes live. External ranges are read or copied on demand, never eagerly.
 * `computed` bytes (a weight quantized from an external range) are produced chunk by chunk when
 * the tensor is written; `key` names them, so artifacts sharing the tensor get one copy.
 */
export type TensorData =
  | { kind: 'inline'; bytes: Uint8Array }
  | { kind: 'external'; file: string; offset: number; length: number }
  | { kind: 'strings'; strings: Uint8Array[] }
  | { kind: 'computed'; key: string; length: number; produce(write: (chunk: Uint8Array) => void): void };

export interface Tensor {
  name: string;
  dataType: DataTypeCode;
  dims: number[];
  data: TensorData;
  docString?: string;
  metadataProps?: StringPair[];
  /**
   * The same values as float16 bytes, when `data` holds them widened to float32 (a weight of a
   * float16 export, which the passes see as float32): the artifacts store these instead.
   */
  float16Source?: TensorData;
}

export function tensorElementCount(t: { dims: number[] }): number {
  return t.dims.reduce((a, b) => a * b, 1);
}

export function tensorByteLength(t: Tensor): number {
  if (t.data.kind === 'external') return t.data.length;
  if (t.data.kind === 'inline') return t.data.bytes.byteLength;
  if (t.data.kind === 'computed') return t.data.length;
  return t.data.strings.reduce((a, s) => a + s.byteLength, 0);
}

export function inlineTensor(name: string, dataType: DataTypeCode, dims: number[], bytes: Uint8Array): Tensor {
  const size = elementSize(dataType);
  if (size !== undefined && size * tensorElementCount({ dims }) !== bytes.byteLength) {
    throw new Error(`tensor ${name}: ${bytes.byteLength} bytes do not fit dims [${dims}]`);
  }
  return { name, dataType, dims, data: { kind: 'inline', bytes } };
}

/** Attribute values, by ONNX AttributeType. Graph-valued attributes are kept opaque. */
export type Attribute =
  | { name: string; type: 'float'; value: number }
  | { name: string; type: 'int'; value: number }
  | { name: string; type: 'string'; value: string }
  | { name: string; type: 'tensor'; value: Tensor }
  | { name: string; type: 'floats'; value: number[] }
  | { name: string; type: 'ints'; value: number[] }
  | { name: string; type: 'strings'; value: string[] }
  | { name: string; type: 'tensors'; value: Tensor[] }
  | { name: string; type: 'opaque'; value: unknown };

export interface Use {
  node: Node;
  index: number;
}

export class Value {
  /** @internal maintained by Graph */
  _uses: Use[] = [];
  /** @internal maintained by Graph */
  _producer: Node | null = null;
  /** Set when the value is a graph initializer. */
  initializer: Tensor | undefined;
  /** Doc string and metadata of a value_info entry, kept for round trips. */
  docString?: string;
  metadataProps?: StringPair[];
  /** True when the source model listed this value in value_info. */
  hasValueInfo = false;

  constructor(
    readonly name: string,
    public type: TensorType | undefined,
  ) {}

  get producer(): Node | null {
    return this._producer;
  }

  get uses(): readonly Use[] {
    return this._uses;
  }

  get isInitializer(): boolean {
    return this.initializer !== undefined;
  }
}

export class Node {
  /** @internal maintained by Graph */
  _inputs: (Value | null)[] = [];
  /** @internal maintained by Graph */
  _outputs: Value[] = [];
  docString?: string;
  overload?: string;
  metadataProps?: StringPair[];
  /** Passed through untouched (device sharding annotations). */
  deviceConfigurations?: unknown[];

  constructor(
    public name: string,
    readonly opType: string,
    readonly domain: string,
    public attributes: Attribute[],
  ) {}

  get inputs(): readonly (Value | null)[] {
    return this._inputs;
  }

  get outputs(): readonly Value[] {
    return this._outputs;
  }

  input(i: number): Value {
    const v = this._inputs[i];
    if (!v) throw new Error(`node ${this.name} (${this.opType}) has no input ${i}`);
    return v;
  }

  attr(name: string): Attribute | undefined {
    return this.attributes.find((a) => a.name === name);
  }

  attrInt(name: string, fallback?: number): number {
    const a = this.attr(name);
    if (a && a.type === 'int') return a.value;
    if (fallback !== undefined) return fallback;
    throw new Error(`node ${this.name} (${this.opType}) lacks int attribute ${name}`);
  }

  attrInts(name: string, fallback?: number[]): number[] {
    const a = this.attr(name);
    if (a && a.type === 'ints') return a.value;
    if (fallback !== undefined) return fallback;
    throw new Error(`node ${this.name} (${this.opType}) lacks ints attribute ${name}`);
  }

  attrFloat(name: string, fallback?: number): number {
    const a = this.attr(name);
    if (a && a.type === 'float') return a.value;
    if (fallback !== undefined) return fallback;
    throw new Error(`node ${this.name} (${this.opType}) lacks float attribute ${name}`);
  }

  attrString(name: string, fallback?: string): string {
    const a = this.attr(name);
    if (a && a.type === 'string') return a.value;
    if (fallback !== undefined) return fallback;
    throw new Error(`node ${this.name} (${this.opType}) lacks string attribute ${name}`);
  }
}

export interface NodeSpec {
  opType: string;
  inputs: (Value | null)[];
  /** Output value names; or a count, to get fresh names derived from the node name. */
  outputs: string[] | number;
  name?: string;
  domain?: string;
  attributes?: Attribute[];
}

export class Graph {
  name = '';
  docString?: string;
  metadataProps?: StringPair[];
  inputs: Value[] = [];
  outputs: Value[] = [];
  /** Passed through untouched. */
  sparseInitializers: unknown[] = [];
  quantizationAnnotation: unknown[] = [];

  private _nodes: Node[] = [];
  /**
   * Nodes removed since the list was last rebuilt: removeNode only marks them, and the list is
   * filtered on its next read, so a pass that removes thousands of nodes does not copy the list
   * once per node. The list is replaced, never changed in place, when it is rebuilt (a caller
   * iterating the list it read keeps seeing that list).
   */
  private readonly removed = new Set<Node>();
  private readonly _values = new Map<string, Value>();
  private readonly _nodeNames = new Set<string>();
  private nameCounter = 0;

  get nodes(): readonly Node[] {
    return this.liveNodes();
  }

  private liveNodes(): Node[] {
    if (this.removed.size) {
      this._nodes = this._nodes.filter((n) => !this.removed.has(n));
      this.removed.clear();
    }
    return this._nodes;
  }

  get values(): ReadonlyMap<string, Value> {
    return this._values;
  }

  /** Initializers in insertion order. */
  initializers(): Value[] {
    return [...this._values.values()].filter((v) => v.initializer !== undefined);
  }

  value(name: string): Value {
    const v = this._values.get(name);
    if (!v) throw new Error(`graph has no value named ${JSON.stringify(name)}`);
    return v;
  }

  tryValue(name: string): Value | undefined {
    return this._values.get(name);
  }

  /** A value name not yet used in this graph, based on `base`. */
  freshName(base: string): string {
    if (!this._values.has(base)) return base;
    for (;;) {
      const candidate = `${base}_${++this.nameCounter}`;
      if (!this._values.has(candidate)) return candidate;
    }
  }

  private freshNodeName(base: string): string {
    if (!this._nodeNames.has(base)) return base;
    for (;;) {
      const candidate = `${base}_${++this.nameCounter}`;
      if (!this._nodeNames.has(candidate)) return candidate;
    }
  }

  /** Declares a value (graph input, or a name a node will produce). Names are unique. */
  createValue(name: string, type?: TensorType): Value {
    if (this._values.has(name)) throw new Error(`value ${JSON.stringify(name)} already exists`);
    const v = new Value(name, type);
    this._values.set(name, v);
    return v;
  }

  addInput(name: string, type: TensorType): Value {
    const v = this.createValue(name, type);
    this.inputs.push(v);
    return v;
  }

  addInitializer(tensor: Tensor): Value {
    const v = this.createValue(tensor.name, { elemType: tensor.dataType, shape: [...tensor.dims] });
    v.initializer = tensor;
    return v;
  }

  /** Gives `v` another name (free in this graph), e.g. to hand a graph output's name to a new producer. */
  renameValue(v: Value, name: string): void {
    if (this._values.get(v.name) !== v) throw new Error(`value ${v.name} is not in this graph`);
    if (this._values.has(name)) throw new Error(`value ${JSON.stringify(name)} already exists`);
    this._values.delete(v.name);
    (v as { name: string }).name = name;
    this._values.set(name, v);
  }

  /** Removes a value that nothing produces or uses (an unused initializer or input). */
  deleteValue(v: Value): void {
    if (v._uses.length > 0 || v._producer) throw new Error(`value ${v.name} is still in use`);
    this._values.delete(v.name);
    this.inputs = this.inputs.filter((x) => x !== v);
    this.outputs = this.outputs.filter((x) => x !== v);
  }

  /**
   * Creates a node and appends it (or inserts it before `before`). Output values are created
   * here: a node is the only producer of its outputs.
   */
  addNode(spec: NodeSpec, before?: Node): Node {
    const name = this.freshNodeName(spec.name ?? `/${spec.opType}`);
    const node = new Node(name, spec.opType, spec.domain ?? '', spec.attributes ?? []);
    const outNames =
      typeof spec.outputs === 'number'
        ? Array.from({ length: spec.outputs }, (_, i) => this.freshName(`${name}_output_${i}`))
        : spec.outputs;
    node._outputs = outNames.map((n) => {
      const existing = this._values.get(n);
      if (existing) {
        if (existing._producer || existing.initializer || this.inputs.includes(existing)) {
          throw new Error(`value ${JSON.stringify(n)} already has a definition; node ${name} cannot produce it`);
        }
        existing._producer = node;
        return existing;
      }
      const v = this.createValue(n);
      v._producer = node;
      return v;
    });
    spec.inputs.forEach((v, i) => {
      node._inputs.push(v);
      if (v) v._uses.push({ node, index: i });
    });
    this._nodeNames.add(name);
    const nodes = this.liveNodes();
    if (before) {
      const at = nodes.indexOf(before);
      if (at < 0) throw new Error(`node ${before.name} is not in the graph`);
      nodes.splice(at, 0, node);
    } else {
      nodes.push(node);
    }
    return node;
  }

  setInput(node: Node, index: number, value: Value | null): void {
    const old = node._inputs[index];
    if (old) {
      const k = old._uses.findIndex((u) => u.node === node && u.index === index);
      if (k >= 0) old._uses.splice(k, 1);
    }
    while (node._inputs.length <= index) node._inputs.push(null);
    node._inputs[index] = value;
    if (value) value._uses.push({ node, index });
  }

  /** Every reader of `from` (nodes and graph outputs) reads `to` instead. */
  replaceAllUsesWith(from: Value, to: Value): void {
    for (const u of [...from._uses]) this.setInput(u.node, u.index, to);
    this.outputs = this.outputs.map((o) => (o === from ? to : o));
  }

  /** Removes a node whose outputs nobody reads; its output values disappear with it. */
  removeNode(node: Node): void {
    for (const out of node._outputs) {
      if (out._uses.length > 0) throw new Error(`cannot remove ${node.name}: ${out.name} is still used by ${out._uses[0].node.name}`);
      if (this.outputs.includes(out)) throw new Error(`cannot remove ${node.name}: ${out.name} is a graph output`);
    }
    node._inputs.forEach((_, i) => this.setInput(node, i, null));
    for (const out of node._outputs) {
      out._producer = null;
      this._values.delete(out.name);
    }
    this.removed.add(node);
    this._nodeNames.delete(node.name);
  }

  /**
   * Puts the nodes in the order given (a permutation of the graph's nodes), then restores a
   * topological order, keeping the given one where it can.
   */
  reorderNodes(order: readonly Node[]): void {
    const set = new Set(order);
    const nodes = this.liveNodes();
    if (set.size !== nodes.length || nodes.some((n) => !set.has(n)))
      throw new Error("reorderNodes: not a permutation of the graph's nodes");
    this._nodes = [...order];
    this.topologicalSort();
  }

  /** Orders nodes so each comes after its producers; keeps the existing order where it can. */
  topologicalSort(): void {
    const nodes = this.liveNodes();
    const at = new Map<Node, number>();
    nodes.forEach((n, i) => at.set(n, i));
    // -1 for a node outside the list (a producer removed from the graph)
    const position = (n: Node) => at.get(n) ?? -1;
    // Per node (by position): producers not yet placed, and the last node that counted it (so a
    // node counts each producer once, and each consumer hears once, however many values join them).
    const pending = new Int32Array(nodes.length);
    const countedBy = new Int32Array(nodes.length).fill(-1);
    // The ready nodes' positions in a min-heap: the earliest ready node always goes next.
    const ready = new PositionHeap(nodes.length);
    nodes.forEach((n, i) => {
      let outside: Set<Node> | undefined;
      for (const v of n._inputs) {
        const p = v?._producer;
        if (!p) continue;
        const j = position(p);
        if (j < 0) (outside ??= new Set()).add(p); // never placed: reported as a cycle below
        else if (countedBy[j] !== i) {
          countedBy[j] = i;
          pending[i]++;
        }
      }
      pending[i] += outside?.size ?? 0;
      if (pending[i] === 0) ready.push(i);
    });
    countedBy.fill(-1);
    const order: Node[] = [];
    while (ready.size > 0) {
      const i = ready.pop();
      const n = nodes[i];
      order.push(n);
      for (const o of n._outputs) {
        for (const u of o._uses) {
          const k = position(u.node);
          if (k < 0 || countedBy[k] === i) continue;
          countedBy[k] = i;
          if (--pending[k] === 0) ready.push(k);
        }
      }
    }
    if (order.length !== nodes.length) {
      const stuck = nodes.find((_, i) => pending[i] > 0)!;
      throw new Error(`graph has a cycle through node ${stuck.name}`);
    }
    this._nodes = order;
  }

  /**
   * Removes nodes that no graph output depends on, then initializers nobody reads. Graph inputs
   * stay (they are the model's interface). Returns how many nodes went.
   */
  eliminateDeadNodes(): number {
    const live = new Set<Node>();
    const stack = this.outputs.map((o) => o._producer).filter((n): n is Node => !!n);
    while (stack.length) {
      const n = stack.pop()!;
      if (live.has(n)) continue;
      live.add(n);
      for (const v of n._inputs) if (v?._producer && !live.has(v._producer)) stack.push(v._producer);
    }
    const dead = this.liveNodes().filter((n) => !live.has(n));
    for (const n of dead) {
      n._inputs.forEach((_, i) => this.setInput(n, i, null));
    }
    for (const n of dead) {
      for (const out of n._outputs) {
        out._producer = null;
        this._values.delete(out.name);
      }
      this._nodeNames.delete(n.name);
    }
    this._nodes = this._nodes.filter((n) => live.has(n));
    for (const v of [...this._values.values()]) {
      if (v.initializer && v._uses.length === 0 && !this.outputs.includes(v)) this._values.delete(v.name);
    }
    return dead.length;
  }

  /** Registers a node name read from a file (names need not be unique in ONNX, but we keep them). */
  /** @internal */
  _adoptNode(node: Node): void {
    this.liveNodes().push(node);
    this._nodeNames.add(node.name);
  }
}

/** A binary min-heap of node positions (topologicalSort's ready list). */
class PositionHeap {
  private readonly heap: Int32Array;
  size = 0;

  constructor(capacity: number) {
    this.heap = new Int32Array(capacity);
  }

  push(at: number): void {
    const h = this.heap;
    let i = this.size++;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (h[parent] <= at) break;
      h[i] = h[parent];
      i = parent;
    }
    h[i] = at;
  }

  pop(): number {
    const h = this.heap;
    const top = h[0];
    const last = h[--this.size];
    let i = 0;
    for (;;) {
      let child = 2 * i + 1;
      if (child >= this.size) break;
      if (child + 1 < this.size && h[child + 1] < h[child]) child++;
      if (h[child] >= last) break;
      h[i] = h[child];
      i = child;
    }
    h[i] = last;
    return top;
  }
}

export interface OpsetImport {
  domain: string;
  version: number;
}

export class Model {
  irVersion = 10;
  opsetImports: OpsetImport[] = [{ domain: '', version: 17 }];
  producerName = 'hollowc';
  producerVersion = '';
  domain = '';
  modelVersion = 0;
  docString = '';
  metadataProps: StringPair[] = [];
  /** Passed through untouched. */
  functions: unknown[] = [];
  trainingInfo: unknown[] = [];
  configuration: unknown[] = [];

  constructor(public graph: Graph) {}

  opsetVersion(domain = ''): number {
    const found = this.opsetImports.find((o) => o.domain === domain || (domain === '' && o.domain === 'ai.onnx'));
    if (!found) throw new Error(`model imports no opset for domain ${JSON.stringify(domain)}`);
    return found.version;
  }
}
