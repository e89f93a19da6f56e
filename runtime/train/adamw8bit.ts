/**
 * AdamW's moments in 8 bits (the spec's `optimizer adamw8bit`, kohya's "AdamW8bit"), after
 * bitsandbytes' blockwise 8-bit optimizers (Dettmers et al., "8-bit Optimizers via Block-wise
 * Quantization", 2022): a moment is kept as one byte per value, in blocks of BLOCK values that
 * each carry a float32 scale, the block's largest magnitude. A byte is an index into a map of 256
 * values in [-1, 1] (exp_avg, signed) or [0, 1] (exp_avg_sq, unsigned): the dynamic ("tree") map,
 * whose values are a decimal exponent 10^-6 .. 10^0 times a fraction in (0.1, 1), with more
 * fractions for the larger exponents, plus 0 and 1; so values far below the block's largest keep
 * their magnitude to about one part in a few dozen. Tensors under MIN_QUANTIZED_VALUES keep float32
 * moments, as bitsandbytes' `min_8bit_size` does.
 *
 * One step of one block, as the 8-bit kernels do it: decode the block's moments with its scales,
 * update them and the parameter in float32 exactly as the float32 step does (host-adamw.ts), then
 * encode the new moments with the new scales (each value to its nearest map value). The update
 * itself uses the moments before encoding; only what is carried to the next step is rounded.
 */
import { MIN_QUANTIZED_STATE_VALUES, OptimizerState, QUANTIZED_STATE_BLOCK } from '../../compiler/manifest';
import type { ParamState } from './checkpoint';

/** Values per block, each block with its own scale (bitsandbytes' blockwise optimizers use 256). */
export const BLOCK = QUANTIZED_STATE_BLOCK;
/** Smaller tensors keep float32 moments (bitsandbytes' `min_8bit_size`). */
export const MIN_QUANTIZED_VALUES = MIN_QUANTIZED_STATE_VALUES;

/** One moment of a tensor: a byte per value, a float32 scale per block of BLOCK values. */
export interface QuantizedMoment {
  codes: Uint8Array;
  absmax: Float32Array;
}

/**
 * The 256 values of the dynamic map: for each decimal exponent e = 0..6, the midpoints of an even
 * split of [0.1, 1] into 2^e parts (signed: and their negatives) or 2^(e+1) parts (unsigned),
 * times 10^(e-6); then 0 and 1. Sorted ascending; float32.
 */
export function dynamicMap(signed: boolean): Float32Array {
  const values: number[] = [0, 1];
  for (let e = 0; e < 7; e++) {
    const parts = signed ? 2 ** e : 2 ** (e + 1);
    for (let k = 0; k < parts; k++) {
      const mid = 0.1 + ((k + 0.5) * 0.9) / parts;
      values.push(mid * 10 ** (e - 6));
      if (signed) values.push(-mid * 10 ** (e - 6));
    }
  }
  if (values.length !== 256) throw new Error(`internal: the dynamic map has ${values.length} values`);
  return Float32Array.from(values.sort((a, b) => a - b));
}

export const SIGNED_MAP = dynamicMap(true);
export const UNSIGNED_MAP = dynamicMap(false);
const ZERO_SIGNED = SIGNED_MAP.indexOf(0);
const ZERO_UNSIGNED = UNSIGNED_MAP.indexOf(0);

/** The index of the map value nearest x (ties to the lower): a binary search, the reference for the lookup below. */
export function nearestCode(map: Float32Array, x: number): number {
  let lo = 0;
  let hi = map.length - 1;
  if (x <= map[lo]) return lo;
  if (x >= map[hi]) return hi;
  while (hi - lo > 1) {
    const mid = (lo + hi) >> 1;
    if (map[mid] <= x) lo = mid;
    else hi = mid;
  }
  return x - map[lo] <= map[hi] - x ? lo : hi;
}

