/**
 * A small op builder over `Graph`, used both to build models and to write rewrites. Node names
 * follow torch.onnx.export's convention (`/down_blocks.0/resnets.0/conv1/Conv`, then `Conv_1`,
 * outputs `<node name>_output_<i>`), so graphs we make read like the exports users bring.
 */
import { DataType, DataTypeCode } from './dtype';
import { Attribute, Graph, Node, Tensor, TensorData, Value, inlineTensor } from './ir';

/** Attribute values: a plain number is an int, `{ f }` a float, arrays likewise. */
export type AttrValue = number | { f: number } | number[] | { floats: number[] } | string | string[] | Tensor;
export type Attrs = Record<string, AttrValue>;

function isTensor(v: unknown): v is Tensor {
  return typeof v === 'object' && v !== null && 'dataType' in v && 'dims' in v;
}

export function toAttributes(attrs: Attrs | undefined): Attribute[] {
  if (!attrs) return [];
  return Object.entries(attrs).map(([name, v]): Attribute => {
    if (typeof v === 'number') {
      if (!Number.isInteger(v)) throw new Error(`attribute ${name}: ${v} is not an int; write { f: ${v} } for a float`);
      return { name, type: 'int', value: v };
    }
    if (typeof v === 'string') return { name, type: 'string', value: v };
    if (Array.isArray(v)) {
      if (v.every((x) => typeof x === 'string')) return { name, type: 'strings', value: v as string[] };
      return { name, type: 'ints', value: v as number[] };
    }
    if (isTensor(v)) return { name, type: 'tensor', value: v };
    if ('f' in v) return { name, type: 'float', value: v.f };
    return { name, type: 'floats', value: v.floats };
  });
}

type TypedData = Float32Array | Float64Array | Int32Array | BigInt64Array | Uint8Array;

function dataTypeOf(data: TypedData): DataTypeCode {
  if (data instanceof Float32Array) return DataType.FLOAT;
  if (data instanceof Float64Array) return DataType.DOUBLE;
  if (data instanceof Int32Array) return DataType.INT32;
  if (data instanceof BigInt64Array) return DataType.INT64;
  return DataType.UINT8;
}

export function tensorFromTyped(name: string, data: TypedData, dims: number[], dataType = dataTypeOf(data)): Tensor {
  return inlineTensor(name, dataType, dims, new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
}

export class GraphBuilder {
  /** Per-name counters shared by every scoped builder of one graph. */
  private readonly counters: Map<string, number>;

  constructor(
    readonly graph: Graph,
    readonly scope = '',
    counters?: Map<string, number>,
  ) {
    this.counters = counters ?? new Map();
  }

  /** A builder whose nodes are named under `scope` (module path segments, `down_blocks.0`). */
  within(...segments: string[]): GraphBuilder {
    return new GraphBuilder(this.graph, [this.scope, ...segments].join('/'), this.counters);
  }

  private nodeName(opType: string, name?: string): string {
    const base = `${this.scope}/${name ?? opType}`;
    const seen = this.counters.get(base) ?? 0;
    this.counters.set(base, seen + 1);
    return seen === 0 ? base : `${base}_${seen}`;
  }

  /** Adds a node and returns all its outputs. */
  node(
    opType: string,
    inputs: (Value | null)[],
    attrs?: Attrs,
    options: { outputs?: number; name?: string; domain?: string; before?: Node } = {},
  ): Value[] {
    const name = this.nodeName(opType, options.name);
    const count = options.outputs ?? 1;
    const node = this.graph.addNode(
      {
        opType,
        inputs,
        name,
        domain: options.domain,
        attributes: toAttributes(attrs),
        outputs: Array.from({ length: count }, (_, i) => this.graph.freshName(`${name}_output_${i}`)),
      },
      options.before,
    );
    return [...node.outputs];
  }

  /** Adds a single-output node and returns its output. */
  op(opType: string, inputs: (Value | null)[], attrs?: Attrs, options: { name?: string; domain?: string; before?: Node } = {}): Value {
    return this.node(opType, inputs, attrs, options)[0];
  }

  /** A `Constant` node, as exporters write small literals. */
  constant(data: TypedData, dims: number[], dataType?: DataTypeCode): Value {
    const name = this.nodeName('Constant');
    const tensor = tensorFromTyped('', data, dims, dataType);
    const node = this.graph.addNode({
      opType: 'Constant',
      inputs: [],
      name,
      attributes: [{ name: 'value', type: 'tensor', value: tensor }],
      outputs: [this.graph.freshName(`${name}_output_0`)],
    });
    const out = node.outputs[0];
    out.type = { elemType: tensor.dataType, shape: dims };
    return out;
  }

  int64s(values: number[]): Value {
    return this.constant(BigInt64Array.from(values, BigInt), [values.length]);
  }

  scalar(value: number, dataType: DataTypeCode = DataType.FLOAT): Value {
    return this.constant(dataType === DataType.INT64 ? BigInt64Array.of(BigInt(value)) : Float32Array.of(value), [], dataType);
  }

  initializer(name: string, dataType: DataTypeCode, dims: number[], data: TensorData): Value {
    return this.graph.addInitializer({ name, dataType, dims, data });
  }
}
