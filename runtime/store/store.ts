/**
 * The precompute store: what `hollowc precompute` writes and `hollowc train` reads. A folder
 * (default `<out>/store/`) of four files:
 *
 *   store.json                 header, written once (temp + rename) when the store is created:
 *                              format/version, record layout (every field's name, dtype, shape and
 *                              byte offset), recordBytes, the family, prediction type, seed, the
 *                              data fingerprint, the conditioning roles and the SDXL time_ids.
 *   conditioning.safetensors   the conditioning table, written once: `cond.<id>.encoder_hidden_states`
 *                              [T, D] (+ `cond.<id>.text_embeds` [P] for SDXL). Id 0 is the
 *                              instance prompt ("a photo of sks dog"), id 1 the class prompt
 *                              ("a photo of a dog"); records refer to them by id.
 *   records.bin                append-only, fixed-size little-endian records, one per sample:
 *
 *     offset  type        field
 *     0       u32         magic 0x31524348 ("HCR1")
 *     4       u32         index: the record's position in the store (0-based)
 *     8       u32         sample_id: which latent (instance or class list, by sorted file name)
 *     12      u32         cond_id: the conditioning the LoRA path trains against (0 instance, 1 class)
 *     16      u32         flags: bit 0 = class (prior-preservation) sample
 *     20      i32         timestep t in 0..T-1
 *     24      f32[C,h,w]  z_t = sqrt(abar_t) z + sqrt(1 - abar_t) eps
 *     ..      f32[C,h,w]  target: eps (epsilon models) or v (v-prediction models)
 *     ..      f32[...]    hollow_activation: precompute.onnx on (z_t, t, class conditioning)
 *     end-4   u32         CRC-32 (IEEE, as zlib) of every byte of the record before it
 *
 *   progress.json              `{"count": N, "finished": false}` while a precompute fills the store
 *                              towards N records, `{"count": N, "finished": true}` once it holds
 *                              them (rewritten atomically). `train` (verify()) refuses a store that
 *                              is unfinished or holds other than N records: a killed precompute or
 *                              a records.bin cut back would otherwise train on part of the data.
 *
 * Crash safety: a record is appended at `count * recordBytes` with one positioned write. On open,
 * a partial record at the end (a write cut short) is cut off, and a complete last record whose
 * checksum or index is wrong (a torn write that extended the file) is dropped; precompute then
 * continues from the count on disk. A bad record before the last one is corruption, not a torn
 * write: reading it throws (`verify()` checks them all).
 */
import * as fs from 'fs';
import * as path from 'path';
import * as zlib from 'zlib';
import { HollowcError } from '../../compiler/errors';
import { HOLLOW_ACTIVATION, TARGET } from '../../compiler/manifest';
import { writeFileAtomic } from '../../compiler/atomic-files';
import { readSafetensors, writeSafetensors } from '../formats/safetensors';
import type { Conditioning } from '../sampling/conditioning';
import { RECORD_MAGIC, Z_T, conditioningOf, conditioningTensors, crc32Table, recordLayout, recordProblem } from './store-format';

export { recordLayout } from './store-format';

import { CONDITIONING_FILE, HEADER_FILE, PROGRESS_FILE, RECORDS_FILE, STORE_FORMAT, STORE_VERSION } from './store-format';

export { CONDITIONING_FILE, HEADER_FILE, PROGRESS_FILE, RECORDS_FILE, STORE_FORMAT, STORE_VERSION } from './store-format';

export interface StoreField {
  name: typeof Z_T | typeof TARGET | typeof HOLLOW_ACTIVATION;
  dtype: 'float32';
  shape: number[];
  offset: number;
}

export interface StoreHeader {
  format: typeof STORE_FORMAT;
  version: number;
  recordBytes: number;
  fields: StoreField[];
  latentShape: number[];
  activationShape: number[];
  family: string;
  prediction: 'epsilon' | 'v_prediction';
  seed: number;
  /** sha256 over the input data (latents, conditionings) and seed: a rerun must match it. */
  fingerprint: string;
  /** Roles of the conditioning ids. */
  /** `caption`: one caption of a captioned set (precompute.ts FIRST_CAPTION_COND). */
  conditionings: { id: number; role: 'instance' | 'class' | 'caption'; source?: string }[];
  /** Latent file names by sample id. */
  instanceSamples: string[];
  classSamples: string[];
  /** SDXL: the time_ids every sample uses. */
  timeIds?: number[];
  /** Anything else the writer wants to remember (precompute.onnx hash, ...). */
  extra?: Record<string, unknown>;
}

