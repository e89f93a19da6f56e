/**
 * What a compiled folder records of the UNet it was made from (the manifest's `model.identity`), so
 * that a command pairing the folder with a model can tell a different UNet, without reading all
 * its weights: a hash of the graph file's bytes and, for each external data file the graph reads,
 * its name (relative to the graph), its size and SAMPLES blocks of its bytes spread over it. Two
 * exports of one architecture differ in every weight, so a sample tells them apart where names and
 * sizes cannot (the model builder's seeds, two fine-tunes of one base).
 */
import * as crypto from 'crypto';
import * as fs from 'fs';
import * as path from 'path';
import { HollowcError } from './errors';
import { Model, TensorData } from './ir';
import type { CompileManifest } from './manifest';
import { loadModel } from './serde';

const SAMPLES = 16;
const SAMPLE_BYTES = 64 * 1024;

export function sha256File(file: string): string {
  const hash = crypto.createHash('sha256');
  const fd = fs.openSync(file, 'r');
  const buf = Buffer.allocUnsafe(8 * 2 ** 20);
  try {
    for (let n; (n = fs.readSync(fd, buf, 0, buf.length, null)) > 0; ) hash.update(buf.subarray(0, n));
  } finally {
    fs.closeSync(fd);
  }
  return hash.digest('hex');
}

/** The external data files `model`'s initializers read (a float16 export's original bytes included). */
function externalDataFiles(model: Model): string[] {
  const files = new Set<string>();
  const add = (d: TensorData | undefined) => {
    if (d?.kind === 'external') files.add(d.file);
  };
  for (const v of model.graph.initializers()) {
    add(v.initializer!.data);
    add(v.initializer!.float16Source);
  }
  return [...files];
}

function sampledHash(file: string, size: number): string {
  const hash = crypto.createHash('sha256');
  const fd = fs.openSync(file, 'r');
  const buf = Buffer.allocUnsafe(SAMPLE_BYTES);
  try {
    for (let i = 0; i < SAMPLES; i++) {
      const at = size <= SAMPLE_BYTES ? 0 : Math.floor(((size - SAMPLE_BYTES) * i) / (SAMPLES - 1));
      hash.update(buf.subarray(0, fs.readSync(fd, buf, 0, SAMPLE_BYTES, at)));
      if (size <= SAMPLE_BYTES) break;
    }
  } finally {
    fs.closeSync(fd);
  }
  return hash.digest('hex');
}

/**
 * The identity of the model in `file`; `model` is its graph when the caller has loaded it already
 * (and not yet changed where its weights live).
 */
export function modelIdentity(file: string, model: Model = loadModel(file)): string {
  const dir = path.dirname(path.resolve(file));
  const data = externalDataFiles(model)
    .map((f) => {
      const size = fs.statSync(f).size;
      return [path.relative(dir, f).split(path.sep).join('/'), size, sampledHash(f, size)] as const;
    })
    .sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
  return crypto
    .createHash('sha256')
    .update(JSON.stringify({ graph: sha256File(file), data }))
    .digest('hex');
}

/** Short enough for a message, long enough to tell two UNets apart. */
const shortId = (id: string) => id.slice(0, 12);

/**
 * Throws, in one line naming both, unless a compiled folder (its manifest) was made from the UNet
 * in `modelFile`; `what` says how the user gave each (e.g. `--run out/`, `--model pipe/`). A folder
 * compiled before identities were recorded is compared by its graph file's hash.
 */
export function checkCompiledFrom(manifest: CompileManifest, modelFile: string, what: { folder: string; model: string }): void {
  const recorded = manifest.model.identity ?? manifest.model.sha256;
  const actual = manifest.model.identity ? modelIdentity(modelFile) : sha256File(modelFile);
  if (recorded === actual) return;
  throw new HollowcError(
    `${what.folder} was compiled from another UNet (${manifest.model.file}, ${shortId(recorded)}) than ${what.model} (${modelFile}, ${shortId(actual)}): compile this UNet into a folder, or give the one it was compiled from`,
  );
}
