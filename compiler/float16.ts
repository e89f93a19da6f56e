/**
 * IEEE 754 half precision <-> float32, for values and for weight bytes streamed chunk by chunk
 * (float16 exports, `base fp16`). Rounding is to nearest even, as numpy's astype(float16) does;
 * overflow gives infinity. Pure: the runtime and the browser page use the scalar codecs too.
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

// Every half value widened, built on first use (256 KiB): widening gigabytes of weights is a lookup.
let widened: Float32Array | undefined;
function table(): Float32Array {
  if (!widened) {
    widened = new Float32Array(65536);
    for (let h = 0; h < 65536; h++) widened[h] = fromHalfBits(h);
  }
  return widened;
}

/**
 * float16 bit patterns widened and multiplied by `scale` into `into` (its first bits.length
 * values), each product rounded to float32 once.
 */
export function widenHalvesInto(bits: ArrayLike<number>, into: Float32Array, scale = 1): Float32Array {
  const t = table();
  const n = bits.length;
  if (into.length < n) throw new Error(`widenHalvesInto: ${n} values do not fit a buffer of ${into.length}`);
  if (scale === 1) for (let i = 0; i < n; i++) into[i] = t[bits[i]];
  else for (let i = 0; i < n; i++) into[i] = t[bits[i]] * scale;
  return n === into.length ? into : into.subarray(0, n);
}

/** Little-endian float16 bytes as float32 bytes (`bytes` may start at any offset). */
export function widenFloat16Bytes(bytes: Uint8Array): Uint8Array {
  if (bytes.byteLength % 2) throw new Error(`${bytes.byteLength} bytes are not whole float16 values`);
  const t = table();
  const out = new Float32Array(bytes.byteLength / 2);
  for (let i = 0, j = 0; i < out.length; i++, j += 2) out[i] = t[bytes[j] | (bytes[j + 1] << 8)];
  return new Uint8Array(out.buffer);
}

/** Little-endian float32 bytes rounded to float16 bytes (`bytes` may start at any offset). */
export function narrowFloat32Bytes(bytes: Uint8Array): Uint8Array {
  if (bytes.byteLength % 4) throw new Error(`${bytes.byteLength} bytes are not whole float32 values`);
  const aligned = bytes.byteOffset % 4 === 0 ? bytes : new Uint8Array(bytes); // a copy at offset 0
  const values = new Float32Array(aligned.buffer, aligned.byteOffset, aligned.byteLength / 4);
  const out = new Uint16Array(values.length);
  for (let i = 0; i < values.length; i++) out[i] = toHalfBits(values[i]);
  return new Uint8Array(out.buffer);
}