export interface StoreRecord {
  index: number;
  sampleId: number;
  condId: number;
  isClass: boolean;
  timestep: number;
  zt: Float32Array;
  target: Float32Array;
  activation: Float32Array;
}

/** progress.json: the record count a precompute aims at (finished: false) or reached (true). */
export interface StoreProgress {
  count: number;
  finished: boolean;
}

export interface OpenResult {
  store: Store;
  /** Bytes cut off the end (a partial record) and records dropped for a bad checksum. */
  repaired: { bytes: number; records: number };
}

const size = (shape: readonly number[]) => shape.reduce((a, b) => a * b, 1);

// Node >= 20.15 has zlib.crc32 (native); older 20.x gets the table version.
export function crc32(data: Uint8Array, value = 0): number {
  const native = (zlib as { crc32?: (d: Uint8Array, v?: number) => number }).crc32;
  if (native) return native(data, value);
  return crc32Table(data, value);
}

export class Store {
  private fd: number;
  private _count: number;
  private readonly conds: Map<number, Conditioning>;
  private readonly writeBuf: Buffer;
  private unsynced = 0;

  private constructor(
    readonly dir: string,
    readonly header: StoreHeader,
    fd: number,
    count: number,
    conds: Map<number, Conditioning>,
  ) {
    this.fd = fd;
    this._count = count;
    this.conds = conds;
    this.writeBuf = Buffer.alloc(header.recordBytes);
  }

  static exists(dir: string): boolean {
    return fs.existsSync(path.join(dir, HEADER_FILE));
  }

  /** Creates an empty store that a precompute fills towards `count` records; the folder must not hold one already. */
  static create(
    dir: string,
    header: Omit<StoreHeader, 'format' | 'version' | 'recordBytes' | 'fields'>,
    conditionings: Map<number, Conditioning>,
    count: number,
  ): Store {
    if (Store.exists(dir)) throw new HollowcError('a store exists here already', dir);
    fs.mkdirSync(dir, { recursive: true });
    const layout = recordLayout(header.latentShape, header.activationShape);
    const full: StoreHeader = {
      format: STORE_FORMAT,
      version: STORE_VERSION,
      recordBytes: layout.recordBytes,
      fields: layout.fields,
      ...header,
    };
    writeSafetensors(path.join(dir, CONDITIONING_FILE), conditioningTensors(conditionings), { format: STORE_FORMAT });
    fs.writeFileSync(path.join(dir, RECORDS_FILE), new Uint8Array(0));
    writeProgress(dir, { count, finished: false });
    // The header goes last: a folder without it is not a store, whatever else it holds.
    writeFileAtomic(path.join(dir, HEADER_FILE), JSON.stringify(full, null, 2) + '\n');
    return Store.open(dir).store;
  }

  /** Opens a store for reading and appending, repairing a torn end (see the file comment). */
  static open(dir: string, options: { readOnly?: boolean } = {}): OpenResult {
    const header = Store.readHeader(dir);
    const conds = readConditionings(dir, header);

    const recordsFile = path.join(dir, RECORDS_FILE);
    const fd = fs.openSync(recordsFile, options.readOnly ? 'r' : 'r+');
    const repaired = { bytes: 0, records: 0 };
    let count: number;
    try {
      const bytes = fs.fstatSync(fd).size;
      count = Math.floor(bytes / header.recordBytes);
      const tail = bytes - count * header.recordBytes;
      if (tail > 0) {
        if (options.readOnly)
          throw new HollowcError(
            `ends in a partial record (${tail} bytes): open it for writing (hollowc precompute) to repair`,
            recordsFile,
          );
        fs.ftruncateSync(fd, count * header.recordBytes);
        repaired.bytes = tail;
      }
      if (count > 0 && !recordIsValid(fd, header, count - 1)) {
        if (options.readOnly)
          throw new HollowcError(
            `record ${count - 1} (the last) fails its checksum: open it for writing (hollowc precompute) to drop it`,
            recordsFile,
          );
        count -= 1;
        fs.ftruncateSync(fd, count * header.recordBytes);
        repaired.records = 1;
        repaired.bytes += header.recordBytes;
      }
    } catch (e) {
      fs.closeSync(fd);
      throw e;
    }
    return { store: new Store(dir, header, fd, count, conds), repaired };
  }

