/** onnxruntime-web tensors in the dtypes the manifest describes (as runtime/artifacts.ts does for onnxruntime-node). */
import type * as Ort from 'onnxruntime-web';
import type { TensorDescription } from '../../../compiler/manifest';

export type OrtModule = typeof Ort;

export function webTensor(
  ort: OrtModule,
  desc: Pick<TensorDescription, 'name' | 'dtype'> | undefined,
  values: Float32Array | number[],
  dims: readonly number[],
): Ort.Tensor {
  const dtype = desc?.dtype ?? 'float32';
  const count = dims.reduce((a, b) => a * b, 1);
  if (values.length !== count) throw new Error(`${desc?.name ?? 'tensor'}: ${values.length} values for shape [${dims}]`);
  switch (dtype) {
    case 'float32':
      return new ort.Tensor('float32', values instanceof Float32Array ? values : Float32Array.from(values), dims);
    case 'float64':
      return new ort.Tensor('float64', Float64Array.from(values), dims);
    case 'int64':
      return new ort.Tensor(
        'int64',
        BigInt64Array.from(values as ArrayLike<number>, (v) => BigInt(Math.round(v))),
        dims,
      );
    case 'int32':
      return new ort.Tensor(
        'int32',
        Int32Array.from(values as ArrayLike<number>, (v) => Math.round(v)),
        dims,
      );
    default:
      throw new Error(`input ${desc?.name} has dtype ${dtype}; the page feeds float32, float64, int32 or int64`);
  }
}

/** A scalar input (`lr`, `step`) in the rank the graph declares: [] or [1]. */
export function webScalar(ort: OrtModule, desc: TensorDescription | undefined, value: number): Ort.Tensor {
  return webTensor(ort, desc, [value], desc && desc.shape.length === 1 ? [1] : []);
}

export function floatOutput(t: Ort.Tensor | undefined, name: string): Float32Array {
  if (!t) throw new Error(`the model returned no ${name}`);
  if (t.type === 'float32') return t.data as Float32Array;
  if (t.type === 'float64') return Float32Array.from(t.data as Float64Array);
  throw new Error(`output ${name} is ${t.type}, expected float32`);
}
