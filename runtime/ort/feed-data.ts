/**
 * The typed data of a graph input in the dtype the manifest describes, for any onnxruntime
 * binding: runtime/ort/artifacts.ts wraps it in onnxruntime-node tensors, the browser page
 * (runtime/web/browser/tensors.ts) in onnxruntime-web ones. Pure: no onnxruntime import.
 */
import { HollowcError } from '../../compiler/errors';
import type { TensorDescription } from '../../compiler/manifest';
import { toFloat16 } from '../formats/float16';

export type TensorValues = Float32Array | number[];

export type FeedData =
  | { type: 'float32'; data: Float32Array }
  | { type: 'float64'; data: Float64Array }
  | { type: 'float16'; data: Uint16Array }
  | { type: 'int64'; data: BigInt64Array }
  | { type: 'int32'; data: Int32Array };

/** `values` in the described input's dtype (float32, float64, float16, int64, int32), checked against `dims`. */
export function feedData(
  desc: Pick<Readonly<TensorDescription>, 'name' | 'dtype'> | undefined,
  values: TensorValues,
  dims: readonly number[],
): FeedData {
  const dtype = desc?.dtype ?? 'float32';
  const count = dims.reduce((a, b) => a * b, 1);
  if (values.length !== count) throw new Error(`${desc?.name ?? 'tensor'}: ${values.length} values for shape [${dims}]`);
  switch (dtype) {
    case 'float32':
      return { type: 'float32', data: values instanceof Float32Array ? values : Float32Array.from(values) };
    case 'float64':
      return { type: 'float64', data: Float64Array.from(values) };
    case 'float16':
      return { type: 'float16', data: toFloat16(values) };
    case 'int64':
      return { type: 'int64', data: BigInt64Array.from(values as ArrayLike<number>, (v) => BigInt(Math.round(v))) };
    case 'int32':
      return { type: 'int32', data: Int32Array.from(values as ArrayLike<number>, (v) => Math.round(v)) };
    default:
      throw new HollowcError(`input ${desc?.name} has dtype ${dtype}; hollowc feeds float32, float64, float16, int32 or int64`);
  }
}

/** The dims of a scalar input (`lr`, `step`) in the rank the graph declares: [] or [1]. */
export function scalarDims(desc: Pick<TensorDescription, 'shape'> | undefined): number[] {
  return desc && desc.shape.length === 1 ? [1] : [];
}