  /** The header of the store in `dir`, checked; reads nothing else and writes nothing. */
  static readHeader(dir: string): StoreHeader {
    const headerFile = path.join(dir, HEADER_FILE);
    let header: StoreHeader;
    try {
      header = JSON.parse(fs.readFileSync(headerFile, 'utf8'));
    } catch (e) {
      throw new HollowcError(
        `not a hollowc store (${(e as NodeJS.ErrnoException).code ?? (e as Error).message}); run hollowc precompute first`,
        headerFile,
      );
    }
    if (header?.format !== STORE_FORMAT || header.version !== STORE_VERSION)
      throw new HollowcError(`not a ${STORE_FORMAT} v${STORE_VERSION} header`, headerFile);
    const problem = headerProblem(header);
    if (problem) throw new HollowcError(`damaged store header: ${problem}`, headerFile);
    const expected = recordLayout(header.latentShape, header.activationShape);
    if (expected.recordBytes !== header.recordBytes)
      throw new HollowcError(`recordBytes ${header.recordBytes} does not match the layout (${expected.recordBytes})`, headerFile);
    const badField = (header.fields ?? []).find(
      (f, i) => f.dtype !== 'float32' || f.name !== expected.fields[i]?.name || f.offset !== expected.fields[i]?.offset,
    );
    if (badField || header.fields?.length !== expected.fields.length) {
      throw new HollowcError(
        `record field ${badField ? `${badField.name} (${badField.dtype})` : 'list'} is not the layout this hollowc writes (float32 z_t, target, hollow_activation)`,
        headerFile,
      );
    }
    return header;
  }

  get count(): number {
    return this._count;
  }

  get recordBytes(): number {
    return this.header.recordBytes;
  }

  conditioning(id: number): Conditioning {
    const c = this.conds.get(id);
    if (!c) throw new HollowcError(`no conditioning with id ${id}`, this.dir);
    return c;
  }

  /** Bytes on disk: records plus the header and conditioning files. */
  sizeBytes(): { records: number; total: number; perRecord: number } {
    const records = this._count * this.header.recordBytes;
    const other = [HEADER_FILE, CONDITIONING_FILE].reduce((a, f) => a + fs.statSync(path.join(this.dir, f)).size, 0);
    return { records, total: records + other, perRecord: this.header.recordBytes };
  }

  append(r: Omit<StoreRecord, 'index'>): number {
    const h = this.header;
    const buf = this.writeBuf;
    const index = this._count;
    buf.writeUInt32LE(RECORD_MAGIC, 0);
    buf.writeUInt32LE(index, 4);
    buf.writeUInt32LE(r.sampleId, 8);
    buf.writeUInt32LE(r.condId, 12);
    buf.writeUInt32LE(r.isClass ? 1 : 0, 16);
    buf.writeInt32LE(r.timestep, 20);
    for (const f of h.fields) {
      const values = f.name === Z_T ? r.zt : f.name === TARGET ? r.target : r.activation;
      if (values.length !== size(f.shape)) throw new Error(`record field ${f.name}: ${values.length} values for shape [${f.shape}]`);
      Buffer.from(values.buffer, values.byteOffset, values.byteLength).copy(buf, f.offset);
    }
    buf.writeUInt32LE(crc32(buf.subarray(0, h.recordBytes - 4)), h.recordBytes - 4);
    const written = fs.writeSync(this.fd, buf, 0, h.recordBytes, index * h.recordBytes);
    if (written !== h.recordBytes) {
      try {
        fs.ftruncateSync(this.fd, index * h.recordBytes); // the part that fit is no record
      } catch {
        // the next open for writing cuts it off instead
      }
      throw new HollowcError(
        `short write (${written} of ${h.recordBytes} bytes): out of space or over the file size limit; the store keeps its ${index} complete records and a rerun continues from there`,
        path.join(this.dir, RECORDS_FILE),
      );
    }
    this._count += 1;
    if (++this.unsynced >= 16) this.sync();
    return index;
  }

