/**
 * The safetensors format on bytes alone (no file system, no Buffer): parsing, encoding and the
 * float conversions. Pure, so the browser page (runtime/web/browser) shares it with the CLI;
 * safetensors.ts adds reading and atomic writing of files on top.
 *
 * Layout: an 8-byte little-endian header length, a JSON header
 * `{name: {dtype, shape, data_offsets: [begin, end]}, __metadata__?: {string: string}}`, then
 * the tensor bytes.
 */
import { HollowcError } from '../../compiler/errors';

export type SafetensorsDtype = 'F32' | 'F16' | 'BF16' | 'F64' | 'I64' | 'I32' | 'I16' | 'I8' | 'U8' | 'BOOL';

const DTYPE_BYTES: Record<SafetensorsDtype, number> = { F32: 4, F16: 2, BF16: 2, F64: 8, I64: 8, I32: 4, I16: 2, I8: 1, U8: 1, BOOL: 1 };

export interface SafeTensor {
  dtype: SafetensorsDtype;
  shape: number[];
  /** Raw little-endian bytes. */
  data: Uint8Array;
}

export interface SafetensorsFile {
  tensors: Map<string, SafeTensor>;
  metadata: Record<string, string>;
}

export function float32Tensor(shape: number[], values: Float32Array): SafeTensor {
  return { dtype: 'F32', shape, data: new Uint8Array(values.buffer, values.byteOffset, values.byteLength) };
}

/** The tensor's values as float32 (F32 as is, F16/BF16/F64 converted). */
export function toFloat32(t: SafeTensor, name = 'tensor'): Float32Array {
  const count = t.shape.reduce((a, b) => a * b, 1);
  const bytes = new Uint8Array(t.data); // aligned copy
  switch (t.dtype) {
    case 'F32':
      return new Float32Array(bytes.buffer, 0, count);
    case 'F64':
      return Float32Array.from(new Float64Array(bytes.buffer, 0, count));
    case 'BF16': {
      const u16 = new Uint16Array(bytes.buffer, 0, count);
      const u32 = new Uint32Array(count);
      for (let i = 0; i < count; i++) u32[i] = u16[i] << 16;
      return new Float32Array(u32.buffer);
    }
    case 'F16': {
      const u16 = new Uint16Array(bytes.buffer, 0, count);
      return Float32Array.from(u16, halfToFloat);
    }
    default:
      throw new HollowcError(`${name} has dtype ${t.dtype}; expected a float tensor`);
  }
}

function halfToFloat(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >> 10) & 0x1f;
  const frac = h & 0x3ff;
  if (exp === 0) return sign * 2 ** -14 * (frac / 1024);
  if (exp === 31) return frac ? NaN : sign * Infinity;
  return sign * 2 ** (exp - 15) * (1 + frac / 1024);
}

// `ignoreBOM`: a header that starts with a byte-order mark is not JSON (as Buffer#toString keeps it).
const utf8Decoder = new TextDecoder('utf-8', { ignoreBOM: true });
const utf8Encoder = new TextEncoder();

