/**
 * External-data files: checking the ranges a model points at, and writing one data file that
 * one or several models reference. Bytes move in bounded chunks; nothing holds a whole tensor.
 */
import { tempSibling } from './atomic-files';
import * as fs from 'fs';
import * as path from 'path';
import { HollowcError } from './errors';
import { Tensor, tensorByteLength } from './ir';

export interface ExternalRange {
  file: string;
  offset: number;
  length: number;
}

/**
 * Returns a resolver for external-data locations of a model in `baseDir`. Locations are
 * refused when they could read outside the model's folder (absolute paths, `..`, links
 * leading out): loading an untrusted model must not read arbitrary files.
 */
export function externalRangeChecker(baseDir: string, label: string) {
  const realBase = fs.realpathSync(baseDir);
  const sizes = new Map<string, number>();
  return (tensor: string, location: string, offset: number, length: number | undefined): ExternalRange => {
    const refuse = (why: string) =>
      new HollowcError(`tensor ${tensor}: external data location ${JSON.stringify(location)} ${why}; refusing to read it`, label);
    if (path.isAbsolute(location) || path.win32.isAbsolute(location)) throw refuse('is an absolute path');
    const normalized = path.normalize(location.replace(/\\/g, '/'));
    if (normalized === '..' || normalized.startsWith(`..${path.sep}`) || normalized.startsWith('../')) {
      throw refuse("escapes the model's folder");
    }
    const file = path.join(realBase, normalized);
    let size = sizes.get(file);
    if (size === undefined) {
      let real: string;
      try {
        real = fs.realpathSync(file);
      } catch {
        throw new HollowcError(`tensor ${tensor}: external data file ${file} does not exist`, label);
      }
      if (real !== realBase && !real.startsWith(realBase + path.sep)) throw refuse("leads outside the model's folder through a link");
      size = fs.statSync(real).size;
      sizes.set(file, size);
    }
    if (!Number.isSafeInteger(offset) || offset < 0) throw new HollowcError(`tensor ${tensor}: bad external data offset ${offset}`, label);
    const len = length ?? size - offset;
    if (!Number.isSafeInteger(len) || len < 0 || offset + len > size) {
      throw new HollowcError(
        `tensor ${tensor}: external data range ${offset}+${len} lies beyond the end of ${file} (${size} bytes)`,
        label,
      );
    }
    return { file, offset, length: len };
  };
}

const CHUNK = 16 * 2 ** 20;

/**
 * Reads `length` bytes of `file` from `offset` in chunks of at most `chunkBytes` (one buffer,
 * reused: `f` must not keep a chunk).
 */
export function readRangeInChunks(
  file: string,
  offset: number,
  length: number,
  f: (chunk: Uint8Array, at: number) => void,
  chunkBytes = CHUNK,
): void {
  const buffer = Buffer.allocUnsafe(Math.max(1, Math.min(chunkBytes, length)));
  const fd = fs.openSync(file, 'r');
  try {
    for (let done = 0; done < length;) {
      const want = Math.min(buffer.length, length - done);
      let got = 0;
      while (got < want) {
        const n = fs.readSync(fd, buffer, got, want - got, offset + done + got);
        if (n === 0) throw new HollowcError(`external data ends early (wanted ${offset}+${length})`, file);
        got += n;
      }
      f(buffer.subarray(0, want), done);
      done += want;
    }
  } finally {
    fs.closeSync(fd);
  }
}
/** Tensor offsets are aligned so that runtimes can memory-map them. */
const ALIGN = 64;

/**
 * Writes tensors into one data file, each at most once: a tensor already placed (the same
 * source range, or the same inline buffer) gets its earlier location back. The file is written
 * under a temporary name and appears under its own name only on `commit()`.
 */
export class ExternalDataWriter {
  readonly dir: string;
  readonly location: string;
  private readonly tmp: string;
  private fd: number | undefined;
  private offset = 0;
  private readonly placedRanges = new Map<string, { offset: number; length: number }>();
  private readonly placedInline = new Map<Uint8Array, { offset: number; length: number }>();

  constructor(readonly file: string) {
    this.dir = path.dirname(path.resolve(file));
    this.location = path.basename(file);
    this.tmp = tempSibling(file);
  }

  /** Bytes written so far. */
  get size(): number {
    return this.offset;
  }

  place(t: Tensor): { location: string; offset: number; length: number } {
    if (t.data.kind === 'strings') throw new Error(`tensor ${t.name}: string tensors cannot go to external data`);
    const key =
      t.data.kind === 'external'
        ? `${t.data.file}\0${t.data.offset}\0${t.data.length}`
        : t.data.kind === 'computed'
          ? `computed\0${t.data.key}`
          : undefined;
    const seen = key !== undefined ? this.placedRanges.get(key) : this.placedInline.get((t.data as { bytes: Uint8Array }).bytes);
    if (seen) return { location: this.location, ...seen };
    const data = t.data;
    const loc = this.appendStream((write) =>
      data.kind === 'inline'
        ? write(data.bytes)
        : data.kind === 'computed'
          ? data.produce(write)
          : this.copyRange(data.file, data.offset, data.length, write),
    );
    if (loc.length !== tensorByteLength(t)) throw new Error(`tensor ${t.name}: wrote ${loc.length} bytes, expected ${tensorByteLength(t)}`);
    const placed = { offset: loc.offset, length: loc.length };
    if (key !== undefined) this.placedRanges.set(key, placed);
    else this.placedInline.set((t.data as { bytes: Uint8Array }).bytes, placed);
    return loc;
  }

  /**
   * Appends bytes that `produce` hands over chunk by chunk (generated weights, copied ranges) at
   * the next aligned offset, and returns where they landed.
   */
  appendStream(produce: (write: (chunk: Uint8Array) => void) => void): { location: string; offset: number; length: number } {
    if (this.fd === undefined) this.fd = fs.openSync(this.tmp, 'w');
    const pad = (ALIGN - (this.offset % ALIGN)) % ALIGN;
    if (pad) this.write(new Uint8Array(pad));
    const start = this.offset;
    produce((chunk) => this.write(chunk));
    return { location: this.location, offset: start, length: this.offset - start };
  }

  private write(bytes: Uint8Array): void {
    let done = 0;
    while (done < bytes.byteLength) done += fs.writeSync(this.fd!, bytes, done, bytes.byteLength - done, this.offset + done);
    this.offset += bytes.byteLength;
  }

  private copyRange(file: string, offset: number, length: number, write: (chunk: Uint8Array) => void): void {
    readRangeInChunks(file, offset, length, (chunk) => write(chunk));
  }

  commit(): void {
    if (this.fd === undefined) this.fd = fs.openSync(this.tmp, 'w');
    fs.fsyncSync(this.fd);
    fs.closeSync(this.fd);
    this.fd = undefined;
    fs.renameSync(this.tmp, this.file);
  }

  abort(): void {
    if (this.fd !== undefined) fs.closeSync(this.fd);
    this.fd = undefined;
    fs.rmSync(this.tmp, { force: true });
  }
}
