/**
 * Emitting ops whose form changed between opsets (axes as attribute or input, Slice/Pad
 * bounds as inputs), typed constants, and the broadcast-undoing reduction every gradient rule
 * needs. Used by the gradient rules, the loss and the optimizer passes.
 */
import { DataType, DataTypeCode } from './dtype';
import { Attrs, GraphBuilder } from './builder';
import { Node, Value } from './ir';
import { sizeOf, tensorFromConst } from './constant-eval';
import { constantOfValue, inferNodeTypes, staticShape } from './shape-inference';

/** The opset at which each op's `axes` moved from attribute to input. */
const AXES_INPUT_SINCE: Record<string, number> = {
  ReduceSum: 13,
  ReduceMean: 18,
  ReduceMax: 18,
  ReduceMin: 18,
  ReduceProd: 18,
  ReduceSumSquare: 18,
  Squeeze: 13,
  Unsqueeze: 13,
};

export class OpEmitter {
  /** `before`: every node goes just before that node instead of at the end of the node list. */
  constructor(
    readonly b: GraphBuilder,
    readonly opset: number,
    readonly before?: Node,
  ) {}

  within(...segments: string[]): OpEmitter {
    return new OpEmitter(this.b.within(...segments), this.opset, this.before);
  }

  /**
   * Emits a node and, when its inputs have static shapes, records its output types at once:
   * a rule that builds an ill-shaped node fails here, naming the node.
   */
  op(opType: string, inputs: (Value | null)[], attrs?: Attrs): Value {
    const out = this.b.op(opType, inputs, attrs, { before: this.before });
    const node = out.producer!;
    if (inputs.every((v) => !v || v.type?.shape?.every((d) => typeof d === 'number'))) {
      const types = inferNodeTypes(node, this.opset, constantOfValue);
      node.outputs.forEach((o, i) => (o.type = { elemType: types[i].elemType, shape: [...types[i].shape] }));
    }
    return out;
  }

  /** A constant of element type `elemType` (every element `value`). */
  scalar(value: number, elemType: DataTypeCode, dims: number[] = []): Value {
    const count = dims.reduce((a, d) => a * d, 1);
    const v = this.b.op(
      'Constant',
      [],
      { value: tensorFromConst({ dataType: elemType, dims, data: new Array<number>(count).fill(value) }) },
      { before: this.before },
    );
    v.type = { elemType, shape: [...dims] };
    return v;
  }

  /** A constant tensor of element type `elemType`. */
  values(data: readonly number[], elemType: DataTypeCode, dims: number[] = [data.length]): Value {
    const v = this.b.op('Constant', [], { value: tensorFromConst({ dataType: elemType, dims, data: [...data] }) }, { before: this.before });
    v.type = { elemType, shape: [...dims] };
    return v;
  }

  /** A constant with the element type of `like`. */
  scalarLike(value: number, like: Value): Value {
    return this.scalar(value, elemTypeOf(like));
  }

  int64s(values: readonly number[]): Value {
    const v = this.b.op(
      'Constant',
      [],
      { value: tensorFromConst({ dataType: DataType.INT64, dims: [values.length], data: [...values] }) },
      { before: this.before },
    );
    v.type = { elemType: DataType.INT64, shape: [values.length] };
    return v;
  }

  private withAxes(opType: string, inputs: Value[], axes: readonly number[], attrs: Attrs = {}): Value {
    const since = AXES_INPUT_SINCE[opType];
    if (since !== undefined && this.opset >= since) return this.op(opType, [...inputs, this.int64s(axes)], attrs);
    return this.op(opType, inputs, { ...attrs, axes: [...axes] });
  }

  reduce(opType: 'ReduceSum' | 'ReduceMean', x: Value, axes: readonly number[], keepdims: boolean): Value {
    if (axes.length === 0) return x;
    return this.withAxes(opType, [x], axes, { keepdims: keepdims ? 1 : 0 });
  }

  unsqueeze(x: Value, axes: readonly number[]): Value {
    return this.withAxes('Unsqueeze', [x], axes);
  }

