/**
 * safetensors files: an 8-byte little-endian header length, a JSON header
 * `{name: {dtype, shape, data_offsets: [begin, end]}, __metadata__?: {string: string}}`, then
 * the tensor bytes. This is the format diffusers, peft, kohya, ComfyUI and A1111 load LoRAs from.
 */
import * as crypto from 'crypto';
import * as fs from 'fs';
import { HollowcError } from '../compiler/errors';

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

export function parseSafetensors(bytes: Uint8Array, label: string): SafetensorsFile {
  const buf = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (buf.byteLength < 8) throw new HollowcError('not a safetensors file (shorter than its header length)', label);
  const headerLength = Number(buf.readBigUInt64LE(0));
  if (headerLength > buf.byteLength - 8 || headerLength > 100 * 2 ** 20) throw new HollowcError(`not a safetensors file (header length ${headerLength} does not fit the file)`, label);
  let header: Record<string, unknown>;
  try {
    header = JSON.parse(buf.toString('utf8', 8, 8 + headerLength));
  } catch (e) {
    throw new HollowcError(`not a safetensors file (header is not JSON: ${(e as Error).message})`, label);
  }
  if (header === null || typeof header !== 'object' || Array.isArray(header)) throw new HollowcError('not a safetensors file (header is not a JSON object)', label);
  const dataStart = 8 + headerLength;
  const tensors = new Map<string, SafeTensor>();
  const ranges: { name: string; begin: number; end: number }[] = [];
  let metadata: Record<string, string> = {};
  for (const [name, entry] of Object.entries(header)) {
    if (name === '__metadata__') {
      if (entry === null || typeof entry !== 'object' || Object.values(entry).some((v) => typeof v !== 'string')) throw new HollowcError('__metadata__ is not a map of strings', label);
      metadata = entry as Record<string, string>;
      continue;
    }
    const e = entry as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
    const size = typeof e?.dtype === 'string' ? DTYPE_BYTES[e.dtype as SafetensorsDtype] : undefined;
    if (!size) throw new HollowcError(`tensor ${name}: unsupported dtype ${JSON.stringify(e?.dtype)}`, label);
    const shape = e.shape;
    if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0)) throw new HollowcError(`tensor ${name}: shape ${JSON.stringify(shape)} is not a list of sizes`, label);
    const offsets = e.data_offsets;
    if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every((o) => Number.isSafeInteger(o))) throw new HollowcError(`tensor ${name}: data_offsets ${JSON.stringify(offsets)} are not two integers`, label);
    const [begin, end] = offsets as [number, number];
    const expected = (shape as number[]).reduce((a, b) => a * b, 1) * size;
    if (!(begin >= 0 && end - begin === expected && dataStart + end <= buf.byteLength)) {
      throw new HollowcError(`tensor ${name}: data_offsets [${begin}, ${end}] do not match shape [${shape}] ${e.dtype} or the file size`, label);
    }
    ranges.push({ name, begin, end });
    tensors.set(name, { dtype: e.dtype as SafetensorsDtype, shape: shape as number[], data: buf.subarray(dataStart + begin, dataStart + end) });
  }
  ranges.sort((a, b) => a.begin - b.begin);
  for (let i = 1; i < ranges.length; i++) {
    if (ranges[i].begin < ranges[i - 1].end) throw new HollowcError(`tensors ${ranges[i - 1].name} and ${ranges[i].name} overlap in the data (bytes ${ranges[i].begin}..${ranges[i - 1].end})`, label);
  }
  return { tensors, metadata };
}

export function readSafetensors(file: string): SafetensorsFile {
  let bytes: Buffer;
  try {
    bytes = fs.readFileSync(file);
  } catch (e) {
    throw new HollowcError(`cannot read: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`, file);
  }
  return parseSafetensors(bytes, file);
}

/** The 8-byte length and the JSON header (names sorted, padded to 8 bytes) of a file. */
function encodeHeader(tensors: Map<string, SafeTensor>, metadata: Record<string, string>): { head: Buffer; names: string[] } {
  const header: Record<string, unknown> = {};
  if (Object.keys(metadata).length) header.__metadata__ = metadata;
  let offset = 0;
  const names = [...tensors.keys()].sort();
  for (const name of names) {
    const t = tensors.get(name)!;
    const expected = t.shape.reduce((a, b) => a * b, 1) * DTYPE_BYTES[t.dtype];
    if (expected !== t.data.byteLength) throw new Error(`tensor ${name}: ${t.data.byteLength} bytes for shape [${t.shape}] ${t.dtype}`);
    header[name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + t.data.byteLength] };
    offset += t.data.byteLength;
  }
  let json = JSON.stringify(header);
  // The format pads the header with spaces so the data starts 8-byte aligned.
  json += ' '.repeat((8 - (Buffer.byteLength(json) % 8)) % 8);
  const length = Buffer.alloc(8);
  length.writeBigUInt64LE(BigInt(Buffer.byteLength(json)));
  return { head: Buffer.concat([length, Buffer.from(json, 'utf8')]), names };
}

export function encodeSafetensors(tensors: Map<string, SafeTensor>, metadata: Record<string, string> = {}): Buffer {
  const { head, names } = encodeHeader(tensors, metadata);
  return Buffer.concat([head, ...names.map((n) => Buffer.from(tensors.get(n)!.data))]);
}

/**
 * Writes the file tensor by tensor (no in-memory copy of the whole file: training checkpoints
 * are ~290 MB at rank 128) to a temporary sibling, fsyncs and renames it, so a reader sees the
 * old file or the new one. Returns the file's sha256.
 */
export function writeSafetensors(file: string, tensors: Map<string, SafeTensor>, metadata: Record<string, string> = {}): string {
  const { head, names } = encodeHeader(tensors, metadata);
  const hash = crypto.createHash('sha256');
  const tmp = `${file}.tmp-${process.pid}-${Date.now()}`;
  const fd = fs.openSync(tmp, 'w');
  let open = true;
  try {
    const write = (bytes: Uint8Array) => {
      hash.update(bytes);
      let done = 0;
      while (done < bytes.byteLength) done += fs.writeSync(fd, bytes, done, bytes.byteLength - done);
    };
    write(head);
    for (const name of names) write(tensors.get(name)!.data);
    fs.fsyncSync(fd);
    fs.closeSync(fd);
    open = false;
    fs.renameSync(tmp, file);
  } catch (e) {
    if (open) fs.closeSync(fd);
    fs.rmSync(tmp, { force: true });
    throw e;
  }
  return hash.digest('hex');
}