  /** The store's progress.json, or undefined when it has none; throws naming the file when it is unreadable. */
  progress(): StoreProgress | undefined {
    return readProgress(this.dir);
  }

  /** Marks the store as being filled towards `count` records (a precompute run that appends). */
  fillTowards(count: number): void {
    this.setProgress({ count, finished: false });
  }

  /** Marks the records on disk as what a precompute completed. */
  finish(): void {
    this.setProgress({ count: this._count, finished: true });
  }

  /** Writes progress.json unless it says `p` already (a damaged one is rewritten). */
  private setProgress(p: StoreProgress): void {
    let now: StoreProgress | undefined;
    try {
      now = this.progress();
    } catch {
      now = undefined;
    }
    if (now?.count !== p.count || now.finished !== p.finished) writeProgress(this.dir, p);
  }

  /**
   * Checks that a precompute finished the store with the records it holds (progress.json), then
   * every record's magic, index and checksum (a damaged record in the middle, not only a torn
   * tail); throws naming the first problem. Reads the store once.
   */
  verify(): void {
    this.checkFinished();
    const h = this.header;
    const buf = Buffer.allocUnsafe(h.recordBytes);
    for (let i = 0; i < this._count; i++) {
      readExactly(this.fd, buf, i * h.recordBytes);
      const problem = checkRecord(buf, h, i);
      if (problem)
        throw new HollowcError(
          `record ${i} of ${this._count} is corrupt (${problem}); rebuild the store with hollowc precompute`,
          path.join(this.dir, RECORDS_FILE),
        );
    }
  }

  /** Reads record `index`, checking its checksum. Pass `into` to reuse buffers. */
  read(index: number, into?: StoreRecord): StoreRecord {
    if (!(index >= 0 && index < this._count)) throw new Error(`record ${index} is outside 0..${this._count - 1}`);
    const h = this.header;
    const buf = Buffer.allocUnsafe(h.recordBytes);
    readExactly(this.fd, buf, index * h.recordBytes);
    const problem = checkRecord(buf, h, index);
    if (problem)
      throw new HollowcError(
        `record ${index} is corrupt (${problem}); rebuild the store with hollowc precompute`,
        path.join(this.dir, RECORDS_FILE),
      );
    const out: StoreRecord = into ?? {
      index,
      sampleId: 0,
      condId: 0,
      isClass: false,
      timestep: 0,
      zt: new Float32Array(size(h.latentShape)),
      target: new Float32Array(size(h.latentShape)),
      activation: new Float32Array(size(h.activationShape)),
    };
    out.index = index;
    out.sampleId = buf.readUInt32LE(8);
    out.condId = buf.readUInt32LE(12);
    out.isClass = (buf.readUInt32LE(16) & 1) === 1;
    out.timestep = buf.readInt32LE(20);
    for (const f of h.fields) {
      const dst = f.name === Z_T ? out.zt : f.name === TARGET ? out.target : out.activation;
      new Uint8Array(dst.buffer, dst.byteOffset, dst.byteLength).set(buf.subarray(f.offset, f.offset + dst.byteLength));
    }
    return out;
  }

  private checkFinished(): void {
    const progressFile = path.join(this.dir, PROGRESS_FILE);
    const p = this.progress();
    if (!p)
      throw new HollowcError(
        'missing: no precompute finished this store; run hollowc precompute again with the same --data and --count to finish it',
        progressFile,
      );
    if (!p.finished)
      throw new HollowcError(
        `the store is unfinished: its precompute stopped after ${this._count} of ${p.count} records; run hollowc precompute again with the same --data and --count ${p.count} to finish it`,
        path.join(this.dir, RECORDS_FILE),
      );
    if (p.count !== this._count)
      throw new HollowcError(
        `holds ${this._count} records but its precompute finished with ${p.count}${this._count < p.count ? ' (the file was cut short)' : ''}; run hollowc precompute again with the same --data and --count ${p.count} to rewrite them`,
        path.join(this.dir, RECORDS_FILE),
      );
  }

