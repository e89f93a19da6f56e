/**
 * Linear weights stored as the layer reads them. torch's dynamo exporter keeps a Linear's parameter
 * in torch's [out, in] layout and reads it through a Transpose (the TorchScript exporter writes it
 * pre-transposed); onnxruntime folds every such Transpose into a transposed copy when a session
 * starts, so each weight is held twice over: file-backed, and as an anonymous copy (full SD 2.1,
 * hollowed 39.2% at 32x32: 3723 MiB instead of 2903). This rewrite of the source, before any pass,
 * stores each such weight transposed once, at compile time, and lets its readers take it as they
 * are: what the TorchScript exporter writes. The transposed bytes are produced one weight at a time
 * as the artifacts are written (TensorData `computed`), never all at once.
 */
import { cloneModel } from '../../compiler/clone';
import { DataType } from '../../compiler/dtype';
import { Model } from '../../compiler/ir';
import { transposedData } from '../lib/transposed-data';

/**
 * A copy of `model` whose 2-D float32 weights read through Transpose(perm [1, 0]) are stored
 * transposed and read directly, or undefined when it has none (a TorchScript export). Reads no
 * weight: the bytes are transposed when the artifacts are written.
 */
export function pretransposeWeights(model: Model): { model: Model; weights: number } | undefined {
  const isTransposedWeight = (m: Model) =>
    m.graph.nodes.filter((n) => {
      if (n.opType !== 'Transpose') return false;
      const t = n.inputs[0]?.initializer;
      // float16 weights keep their float16 bytes for float16-weights.ts: left as they are
      return !!t && t.dataType === DataType.FLOAT && t.dims.length === 2 && !t.float16Source && n.attrInts('perm', [1, 0]).join() === '1,0';
    });
  if (!isTransposedWeight(model).length) return undefined;
  const copy = cloneModel(model);
  const g = copy.graph;
  let weights = 0;
  for (const n of isTransposedWeight(copy)) {
    const w = n.inputs[0]!;
    const t = w.initializer!;
    const key =
      t.data.kind === 'external'
        ? `T:${t.data.file}:${t.data.offset}`
        : t.data.kind === 'computed'
          ? `T:${t.data.key}`
          : `T:${g.freshName(t.name)}`;
    const transposed = g.addInitializer({
      name: g.freshName(`${t.name}.T`),
      dataType: DataType.FLOAT,
      dims: [t.dims[1], t.dims[0]],
      data: transposedData(t, key),
    });
    g.replaceAllUsesWith(n.outputs[0], transposed);
    g.removeNode(n);
    // an initializer the graph also lists as an input (IR < 4 exports) stays: the input must keep its value
    if (w.uses.length === 0 && !g.outputs.includes(w) && !g.inputs.includes(w)) g.deleteValue(w);
    weights++;
  }
  return { model: copy, weights };
}
