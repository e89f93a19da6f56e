/** onnxruntime-web tensors in the dtypes the manifest describes (as runtime/ort/artifacts.ts does for onnxruntime-node). */
import type * as Ort from 'onnxruntime-web';
import type { TensorDescription } from '../../../compiler/manifest';
import { feedData, scalarDims } from '../../ort/feed-data';
import { fromFloat16 } from '../../formats/float16';

export type OrtModule = typeof Ort;

export function webTensor(
  ort: OrtModule,
  desc: Pick<TensorDescription, 'name' | 'dtype'> | undefined,
  values: Float32Array | number[],
  dims: readonly number[],
): Ort.Tensor {
  const { type, data } = feedData(desc, values, dims);
  return new ort.Tensor(type, data, dims);
}

/** A scalar input (`lr`, `step`) in the rank the graph declares: [] or [1]. */
export function webScalar(ort: OrtModule, desc: TensorDescription | undefined, value: number): Ort.Tensor {
  return webTensor(ort, desc, [value], scalarDims(desc));
}

export function floatOutput(t: Ort.Tensor | undefined, name: string): Float32Array {
  if (!t) throw new Error(`the model returned no ${name}`);
  if (t.type === 'float32') return t.data as Float32Array;
  if (t.type === 'float64') return Float32Array.from(t.data as Float64Array);
  // a float16 export's out_sample: bit patterns, or a Float16Array where the browser has one
  if (t.type === 'float16') return t.data instanceof Uint16Array ? fromFloat16(t.data) : Float32Array.from(t.data as ArrayLike<number>);
  throw new Error(`output ${name} is ${t.type}, expected float32`);
}
