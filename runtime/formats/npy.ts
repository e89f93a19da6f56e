/**
 * NumPy .npy files (format 1.0-3.0), little-endian numeric dtypes: the reference fixtures and
 * the data files users hand to `precompute` come in this format.
 */
import * as fs from 'fs';
import { HollowcError } from '../../compiler/errors';
import { writeFileAtomic } from '../../compiler/atomic-files';

export type NpyData = Float32Array | Float64Array | Int32Array | BigInt64Array | Uint8Array | Int8Array | Int16Array | Uint16Array;

export interface NpyArray {
  dtype: 'float32' | 'float64' | 'int32' | 'int64' | 'uint8' | 'int8' | 'int16' | 'uint16' | 'bool';
  shape: number[];
  data: NpyData;
}

const DESCR: Record<string, NpyArray['dtype']> = {
  '<f4': 'float32',
  '<f8': 'float64',
  '<i4': 'int32',
  '<i8': 'int64',
  '|u1': 'uint8',
  '|i1': 'int8',
  '<i2': 'int16',
  '<u2': 'uint16',
  '|b1': 'bool',
};

const MAGIC = Buffer.from([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59]);

const ELEMENT_BYTES: Record<NpyArray['dtype'], number> = {
  float32: 4,
  float64: 8,
  int32: 4,
  int64: 8,
  uint8: 1,
  int8: 1,
  int16: 2,
  uint16: 2,
  bool: 1,
};

export function parseNpy(bytes: Uint8Array, label: string): NpyArray {
  const buf = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (buf.byteLength < 10 || !buf.subarray(0, 6).equals(MAGIC)) throw new HollowcError('not a .npy file (bad magic)', label);
  const major = buf[6];
  const headerLen = major === 1 ? buf.readUInt16LE(8) : buf.readUInt32LE(8);
  const headerStart = major === 1 ? 10 : 12;
  const header = buf.toString(major === 3 ? 'utf8' : 'latin1', headerStart, headerStart + headerLen);
  const descr = /'descr':\s*'([^']+)'/.exec(header)?.[1];
  const fortran = /'fortran_order':\s*(True|False)/.exec(header)?.[1];
  const shapeText = /'shape':\s*\(([^)]*)\)/.exec(header)?.[1];
  if (!descr || !fortran || shapeText === undefined) throw new HollowcError(`unreadable .npy header ${JSON.stringify(header)}`, label);
  const dtype = DESCR[descr];
  if (!dtype)
    throw new HollowcError(`unsupported .npy dtype ${descr} (expected little-endian float32/64, int8/16/32/64, uint8/16, bool)`, label);
  if (fortran === 'True') throw new HollowcError('Fortran-ordered .npy arrays are not supported', label);
  const shape = shapeText
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s.length > 0)
    .map(Number);
  if (!shape.every((d) => Number.isSafeInteger(d) && d >= 0))
    throw new HollowcError(`.npy shape (${shapeText}) is not a list of sizes`, label);
  const count = shape.reduce((a, b) => a * b, 1);
  const start = headerStart + headerLen;
  // Checked before anything is allocated: a header may claim any shape.
  const needed = count * ELEMENT_BYTES[dtype];
  const available = buf.byteLength - start;
  if (!Number.isSafeInteger(needed) || needed > available)
    throw new HollowcError(`.npy body is ${Math.max(0, available)} bytes, shape [${shape}] needs ${needed}`, label);
  // Copy into a fresh, aligned buffer: typed arrays need element alignment.
  const body = new Uint8Array(buf.subarray(start, start + needed));
  return { dtype, shape, data: typedView(dtype, body.buffer, count) };
}

function typedView(dtype: NpyArray['dtype'], buffer: ArrayBufferLike, count: number): NpyData {
  switch (dtype) {
    case 'float32':
      return new Float32Array(buffer, 0, count);
    case 'float64':
      return new Float64Array(buffer, 0, count);
    case 'int32':
      return new Int32Array(buffer, 0, count);
    case 'int64':
      return new BigInt64Array(buffer, 0, count);
    case 'int8':
      return new Int8Array(buffer, 0, count);
    case 'int16':
      return new Int16Array(buffer, 0, count);
    case 'uint16':
      return new Uint16Array(buffer, 0, count);
    default:
      return new Uint8Array(buffer, 0, count);
  }
}

export function readNpy(file: string): NpyArray {
  let bytes: Buffer;
  try {
    bytes = fs.readFileSync(file);
  } catch (e) {
    throw new HollowcError(`cannot read: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`, file);
  }
  return parseNpy(bytes, file);
}

export function encodeNpy(array: NpyArray): Buffer {
  const descr = Object.entries(DESCR).find(([, d]) => d === array.dtype)![0];
  const shape = array.shape.length === 1 ? `(${array.shape[0]},)` : `(${array.shape.join(', ')})`;
  let header = `{'descr': '${descr}', 'fortran_order': False, 'shape': ${shape}, }`;
  // The header is padded with spaces so that the data starts on a 64-byte boundary.
  const unpadded = 10 + header.length + 1;
  header += ' '.repeat((64 - (unpadded % 64)) % 64) + '\n';
  const head = Buffer.alloc(10);
  MAGIC.copy(head, 0);
  head[6] = 1;
  head[7] = 0;
  head.writeUInt16LE(header.length, 8);
  const d = array.data;
  return Buffer.concat([head, Buffer.from(header, 'latin1'), Buffer.from(d.buffer, d.byteOffset, d.byteLength)]);
}

export function writeNpy(file: string, array: NpyArray): void {
  writeFileAtomic(file, encodeNpy(array));
}

/** Latents [N, C, h, w] (or one, [C, h, w]) from a float32 or float64 .npy, as float32 [N, C, h, w]. */
export function readLatentBatch(file: string): { data: Float32Array; shape: number[] } {
  const a = readNpy(file);
  const data = a.data instanceof Float32Array ? a.data : a.data instanceof Float64Array ? Float32Array.from(a.data) : undefined;
  if (!data) throw new HollowcError(`expected float32 or float64 latents, found ${a.dtype}`, file);
  const shape = a.shape.length === 3 ? [1, ...a.shape] : a.shape;
  if (shape.length !== 4) throw new HollowcError(`latents must be [N, C, h, w] or [C, h, w], found [${a.shape}]`, file);
  return { data, shape };
}