  sync(): void {
    if (this.unsynced > 0) fs.fdatasyncSync(this.fd);
    this.unsynced = 0;
  }

  close(): void {
    if (this.fd < 0) return;
    try {
      this.sync();
    } catch {
      // read-only descriptors cannot always be synced; nothing was written through them
    }
    fs.closeSync(this.fd);
    this.fd = -1;
  }
}

function readConditionings(dir: string, header: StoreHeader): Map<number, Conditioning> {
  const condFile = readSafetensors(path.join(dir, CONDITIONING_FILE));
  const conds = new Map<number, Conditioning>();
  for (const c of header.conditionings) {
    const cond = conditioningOf(condFile.tensors, c.id);
    if (!cond) throw new HollowcError(`conditioning ${c.id} (${c.role}) is missing`, path.join(dir, CONDITIONING_FILE));
    conds.set(c.id, cond);
  }
  return conds;
}

function readProgress(dir: string): StoreProgress | undefined {
  const file = path.join(dir, PROGRESS_FILE);
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new HollowcError(`cannot read: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`, file);
  }
  let p: Partial<StoreProgress> | undefined;
  try {
    p = JSON.parse(text);
  } catch {
    p = undefined;
  }
  if (!(p && Number.isSafeInteger(p.count) && p.count! >= 0 && typeof p.finished === 'boolean'))
    throw new HollowcError(
      'damaged: expected {"count": <records>, "finished": true|false}; run hollowc precompute again to rewrite it',
      file,
    );
  return { count: p.count!, finished: p.finished };
}

function writeProgress(dir: string, p: StoreProgress): void {
  writeFileAtomic(path.join(dir, PROGRESS_FILE), JSON.stringify(p) + '\n');
}

const isShape = (v: unknown): v is number[] => Array.isArray(v) && v.length > 0 && v.every((d) => Number.isSafeInteger(d) && d > 0);

/** What a hand-edited or damaged store.json gets wrong, checked before anything is sized from it. */
function headerProblem(h: StoreHeader): string | undefined {
  // [0]: a `hollow none` store (plain LoRA) keeps no hollow activation
  const noActivation = Array.isArray(h.activationShape) && h.activationShape.length === 1 && h.activationShape[0] === 0;
  if (!isShape(h.latentShape) || !(isShape(h.activationShape) || noActivation))
    return 'latentShape / activationShape are not lists of sizes';
  if (!Number.isSafeInteger(h.recordBytes) || h.recordBytes <= 0) return 'recordBytes is not a positive integer';
  if (!Array.isArray(h.fields)) return 'fields is not a list';
  if (
    !Array.isArray(h.conditionings) ||
    !h.conditionings.every((c) => Number.isInteger(c?.id) && (c.role === 'instance' || c.role === 'class' || c.role === 'caption'))
  )
    return 'conditionings is not a list of {id, role}';
  if (typeof h.fingerprint !== 'string') return 'fingerprint is missing';
  if (h.timeIds !== undefined && !(Array.isArray(h.timeIds) && h.timeIds.every((x) => typeof x === 'number')))
    return 'timeIds is not a list of numbers';
  return undefined;
}

function readExactly(fd: number, buf: Buffer, position: number): void {
  let done = 0;
  while (done < buf.length) {
    const n = fs.readSync(fd, buf, done, buf.length - done, position + done);
    if (n <= 0) throw new Error(`unexpected end of the store at byte ${position + done}`);
    done += n;
  }
}

function checkRecord(buf: Buffer, h: StoreHeader, index: number): string | undefined {
  return recordProblem(buf, h.recordBytes, index, crc32);
}

function recordIsValid(fd: number, h: StoreHeader, index: number): boolean {
  const buf = Buffer.allocUnsafe(h.recordBytes);
  try {
    readExactly(fd, buf, index * h.recordBytes);
  } catch {
    return false;
  }
  return checkRecord(buf, h, index) === undefined;
}
