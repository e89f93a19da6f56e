/**
 * safetensors files: an 8-byte little-endian header length, a JSON header
 * `{name: {dtype, shape, data_offsets: [begin, end]}, __metadata__?: {string: string}}`, then
 * the tensor bytes. This is the format diffusers, peft, kohya, ComfyUI and A1111 load LoRAs from.
 * The byte-level codec is safetensors-format.ts (pure, shared with the browser page); this file
 * reads and writes files.
 */
import * as fs from 'fs';
import { HollowcError } from '../../compiler/errors';
import { SafeTensor, SafetensorsFile, encodeSafetensorsBytes, encodeSafetensorsHeader, parseSafetensors } from './safetensors-format';
import { StreamedTensor, writeSafetensorsStreamed } from './safetensors-stream';

export type { SafeTensor, SafetensorsDtype, SafetensorsFile } from './safetensors-format';
export { float32Tensor, parseSafetensors, toFloat32 } from './safetensors-format';

export function readSafetensors(file: string): SafetensorsFile {
  let bytes: Buffer;
  try {
    bytes = fs.readFileSync(file);
  } catch (e) {
    throw new HollowcError(`cannot read: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`, file);
  }
  return parseSafetensors(bytes, file);
}

export function encodeSafetensors(tensors: Map<string, SafeTensor>, metadata: Record<string, string> = {}): Buffer {
  const bytes = encodeSafetensorsBytes(tensors, metadata);
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

/**
 * Writes the file tensor by tensor (no in-memory copy of the whole file: training checkpoints
 * are ~290 MB at rank 128) to a temporary sibling, fsyncs and renames it, so a reader sees the
 * old file or the new one (writeSafetensorsStreamed, with each tensor's bytes at hand). Returns the
 * file's sha256.
 */
export function writeSafetensors(file: string, tensors: Map<string, SafeTensor>, metadata: Record<string, string> = {}): string {
  encodeSafetensorsHeader(tensors, metadata); // each tensor's byte count against its shape, before any write
  const streamed = new Map<string, StreamedTensor>();
  for (const [name, t] of tensors) streamed.set(name, { dtype: t.dtype, shape: t.shape, produce: (write) => write(t.data) });
  return writeSafetensorsStreamed(file, streamed, metadata);
}