/** Parses a whole file's bytes; tensor data are views into `bytes` (subarrays of a Buffer are Buffers). */
export function parseSafetensors(bytes: Uint8Array, label: string): SafetensorsFile {
  if (bytes.byteLength < 8) throw new HollowcError('not a safetensors file (shorter than its header length)', label);
  const headerLength = Number(new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength).getBigUint64(0, true));
  if (headerLength > bytes.byteLength - 8 || headerLength > 100 * 2 ** 20)
    throw new HollowcError(`not a safetensors file (header length ${headerLength} does not fit the file)`, label);
  let header: Record<string, unknown>;
  try {
    header = JSON.parse(utf8Decoder.decode(bytes.subarray(8, 8 + headerLength)));
  } catch (e) {
    throw new HollowcError(`not a safetensors file (header is not JSON: ${(e as Error).message})`, label);
  }
  if (header === null || typeof header !== 'object' || Array.isArray(header))
    throw new HollowcError('not a safetensors file (header is not a JSON object)', label);
  const dataStart = 8 + headerLength;
  const tensors = new Map<string, SafeTensor>();
  const ranges: { name: string; begin: number; end: number }[] = [];
  let metadata: Record<string, string> = {};
  for (const [name, entry] of Object.entries(header)) {
    if (name === '__metadata__') {
      if (entry === null || typeof entry !== 'object' || Object.values(entry).some((v) => typeof v !== 'string'))
        throw new HollowcError('__metadata__ is not a map of strings', label);
      metadata = entry as Record<string, string>;
      continue;
    }
    const e = entry as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
    const size = typeof e?.dtype === 'string' ? DTYPE_BYTES[e.dtype as SafetensorsDtype] : undefined;
    if (!size) throw new HollowcError(`tensor ${name}: unsupported dtype ${JSON.stringify(e?.dtype)}`, label);
    const shape = e.shape;
    if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0))
      throw new HollowcError(`tensor ${name}: shape ${JSON.stringify(shape)} is not a list of sizes`, label);
    const offsets = e.data_offsets;
    if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every((o) => Number.isSafeInteger(o)))
      throw new HollowcError(`tensor ${name}: data_offsets ${JSON.stringify(offsets)} are not two integers`, label);
    const [begin, end] = offsets as [number, number];
    const expected = (shape as number[]).reduce((a, b) => a * b, 1) * size;
    if (!(begin >= 0 && end - begin === expected && dataStart + end <= bytes.byteLength)) {
      throw new HollowcError(
        `tensor ${name}: data_offsets [${begin}, ${end}] do not match shape [${shape}] ${e.dtype} or the file size`,
        label,
      );
    }
    ranges.push({ name, begin, end });
    tensors.set(name, {
      dtype: e.dtype as SafetensorsDtype,
      shape: shape as number[],
      data: bytes.subarray(dataStart + begin, dataStart + end),
    });
  }
  ranges.sort((a, b) => a.begin - b.begin);
  for (let i = 1; i < ranges.length; i++) {
    if (ranges[i].begin < ranges[i - 1].end)
      throw new HollowcError(
        `tensors ${ranges[i - 1].name} and ${ranges[i].name} overlap in the data (bytes ${ranges[i].begin}..${ranges[i - 1].end})`,
        label,
      );
  }
  return { tensors, metadata };
}

/** The 8-byte length and the JSON header (names sorted, padded to 8 bytes) of a file. */
export function encodeSafetensorsHeader(
  tensors: Map<string, SafeTensor>,
  metadata: Record<string, string>,
): { head: Uint8Array; names: string[] } {
  for (const [name, t] of tensors) {
    const expected = t.shape.reduce((a, b) => a * b, 1) * DTYPE_BYTES[t.dtype];
    if (expected !== t.data.byteLength) throw new Error(`tensor ${name}: ${t.data.byteLength} bytes for shape [${t.shape}] ${t.dtype}`);
  }
  return encodeHeaderOf(tensors, metadata);
}

/** The bytes a tensor of `dtype` and `shape` takes. */
export function tensorBytes(dtype: SafetensorsDtype, shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1) * DTYPE_BYTES[dtype];
}

/** The header of a file whose tensors are described, not held (a writer that streams their bytes after it). */
export function encodeHeaderOf(
  tensors: ReadonlyMap<string, { dtype: SafetensorsDtype; shape: readonly number[] }>,
  metadata: Record<string, string>,
): { head: Uint8Array; names: string[] } {
  const header: Record<string, unknown> = {};
  if (Object.keys(metadata).length) header.__metadata__ = metadata;
  let offset = 0;
  const names = [...tensors.keys()].sort();
  for (const name of names) {
    const t = tensors.get(name)!;
    const length = tensorBytes(t.dtype, t.shape);
    header[name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + length] };
    offset += length;
  }
  const raw = utf8Encoder.encode(JSON.stringify(header));
  // The format pads the header with spaces so the data starts 8-byte aligned.
  const padded = raw.byteLength + ((8 - (raw.byteLength % 8)) % 8);
  const head = new Uint8Array(8 + padded).fill(0x20, 8 + raw.byteLength);
  new DataView(head.buffer).setBigUint64(0, BigInt(padded), true);
  head.set(raw, 8);
  return { head, names };
}

/** A whole file's bytes. */
export function encodeSafetensorsBytes(tensors: Map<string, SafeTensor>, metadata: Record<string, string> = {}): Uint8Array {
  const { head, names } = encodeSafetensorsHeader(tensors, metadata);
  const out = new Uint8Array(head.byteLength + names.reduce((a, n) => a + tensors.get(n)!.data.byteLength, 0));
  out.set(head, 0);
  let at = head.byteLength;
  for (const n of names) {
    const d = tensors.get(n)!.data;
    out.set(d, at);
    at += d.byteLength;
  }
  return out;
}
