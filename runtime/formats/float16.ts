/**
 * IEEE 754 half precision <-> float32, for fp16 exports (their inputs and outputs are float16;
 * onnxruntime-node on Node 20 hands them over as Uint16Array bit patterns). The codecs are
 * compiler/float16.ts's (round to nearest even, as numpy's astype(float16)).
 */
import { fromHalfBits, toHalfBits } from '../../compiler/float16';

export { fromHalfBits, toHalfBits };

export function toFloat16(values: ArrayLike<number>): Uint16Array {
  const out = new Uint16Array(values.length);
  for (let i = 0; i < values.length; i++) out[i] = toHalfBits(values[i]);
  return out;
}

export function fromFloat16(bits: ArrayLike<number>): Float32Array {
  const out = new Float32Array(bits.length);
  for (let i = 0; i < bits.length; i++) out[i] = fromHalfBits(bits[i]);
  return out;
}

/**
 * float32 values as an input of element type `dtype` takes them: as they are for float32, rounded
 * to float16 bit patterns for float16 (infer.onnx's LoRA inputs under `lora infer fp16`). Node and
 * the page build their tensors from this.
 */
export function inputValues(
  dtype: string,
  values: Float32Array,
  name: string,
): { type: 'float32'; data: Float32Array } | { type: 'float16'; data: Uint16Array } {
  if (dtype === 'float32') return { type: 'float32', data: values };
  if (dtype === 'float16') return { type: 'float16', data: toFloat16(values) };
  throw new Error(`input ${name} takes ${dtype}; LoRA values can be fed as float32 or float16`);
}
