/**
 * The base weights a `train base` run trains (the manifest's `trainBase`): their values before
 * training, read one at a time from the byte ranges the manifest names in the folder's weight
 * files, and the trained values written at the end of a run as `trained-base.safetensors`
 * (diffusers parameter names, torch layout, float32: only the weights that trained; export-unet
 * puts them into the whole UNet).
 */
import * as fs from 'fs';
import * as path from 'path';
import { HollowcError } from '../../compiler/errors';
import type { CompileManifest } from '../../compiler/manifest';
import { float32Tensor, writeSafetensors } from '../formats/safetensors';

/** In a compiled folder: the trained base weights of the last run. */
export const TRAINED_BASE_FILE = 'trained-base.safetensors';

/** The names of the base weights that train, in the graphs' input order. */
export function trainedBaseNames(manifest: CompileManifest): Set<string> {
  return new Set((manifest.trainBase ?? []).map((p) => p.name));
}

/** Each trained base weight's value before training (float32, torch layout), by name (a graph-training folder's parameters too). */
export function initialBaseValues(out: string, manifest: Pick<CompileManifest, 'trainBase'>): Map<string, Float32Array> {
  const values = new Map<string, Float32Array>();
  const fds = new Map<string, number>();
  try {
    for (const p of manifest.trainBase ?? []) {
      const file = path.join(out, p.init.file);
      let fd = fds.get(file);
      if (fd === undefined) {
        try {
          fd = fs.openSync(file, 'r');
        } catch (e) {
          throw new HollowcError(`cannot read the base weights' initial values: ${(e as NodeJS.ErrnoException).code}; compile again`, file);
        }
        fds.set(file, fd);
      }
      const count = p.shape.reduce((a, b) => a * b, 1);
      if (p.init.length !== 4 * count) throw new HollowcError(`${p.name}: ${p.init.length} bytes for [${p.shape}] float32 values`, file);
      const value = new Float32Array(count);
      const bytes = new Uint8Array(value.buffer);
      for (let done = 0; done < bytes.length;) {
        const n = fs.readSync(fd, bytes, done, bytes.length - done, p.init.offset + done);
        if (n === 0) throw new HollowcError(`ends before ${p.name}'s initial value (${p.init.offset}+${p.init.length})`, file);
        done += n;
      }
      values.set(p.name, value);
    }
  } finally {
    for (const fd of fds.values()) fs.closeSync(fd);
  }
  return values;
}

/** Writes the trained base weights (diffusers names, torch layout) atomically; returns the file. */
export function writeTrainedBase(
  file: string,
  manifest: CompileManifest,
  values: ReadonlyMap<string, Float32Array>,
  metadata: Record<string, string>,
): string {
  const tensors = new Map(
    (manifest.trainBase ?? []).map((p) => {
      const v = values.get(p.name);
      if (!v) throw new Error(`internal: no trained value for ${p.name}`);
      return [p.name, float32Tensor([...p.shape], v)] as const;
    }),
  );
  writeSafetensors(file, tensors, { format: 'pt', ...metadata });
  return file;
}
