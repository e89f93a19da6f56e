/**
 * IEEE 754 half precision <-> float32, for fp16 exports (their inputs and outputs are float16;
 * onnxruntime-node on Node 20 hands them over as Uint16Array bit patterns). Rounding is to
 * nearest even, as numpy's astype(float16) does; overflow gives infinity.
 */
const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

export function toHalfBits(x: number): number {
  f32[0] = x;
  const bits = u32[0];
  const sign = (bits >>> 16) & 0x8000;
  const exp = (bits >>> 23) & 0xff;
  let mant = bits & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0); // inf, nan
  let e = exp - 127 + 15;
  if (e >= 0x1f) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign; // below half the smallest subnormal
    mant |= 0x800000;
    const shift = 14 - e;
    const half = 1 << (shift - 1);
    let m = mant >>> shift;
    const rest = mant & ((1 << shift) - 1);
    if (rest > half || (rest === half && m & 1)) m++;
    return sign | m;
  }
  let m = mant >>> 13;
  const rest = mant & 0x1fff;
  if (rest > 0x1000 || (rest === 0x1000 && m & 1)) {
    m++;
    if (m === 0x400) {
      m = 0;
      e++;
      if (e >= 0x1f) return sign | 0x7c00;
    }
  }
  return sign | (e << 10) | m;
}

export function fromHalfBits(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >>> 10) & 0x1f;
  const mant = h & 0x3ff;
  if (exp === 0) return sign * mant * 2 ** -24;
  if (exp === 0x1f) return mant ? NaN : sign * Infinity;
  return sign * (1 + mant / 1024) * 2 ** (exp - 15);
}

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
