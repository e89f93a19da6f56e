/**
 * Float16 weights computed in float32, for float16 exports (`optimum-cli export onnx --dtype fp16`)
 * and for `base fp16` on float32 ones.
 *
 * `widenFloat16` turns a float16 export into a float32 graph before any pass runs: every pass,
 * analysis and gradient rule then sees the float32 graph it knows. No weight is read for it: a
 * float16 initializer becomes a float32 tensor whose bytes are widened when (if ever) something
 * reads them, and it remembers its float16 bytes (`Tensor.float16Source`). Constants, Casts and
 * value types go float32 (constants are small and inline).
 *
 * `storeFloat16` (the pass `float16-weights`, last in every pipeline) stores those weights as the
 * float16 bytes they came from, hard-linked or copied as bytes as compile does for any weight (so
 * never widened on disk), and casts each to float32 where it is read: x86 CPUs have no fast
 * float16 arithmetic. Under `base fp16` the training graphs store a float32 export's weights
 * rounded to float16 the same way, chunk by chunk as the artifact is written. LoRA, the loss and
 * the optimizer state stay float32. The UNet inputs and outputs the export declared float16 are
 * float16 in every artifact again, cast at the boundary.
 *
 * As with `base int8` (quantize-base.ts, whose reasoning applies unchanged), each use gets its
 * own Cast and the Casts go first in node order, so a float32 copy lives only while its reader
 * runs. At session start onnxruntime would turn a Cast of an initializer into a float32
 * initializer, which is every weight widened in memory: ConstantFolding does (at every level), and
 * at 'all' so does FuseFp16InitializerToFp32NodeTransformer (checked with onnxruntime-node 1.30's
 * optimized-model output: 202 float32 weights on the fixture's precompute.onnx with either on,
 * none with both off). The artifact's manifest entry carries FLOAT16_WEIGHTS_SESSION_CONFIG (compiler/manifest.ts), which
 * turns both off, and the runtime applies it.
 */
import { GraphBuilder } from '../../compiler/builder';
import { cloneModel } from '../../compiler/clone';
import { DataType } from '../../compiler/dtype';
import { widenFloat16Bytes } from '../../compiler/float16';
import { narrowedData, widenedData } from '../../compiler/float16-data';
import { Attribute, Graph, Model, Node, Tensor, TensorData, Value, tensorElementCount } from '../../compiler/ir';
import { baseInputName } from '../../compiler/manifest';
import { Pass } from '../../compiler/pass';
import { readTensorBytes } from '../../compiler/serde';
import { ArtifactState } from '../lib/artifact-state';
import { MIN_QUANTIZED_ELEMENTS } from './quantize-base';

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

export interface StoreResult {
  weights: number;
  /** Casts added (one per weight use). */
  uses: number;
  float16Bytes: number;
}

/** Where a weight would be stored as float16: its own float16 bytes, or (base fp16) its values rounded. */
function float16Data(t: Tensor, round: boolean, minElements: number): TensorData | undefined {
  if (t.float16Source) return t.float16Source;
  if (!round || t.dataType !== DataType.FLOAT || t.dims.length < 2 || tensorElementCount(t) < minElements) return undefined;
  if (t.data.kind === 'strings') return undefined;
  return narrowedData(t.name, t.data, tensorElementCount(t));
}

/**
 * Stores float16 weights as float16 with a float32 Cast per use (first in node order), and makes the
 * inputs and outputs named in `float16Io` (and infer.onnx's base-path copies of them) float16.
 */
export function storeFloat16(g: Graph, options: { float16Io: readonly string[]; round: boolean; minElements?: number }): StoreResult {
  const result: StoreResult = { weights: 0, uses: 0, float16Bytes: 0 };
  const casts: Node[] = [];
  for (const w of g.initializers()) {
    const t = w.initializer!;
    if (!w.uses.length) continue;
    const data = float16Data(t, options.round, options.minElements ?? MIN_QUANTIZED_ELEMENTS);
    if (!data) continue;
    w.initializer = { ...t, dataType: DataType.FLOAT16, data, float16Source: undefined };
    w.type = { elemType: DataType.FLOAT16, shape: [...t.dims] };
    for (const use of [...w.uses]) {
      const cast = g.addNode({
        name: `${w.name}/cast`,
        opType: 'Cast',
        inputs: [w],
        outputs: 1,
        attributes: [{ name: 'to', type: 'int', value: DataType.FLOAT }],
      });
      cast.outputs[0].type = { elemType: DataType.FLOAT, shape: [...t.dims] };
      g.setInput(use.node, use.index, cast.outputs[0]);
      casts.push(cast);
      result.uses++;
    }
    result.weights++;
    result.float16Bytes += tensorElementCount(t) * 2;
  }
  const io = new Set(options.float16Io.flatMap((n) => [n, baseInputName(n)]));
  for (const v of g.inputs) {
    if (!io.has(v.name) || v.type?.elemType !== DataType.FLOAT) continue;
    const readers = [...v.uses];
    v.type = { ...v.type, elemType: DataType.FLOAT16 };
    if (!readers.length) continue;
    const cast = new GraphBuilder(g, v.name).op('Cast', [v], { to: DataType.FLOAT });
    cast.type = { ...v.type, elemType: DataType.FLOAT };
    for (const u of readers) g.setInput(u.node, u.index, cast);
    casts.push(cast.producer!);
  }
  g.outputs = g.outputs.map((v) => (io.has(v.name) && v.type?.elemType === DataType.FLOAT ? float16Output(g, v) : v));
  const first = new Set(casts);
  g.reorderNodes([...casts, ...g.nodes.filter((n) => !first.has(n))]);
  return result;
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

/** The graph output `v` as float16 under its own name (the float32 value is renamed). */
function float16Output(g: Graph, v: Value): Value {
  const name = v.name;
  g.renameValue(v, g.freshName(`${name}_float32`));
  const cast = g.addNode({
    name: `${name}/cast`,
    opType: 'Cast',
    inputs: [v],
    outputs: [name],
    attributes: [{ name: 'to', type: 'int', value: DataType.FLOAT16 }],
  });
  const out = cast.outputs[0];
  out.type = { ...v.type!, elemType: DataType.FLOAT16 };
  return out;
}

/** Last in every artifact: float16 weights stored float16 (see above). */
export const float16WeightsPass: Pass<ArtifactState> = {
  name: 'float16-weights',
  run(model, state) {
    // grads.onnx and train.onnx (differentiated) hold the base the spec's `base` line describes
    const round = state.gradients !== undefined && state.training.base === 'fp16';
    const float16Io = state.float16Io ?? [];
    if (!round && !float16Io.length && !model.graph.initializers().some((w) => w.initializer!.float16Source))
      return { changed: false, summary: 'float32 weights' };
    const r = storeFloat16(model.graph, { float16Io, round, minElements: state.quantizeMinElements });
    state.float16Weights = r.weights > 0;
    return {
      changed: true,
      summary: `${r.weights} weights stored float16 (${(r.float16Bytes / 2 ** 20).toFixed(1)} MiB), ${r.uses} casts; float16 I/O: ${float16Io.join(' ') || 'none'}`,
    };
  },
};
