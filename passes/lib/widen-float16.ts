/**
 * A float16 export seen as float32 (widenFloat16, run before any pass, so every pass, analysis and
 * gradient rule sees the float32 graph it knows), and the way back from a compiled artifact's
 * float16-stored weights (widenStoredFloat16, for bake). No weight is read: a widened initializer
 * keeps its float16 bytes (`Tensor.float16Source`) and is widened when, if ever, something reads it.
 * The reverse, storing them as float16 again, is passes/precision/float16-weights.ts.
 */
import { cloneModel } from '../../compiler/clone';
import { DataType } from '../../compiler/dtype';
import { widenFloat16Bytes } from '../../compiler/float16';
import { widenedData } from '../../compiler/float16-data';
import { Attribute, Graph, Model, Tensor, tensorElementCount } from '../../compiler/ir';
import { readTensorBytes } from '../../compiler/serde';

function widenTensor(t: Tensor): Tensor {
  const n = tensorElementCount(t);
  return {
    ...t,
    dataType: DataType.FLOAT,
    data: widenedData(t.name, t.data, n),
    float16Source: t.data,
  };
}

function widenAttribute(a: Attribute): Attribute {
  if (a.type === 'tensor' && a.value.dataType === DataType.FLOAT16) {
    const bytes = widenFloat16Bytes(readTensorBytes(a.value)); // a Constant's value: small, inline
    return { ...a, value: { ...a.value, dataType: DataType.FLOAT, data: { kind: 'inline', bytes } } };
  }
  // Cast's `to`, EyeLike/Random*'s `dtype`
  if (a.type === 'int' && (a.name === 'to' || a.name === 'dtype') && a.value === DataType.FLOAT16) return { ...a, value: DataType.FLOAT };
  return a;
}

export interface WidenedModel {
  model: Model;
  /** The graph inputs and outputs the export declared float16 (artifacts keep them float16). */
  float16Io: string[];
  /** Float16 initializers now seen as float32. */
  weights: number;
}

/**
 * A float32 view of a float16 export (a new model; `model` is left as it is), or undefined when
 * the model has no float16 tensor. No weight bytes are read.
 */
export function widenFloat16(model: Model): WidenedModel | undefined {
  const g = model.graph;
  const hasHalf =
    [...g.values.values()].some((v) => v.type?.elemType === DataType.FLOAT16) ||
    g.nodes.some((n) => n.attributes.some((a) => widenAttribute(a) !== a));
  if (!hasHalf) return undefined;
  const float16Io = [...g.inputs, ...g.outputs].filter((v) => v.type?.elemType === DataType.FLOAT16).map((v) => v.name);
  const copy = cloneModel(model);
  const c = copy.graph;
  let weights = 0;
  // cloneModel shares types, attributes and tensors with `model`: replace them, never mutate.
  for (const v of c.values.values()) {
    if (v.type?.elemType === DataType.FLOAT16) v.type = { ...v.type, elemType: DataType.FLOAT };
    if (v.initializer?.dataType === DataType.FLOAT16) {
      v.initializer = widenTensor(v.initializer);
      weights++;
    }
  }
  for (const n of c.nodes) if (n.attributes.some((a) => widenAttribute(a) !== a)) n.attributes = n.attributes.map(widenAttribute);
  return { model: copy, float16Io, weights };
}

/**
 * The inverse of storeFloat16's weights, for rewrites of a compiled artifact (bake): every float16
 * initializer that only feeds Casts to float32 is seen as a float32 weight again (widened on read,
 * its float16 bytes kept) and the Casts go. Returns how many weights.
 */
export function widenStoredFloat16(g: Graph): number {
  let count = 0;
  for (const w of g.initializers()) {
    const t = w.initializer!;
    const casts = w.uses.map((u) => u.node);
    if (t.dataType !== DataType.FLOAT16 || !casts.length || !casts.every((n) => n.opType === 'Cast' && n.attrInt('to') === DataType.FLOAT))
      continue;
    w.initializer = widenTensor(t);
    w.type = { elemType: DataType.FLOAT, shape: [...t.dims] };
    for (const cast of new Set(casts)) {
      g.replaceAllUsesWith(cast.outputs[0], w);
      g.removeNode(cast);
    }
    count++;
  }
  return count;
}