  /** Reshape; reshapes of reshapes read the first input, and a reshape to the same shape is skipped. */
  reshape(x: Value, shape: readonly number[]): Value {
    let source = x;
    while (source.producer?.opType === 'Reshape' && source.producer.inputs[0]) source = source.producer.inputs[0];
    const known = source.type?.shape;
    if (known?.every((d) => typeof d === 'number')) {
      const dims = known as number[];
      const minus = shape.indexOf(-1);
      const resolved = shape.map((d, i) => (i === minus ? sizeOf(dims) / shape.reduce((a, b, j) => (j === minus ? a : a * b), 1) : d));
      if (resolved.length === dims.length && resolved.every((d, i) => d === dims[i])) return source;
    }
    return this.op('Reshape', [source, this.int64s(shape)]);
  }

  /** Transpose; a transpose of a transpose reads the first input (and vanishes when they cancel). */
  transpose(x: Value, perm: readonly number[]): Value {
    const inner = x.producer?.opType === 'Transpose' ? x.producer : undefined;
    if (inner?.inputs[0] && inner.attr('perm')) {
      const first = inner.attrInts('perm');
      const composed = perm.map((p) => first[p]);
      if (composed.every((p, i) => p === i)) return inner.inputs[0];
      return this.op('Transpose', [inner.inputs[0]], { perm: composed });
    }
    return this.op('Transpose', [x], { perm: [...perm] });
  }

  slice(x: Value, starts: readonly number[], ends: readonly number[], axes: readonly number[]): Value {
    if (this.opset < 10) return this.op('Slice', [x], { starts: [...starts], ends: [...ends], axes: [...axes] });
    return this.op('Slice', [x, this.int64s(starts), this.int64s(ends), this.int64s(axes)]);
  }

  /** Zero padding; `pads` = [begin_0, ..., begin_n, end_0, ..., end_n]. */
  pad(x: Value, pads: readonly number[]): Value {
    if (pads.every((p) => p === 0)) return x;
    if (this.opset < 11) return this.op('Pad', [x], { pads: [...pads], mode: 'constant' });
    return this.op('Pad', [x, this.int64s(pads)], { mode: 'constant' });
  }

  zeros(shape: readonly number[], elemType: DataTypeCode): Value {
    const fill = tensorFromConst({ dataType: elemType, dims: [1], data: [0] });
    const v = this.op('ConstantOfShape', [this.int64s(shape)], { value: fill });
    v.type = { elemType, shape: [...shape] };
    return v;
  }

  /**
   * Undoes numpy broadcasting: sums `g` (shape `from`) down to shape `to` (summing the leading
   * dims `to` lacks and the dims where `to` has 1), then reshapes to `to`.
   */
  sumTo(g: Value, from: readonly number[], to: readonly number[]): Value {
    const lead = from.length - to.length;
    if (lead < 0) throw new Error(`cannot sum [${from}] down to [${to}]`);
    const axes: number[] = [];
    for (let i = 0; i < from.length; i++) {
      if (i < lead || (to[i - lead] === 1 && from[i] !== 1)) axes.push(i);
      else if (to[i - lead] !== from[i]) throw new Error(`cannot sum [${from}] down to [${to}]`);
    }
    if (axes.length === 0 && lead === 0) return g;
    const reduced = this.reduce('ReduceSum', g, axes, true);
    return lead === 0 ? reduced : this.reshape(reduced, to);
  }
}

export function elemTypeOf(v: Value): DataTypeCode {
  if (!v.type) throw new Error(`value ${v.name} has no type`);
  return v.type.elemType;
}

/** The static shape of `v`; throws when it has none (run specializeShapes first). */
export function staticShapeOf(v: Value): number[] {
  const s = staticShape(v);
  if (!s)
    throw new Error(
      `value ${v.name} has no static shape ([${v.type?.shape?.map((d) => d ?? '?').join(',') ?? '?'}]); specialize the graph's shapes first`,
    );
  return s;
}
