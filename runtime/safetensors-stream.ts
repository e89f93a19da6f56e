/**
 * A safetensors writer that streams tensors to disk instead of assembling the file in memory:
 * training checkpoints (LoRA + two AdamW moments; ~290 MB at the paper's rank 128) would
 * otherwise cost two extra copies of themselves in RSS at every checkpoint. Same bytes as
 * safetensors.ts `encodeSafetensors` (sorted names, header padded to 8 bytes); written to a
 * temporary sibling, fsynced, then renamed, so a reader sees the old file or the new one. Returns
 * the file's sha256.
 */
import * as crypto from 'crypto';
import * as fs from 'fs';
import type { SafeTensor } from './safetensors';

const DTYPE_BYTES: Record<string, number> = { F32: 4, F16: 2, BF16: 2, F64: 8, I64: 8, I32: 4, I16: 2, I8: 1, U8: 1, BOOL: 1 };

export function writeSafetensorsStreaming(file: string, tensors: Map<string, SafeTensor>, metadata: Record<string, string> = {}): string {
  const header: Record<string, unknown> = {};
  if (Object.keys(metadata).length) header.__metadata__ = metadata;
  const names = [...tensors.keys()].sort();
  let offset = 0;
  for (const name of names) {
    const t = tensors.get(name)!;
    const expected = t.shape.reduce((a, b) => a * b, 1) * DTYPE_BYTES[t.dtype];
    if (expected !== t.data.byteLength) throw new Error(`tensor ${name}: ${t.data.byteLength} bytes for shape [${t.shape}] ${t.dtype}`);
    header[name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + t.data.byteLength] };
    offset += t.data.byteLength;
  }
  let json = JSON.stringify(header);
  json += ' '.repeat((8 - (Buffer.byteLength(json) % 8)) % 8);
  const head = Buffer.alloc(8);
  head.writeBigUInt64LE(BigInt(Buffer.byteLength(json)));

  const hash = crypto.createHash('sha256');
  const tmp = `${file}.tmp-${process.pid}-${Date.now()}`;
  const fd = fs.openSync(tmp, 'w');
  try {
    const write = (bytes: Uint8Array) => {
      hash.update(bytes);
      let done = 0;
      while (done < bytes.byteLength) done += fs.writeSync(fd, bytes, done, bytes.byteLength - done);
    };
    write(head);
    write(Buffer.from(json, 'utf8'));
    for (const name of names) write(tensors.get(name)!.data);
    fs.fsyncSync(fd);
    fs.closeSync(fd);
    fs.renameSync(tmp, file);
  } catch (e) {
    try {
      fs.closeSync(fd);
    } catch {
      // already closed
    }
    fs.rmSync(tmp, { force: true });
    throw e;
  }
  return hash.digest('hex');
}
