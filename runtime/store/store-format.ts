/**
 * The store's record layout and checks on bytes alone (store.ts has the format's description
 * and the file handling): the field offsets, the CRC-32, a record's validity and its decoding.
 * Pure, so the browser page (runtime/web/browser) reads records.bin the way `hollowc train` does.
 */
import { HOLLOW_ACTIVATION, TARGET } from '../../compiler/manifest';
import type { StoreField, StoreHeader, StoreRecord } from './store';
import { SafeTensor, float32Tensor, toFloat32 } from '../formats/safetensors-format';
import type { Conditioning } from '../sampling/conditioning';

/** The store's folder inside a compiled folder, unless another is named. */
export const STORE_DIR = 'store';
export const STORE_FORMAT = 'hollowc-store';
export const STORE_VERSION = 1;
export const HEADER_FILE = 'store.json';
export const CONDITIONING_FILE = 'conditioning.safetensors';
export const RECORDS_FILE = 'records.bin';
/** How many records the store's precompute aims at, and whether it got there (store.ts). */
export const PROGRESS_FILE = 'progress.json';

/** The noised latent a record holds (the store's own field; the others are artifact names). */
export const Z_T = 'z_t';
export const RECORD_MAGIC = 0x31524348;
const FIXED_BYTES = 24;

const size = (shape: readonly number[]) => shape.reduce((a, b) => a * b, 1);

/** Conditionings by id as conditioning.safetensors holds them: `cond.<id>.encoder_hidden_states` and `.text_embeds`. */
export function conditioningTensors(conditionings: Iterable<readonly [number, Conditioning]>): Map<string, SafeTensor> {
  const tensors = new Map<string, SafeTensor>();
  for (const [id, c] of conditionings) {
    tensors.set(`cond.${id}.encoder_hidden_states`, float32Tensor(c.encoderHiddenStates.shape, c.encoderHiddenStates.data));
    if (c.textEmbeds) tensors.set(`cond.${id}.text_embeds`, float32Tensor(c.textEmbeds.shape, c.textEmbeds.data));
  }
  return tensors;
}

/** Conditioning `id` of conditioningTensors' layout, or undefined when the tensors lack it. */
export function conditioningOf(tensors: ReadonlyMap<string, SafeTensor>, id: number): Conditioning | undefined {
  const ehs = tensors.get(`cond.${id}.encoder_hidden_states`);
  if (!ehs) return undefined;
  const te = tensors.get(`cond.${id}.text_embeds`);
  return {
    encoderHiddenStates: { shape: ehs.shape, data: toFloat32(ehs) },
    ...(te ? { textEmbeds: { shape: te.shape, data: toFloat32(te) } } : {}),
  };
}

/** The record layout for a latent and activation shape (per sample, no batch dimension). */
export function recordLayout(
  latentShape: readonly number[],
  activationShape: readonly number[],
): { fields: StoreField[]; recordBytes: number } {
  const fields: StoreField[] = [];
  let offset = FIXED_BYTES;
  for (const [name, shape] of [
    [Z_T, latentShape],
    [TARGET, latentShape],
    [HOLLOW_ACTIVATION, activationShape],
  ] as const) {
    fields.push({ name, dtype: 'float32', shape: [...shape], offset });
    offset += 4 * size(shape);
  }
  return { fields, recordBytes: offset + 4 };
}

let crcTable: Uint32Array | undefined;
/** CRC-32 (IEEE, as zlib), table-driven. */
export function crc32Table(data: Uint8Array, value = 0): number {
  if (!crcTable) {
    crcTable = new Uint32Array(256);
    for (let n = 0; n < 256; n++) {
      let c = n;
      for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
      crcTable[n] = c >>> 0;
    }
  }
  let c = ~value >>> 0;
  for (let i = 0; i < data.length; i++) c = crcTable[(c ^ data[i]) & 0xff] ^ (c >>> 8);
  return ~c >>> 0;
}

/** What is wrong with the record bytes `rec` (recordBytes long) at `index`, or undefined. */
export function recordProblem(
  rec: Uint8Array,
  recordBytes: number,
  index: number,
  crc: (d: Uint8Array) => number = crc32Table,
): string | undefined {
  const view = new DataView(rec.buffer, rec.byteOffset, rec.byteLength);
  if (view.getUint32(0, true) !== RECORD_MAGIC) return 'bad magic';
  const stored = view.getUint32(recordBytes - 4, true);
  if (crc(rec.subarray(0, recordBytes - 4)) !== stored) return 'checksum mismatch';
  if (view.getUint32(4, true) !== index) return `holds index ${view.getUint32(4, true)}`;
  return undefined;
}

/** Record `index` of a whole records.bin, checked; throws naming the record when it is corrupt. */
export function decodeRecord(records: Uint8Array, header: StoreHeader, index: number): StoreRecord {
  const n = header.recordBytes;
  if (!(index >= 0 && (index + 1) * n <= records.byteLength))
    throw new Error(`record ${index} is outside the store (${Math.floor(records.byteLength / n)} records)`);
  const rec = records.subarray(index * n, (index + 1) * n);
  const problem = recordProblem(rec, n, index);
  if (problem) throw new Error(`record ${index} is corrupt (${problem}); rebuild the store with hollowc precompute`);
  const view = new DataView(rec.buffer, rec.byteOffset, rec.byteLength);
  const field = (name: string) => {
    const f = header.fields.find((x) => x.name === name)!;
    // A copy: the record's offset inside the file need not be 4-byte aligned.
    return new Float32Array(rec.slice(f.offset, f.offset + 4 * size(f.shape)).buffer);
  };
  return {
    index,
    sampleId: view.getUint32(8, true),
    condId: view.getUint32(12, true),
    isClass: (view.getUint32(16, true) & 1) === 1,
    timestep: view.getInt32(20, true),
    zt: field(Z_T),
    target: field(TARGET),
    activation: field(HOLLOW_ACTIVATION),
  };
}
