/**
 * Float16 weights computed in float32, for float16 exports (`optimum-cli export onnx --dtype fp16`)
 * and for `base fp16` on float32 ones.
 *
 * `widenFloat16` (passes/lib/widen-float16.ts) turns a float16 export into a float32 graph before any pass runs: every pass,
 * analysis and gradient rule then sees the float32 graph it knows. No weight is read for it: a
 * float16 initializer becomes a float32 tensor whose bytes are widened when (if ever) something
 * reads them, and it remembers its float16 bytes (`Tensor.float16Source`). Constants, Casts and
 * value types go float32 (constants are small and inline).
 *
 * `storeFloat16` (the pass `float16-weights`: last in precompute, forward and infer; in the training graphs
 * followed only by release-dead-buffers) stores those weights as the
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
import { DataType } from '../../compiler/dtype';
import { narrowedData } from '../../compiler/float16-data';
import { Graph, Node, Tensor, TensorData, Value, tensorElementCount } from '../../compiler/ir';
import { baseInputName } from '../../compiler/manifest';
import { Pass } from '../../compiler/pass';
import { ArtifactState } from '../lib/artifact-state';
import { MIN_QUANTIZED_ELEMENTS } from './quantize-base';

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
