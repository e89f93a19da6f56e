/**
 * Tensor bytes converted between float16 and float32 chunk by chunk as they are written or read
 * (TensorData `computed`): a weight of gigabytes is never held whole. Used by the float16 export
 * builder (models/builder/float16.ts) and the float16-weights pass.
 */
import { readRangeInChunks } from './external-data';
import { narrowFloat32Bytes, widenFloat16Bytes } from './float16';
import { TensorData } from './ir';

/** Streams a tensor's bytes as they are stored (external range, inline, computed). */
export function streamBytes(name: string, data: TensorData, write: (chunk: Uint8Array) => void): void {
  if (data.kind === 'inline') write(data.bytes);
  else if (data.kind === 'external') readRangeInChunks(data.file, data.offset, data.length, (chunk) => write(chunk));
  else if (data.kind === 'computed') data.produce(write);
  else throw new Error(`tensor ${name}: strings are not float data`);
}

/** `source` (values of `unit` bytes) converted chunk by chunk by `convert` into `length` bytes. */
function convertedData(
  name: string,
  source: TensorData,
  key: string,
  length: number,
  unit: number,
  convert: (b: Uint8Array) => Uint8Array,
): TensorData {
  return {
    kind: 'computed',
    key,
    length,
    produce: (write) => {
      // A chunk may end inside a value (a computed source's chunks): carry the rest over.
      let carry = new Uint8Array(0);
      streamBytes(name, source, (chunk) => {
        const all = carry.length ? Buffer.concat([carry, chunk]) : chunk;
        const whole = all.byteLength - (all.byteLength % unit);
        if (whole) write(convert(all.subarray(0, whole)));
        carry = Uint8Array.from(all.subarray(whole));
      });
      if (carry.length) throw new Error(`tensor ${name}: ${carry.length} bytes left over`);
    },
  };
}

/** A key naming where `data` comes from, so that artifacts sharing a converted tensor store it once. */
export function dataKey(name: string, data: TensorData): string {
  return data.kind === 'external' ? `${data.file}:${data.offset}:${data.length}` : data.kind === 'computed' ? data.key : `${name}:inline`;
}

/** The float32 values of float16 `source` ([elements] values), widened as they are read. */
export function widenedData(name: string, source: TensorData, elements: number): TensorData {
  return convertedData(name, source, `widened:${dataKey(name, source)}`, elements * 4, 2, widenFloat16Bytes);
}

/** The float16 values of float32 `source` ([elements] values), rounded to nearest even as they are read. */
export function narrowedData(name: string, source: TensorData, elements: number): TensorData {
  return convertedData(name, source, `fp16:${dataKey(name, source)}`, elements * 2, 4, narrowFloat32Bytes);
}