// Encoding is the 8-bit step's hot loop, so the search starts from a table: a float32's bits, turned
// so that their unsigned order is the numbers' order, cut to their top 16 bits name a bucket (one
// 128th of a binade wide); the table holds the last map value below each bucket, and a step or two
// up the map finds x's neighbours. Same result as nearestCode.
const bits = new Float32Array(1);
const word = new Uint32Array(bits.buffer);
function orderedBucket(x: number): number {
  bits[0] = x;
  const b = word[0];
  return ((b & 0x80000000 ? ~b : b | 0x80000000) >>> 16) & 0xffff;
}
function bucketTable(map: Float32Array): Int16Array {
  const table = new Int16Array(65536);
  let below = -1;
  for (let bucket = 0; bucket < 65536; bucket++) {
    while (below + 1 < map.length && orderedBucket(map[below + 1]) < bucket) below++;
    table[bucket] = below;
  }
  return table;
}

function nearestFromTable(map: Float32Array, table: Int16Array, value: number): number {
  bits[0] = value;
  // x as the float32 the bucket was taken of
  const x = bits[0];
  const b = word[0];
  let lo = table[((b & 0x80000000 ? ~b : b | 0x80000000) >>> 16) & 0xffff];
  while (lo + 1 < map.length && map[lo + 1] <= x) lo++;
  if (lo < 0) return 0;
  if (lo === map.length - 1) return lo;
  return x - map[lo] <= map[lo + 1] - x ? lo : lo + 1;
}
const SIGNED_TABLE = bucketTable(SIGNED_MAP);
const UNSIGNED_TABLE = bucketTable(UNSIGNED_MAP);

export function blocksOf(values: number): number {
  return Math.ceil(values / BLOCK);
}

/** A moment of `values` values that is zero everywhere. */
export function zeroMoment(values: number, signed: boolean): QuantizedMoment {
  return { codes: new Uint8Array(values).fill(signed ? ZERO_SIGNED : ZERO_UNSIGNED), absmax: new Float32Array(blocksOf(values)) };
}

/** Encodes `x` (float32 values) into `m`'s block `b`: the scale is the block's largest magnitude. */
export function encodeBlock(x: Float32Array, m: QuantizedMoment, b: number, signed: boolean): void {
  const start = b * BLOCK;
  const end = Math.min(start + BLOCK, m.codes.length);
  let absmax = 0;
  for (let i = 0; i < end - start; i++) absmax = Math.max(absmax, Math.abs(x[i]));
  m.absmax[b] = absmax;
  const map = signed ? SIGNED_MAP : UNSIGNED_MAP;
  const table = signed ? SIGNED_TABLE : UNSIGNED_TABLE;
  if (absmax === 0) {
    m.codes.fill(signed ? ZERO_SIGNED : ZERO_UNSIGNED, start, end);
    return;
  }
  const codes = m.codes;
  for (let i = 0; i < end - start; i++) codes[start + i] = nearestFromTable(map, table, x[i] / absmax);
}

/** Decodes `m`'s block `b` into `x` (float32: map value times scale). */
export function decodeBlock(m: QuantizedMoment, b: number, signed: boolean, x: Float32Array): void {
  const start = b * BLOCK;
  const end = Math.min(start + BLOCK, m.codes.length);
  const map = signed ? SIGNED_MAP : UNSIGNED_MAP;
  const scale = m.absmax[b];
  for (let i = 0; i < end - start; i++) x[i] = Math.fround(map[m.codes[start + i]] * scale);
}

/** A whole moment as float32 values (checkpoint readers, tests). */
export function decodeMoment(m: QuantizedMoment, signed: boolean): Float32Array {
  const out = new Float32Array(m.codes.length);
  const block = new Float32Array(BLOCK);
  for (let b = 0; b < m.absmax.length; b++) {
    decodeBlock(m, b, signed, block);
    out.set(block.subarray(0, Math.min(BLOCK, m.codes.length - b * BLOCK)), b * BLOCK);
  }
  return out;
}

/** Zero moments for a tensor of `values` values: 8-bit under `state` '8bit' from MIN_QUANTIZED_VALUES values on, else float32. */
export function zeroMoments(values: number, state: OptimizerState | undefined): Pick<ParamState, 'expAvg' | 'expAvgSq' | 'quantized'> {
  if (state === '8bit' && values >= MIN_QUANTIZED_VALUES)
    return {
      expAvg: new Float32Array(0),
      expAvgSq: new Float32Array(0),
      quantized: { expAvg: zeroMoment(values, true), expAvgSq: zeroMoment(values, false) },
    };
  return { expAvg: new Float32Array(values), expAvgSq: new Float32Array(values) };
}
