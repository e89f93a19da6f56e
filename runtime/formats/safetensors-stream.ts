/**
 * safetensors files too large to hold at once (a whole UNet, a full fine-tune's weights): the index
 * read from the header alone, one tensor's bytes read where they lie, and a writer that streams
 * each tensor's bytes after the header, one tensor at a time (temporary sibling, fsync, rename).
 */
import * as crypto from 'crypto';
import * as fs from 'fs';
import { tempSibling } from '../../compiler/atomic-files';
import { HollowcError } from '../../compiler/errors';
import { SafetensorsDtype, encodeHeaderOf, tensorBytes, toFloat32 } from './safetensors-format';

export interface IndexedTensor {
  dtype: SafetensorsDtype;
  shape: number[];
  /** Where its bytes start in the file, and how many. */
  offset: number;
  length: number;
}

const DTYPES: readonly SafetensorsDtype[] = ['F32', 'F16', 'BF16', 'F64', 'I64', 'I32', 'I16', 'I8', 'U8', 'BOOL'];

function readAt(fd: number, length: number, position: number, file: string): Buffer {
  const buf = Buffer.alloc(length);
  readInto(fd, buf, position, file);
  return buf;
}

function readInto(fd: number, into: Uint8Array, position: number, file: string): void {
  for (let done = 0; done < into.byteLength;) {
    const n = fs.readSync(fd, into, done, into.byteLength - done, position + done);
    if (n === 0) throw new HollowcError(`ends at byte ${position + done}, before ${position + into.byteLength}`, file);
    done += n;
  }
}

/** The tensors of a file and where their bytes lie, from its header (no tensor is read). */
export function readSafetensorsIndex(file: string): { tensors: Map<string, IndexedTensor>; metadata: Record<string, string> } {
  let fd: number;
  try {
    fd = fs.openSync(file, 'r');
  } catch (e) {
    throw new HollowcError(`cannot read: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`, file);
  }
  try {
    const size = fs.fstatSync(fd).size;
    if (size < 8) throw new HollowcError('not a safetensors file (shorter than its header length)', file);
    const headerLength = Number(readAt(fd, 8, 0, file).readBigUInt64LE(0));
    if (headerLength > size - 8 || headerLength > 100 * 2 ** 20)
      throw new HollowcError(`not a safetensors file (header length ${headerLength} does not fit the file)`, file);
    let header: Record<string, { dtype?: unknown; shape?: unknown; data_offsets?: unknown }>;
    try {
      header = JSON.parse(readAt(fd, headerLength, 8, file).toString('utf8'));
    } catch (e) {
      throw new HollowcError(`not a safetensors file (header is not JSON: ${(e as Error).message})`, file);
    }
    const tensors = new Map<string, IndexedTensor>();
    let metadata: Record<string, string> = {};
    for (const [name, e] of Object.entries(header)) {
      if (name === '__metadata__') {
        metadata = e as unknown as Record<string, string>;
        continue;
      }
      const dtype = e?.dtype as SafetensorsDtype;
      const shape = e?.shape as number[];
      const offsets = e?.data_offsets as [number, number];
      if (!DTYPES.includes(dtype) || !Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0))
        throw new HollowcError(
          `tensor ${name}: dtype ${JSON.stringify(e?.dtype)} or shape ${JSON.stringify(shape)} is not one safetensors has`,
          file,
        );
      const length = tensorBytes(dtype, shape);
      const offset = 8 + headerLength + (Array.isArray(offsets) ? offsets[0] : NaN);
      if (!Array.isArray(offsets) || offsets[1] - offsets[0] !== length || !(offset >= 8 + headerLength) || offset + length > size)
        throw new HollowcError(
          `tensor ${name}: data_offsets ${JSON.stringify(offsets)} do not match shape [${shape}] ${dtype} or the file size`,
          file,
        );
      tensors.set(name, { dtype, shape, offset, length });
    }
    return { tensors, metadata };
  } finally {
    fs.closeSync(fd);
  }
}

/** One tensor's bytes, read where they lie. */
export function readIndexedTensor(file: string, t: IndexedTensor): Uint8Array {
  const fd = fs.openSync(file, 'r');
  try {
    return readAt(fd, t.length, t.offset, file);
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * One tensor read from the open file `fd` straight into the array it is returned in (F32; U8 as
 * bytes), or converted from F16/BF16/F64: memory beside the result is at most this tensor's bytes.
 */
export function readIndexedValues(fd: number, file: string, name: string, t: IndexedTensor): Float32Array | Uint8Array {
  if (t.dtype === 'F32' || t.dtype === 'U8') {
    const values = t.dtype === 'F32' ? new Float32Array(t.length / 4) : new Uint8Array(t.length);
    readInto(fd, new Uint8Array(values.buffer), t.offset, file);
    return values;
  }
  return toFloat32({ dtype: t.dtype, shape: t.shape, data: readAt(fd, t.length, t.offset, file) }, name);
}

/** A tensor whose bytes are produced when the file is written (chunks in order, `length` bytes in all). */
export interface StreamedTensor {
  dtype: SafetensorsDtype;
  shape: number[];
  produce(write: (chunk: Uint8Array) => void): void;
}

/**
 * Writes the file tensor by tensor, each produced as it is written, to a temporary sibling,
 * fsyncs and renames it (a reader sees no half-written file). Returns its sha256.
 */
export function writeSafetensorsStreamed(
  file: string,
  tensors: Map<string, StreamedTensor>,
  metadata: Record<string, string> = {},
): string {
  const { head, names } = encodeHeaderOf(tensors, metadata);
  const hash = crypto.createHash('sha256');
  const tmp = tempSibling(file);
  const fd = fs.openSync(tmp, 'w');
  let open = true;
  try {
    const write = (bytes: Uint8Array) => {
      hash.update(bytes);
      for (let done = 0; done < bytes.byteLength;) done += fs.writeSync(fd, bytes, done, bytes.byteLength - done);
    };
    write(head);
    for (const name of names) {
      const t = tensors.get(name)!;
      let written = 0;
      t.produce((chunk) => {
        written += chunk.byteLength;
        write(chunk);
      });
      if (written !== tensorBytes(t.dtype, t.shape))
        throw new Error(`tensor ${name}: ${written} bytes produced for [${t.shape}] ${t.dtype}`);
    }
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
