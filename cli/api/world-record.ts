/**
 * The world pipeline as the repository keeps it (models/data/world-pipeline/): the trained UNet and
 * VAE as written by `world build`, and a record of how they were made (hollowc-world.json: the
 * options, the times, the loss curves). The text encoder and tokenizer are not kept: the builder
 * makes them again from the recorded seed (frozen, never trained), and the record's sha256 of the
 * text encoder's weights checks that it made the same ones.
 */
import * as fs from 'fs';
import * as path from 'path';
import { replaceFolder, writeFileAtomic } from '../../compiler/atomic-files';
import { HollowcError } from '../../compiler/errors';
import { sha256File } from '../../compiler/model-identity';
import { buildPipeline } from '../../models/builder';
import { modelsDataPath } from '../../models/data-files';

export const WORLD_RECORD_FILE = 'hollowc-world.json';
/** Under models/data/: the committed world pipeline. */
export const WORLD_PIPELINE_DATA = 'world-pipeline';
/** The parts `pack` leaves out, rebuilt from the seed. */
const REBUILT_PARTS = ['text_encoder', 'tokenizer'];

export interface WorldRecord {
  /** the command line that made it, and every option it ran with */
  command: string;
  options: Record<string, unknown>;
  /** buildPipeline's options for the text encoder and tokenizer */
  builder: { family: 'sd15'; size: 'tiny'; seed: number; maxTokens: number; textEmbeddingScale: number };
  textEncoderSha256: string;
  seconds: { vae: number; unet: number };
  /** the mean loss of each twentieth of training */
  loss: { vae: number[]; unet: number[] };
  date: string;
}

/** The mean of each of `parts` equal stretches of a `loss.jsonl` (one JSON object with a numeric "loss" per line). */
export function lossCurve(file: string, parts = 20): number[] {
  const losses = fs
    .readFileSync(file, 'utf8')
    .split('\n')
    .filter((l) => l.trim())
    .map((l) => Number((JSON.parse(l) as { loss: number }).loss));
  const per = Math.max(1, Math.floor(losses.length / parts));
  const out: number[] = [];
  for (let i = 0; i + per <= losses.length && out.length < parts; i += per)
    out.push(losses.slice(i, i + per).reduce((a, b) => a + b, 0) / per);
  return out;
}

export function textEncoderSha256(pipeline: string): string {
  return sha256File(path.join(pipeline, 'text_encoder', 'model.onnx_data'));
}

export function writeWorldRecord(pipeline: string, record: WorldRecord): void {
  writeFileAtomic(path.join(pipeline, WORLD_RECORD_FILE), JSON.stringify(record, null, 2) + '\n');
}

export function readWorldRecord(dir: string): WorldRecord {
  const file = path.join(dir, WORLD_RECORD_FILE);
  if (!fs.existsSync(file)) throw new HollowcError(`no ${WORLD_RECORD_FILE}: not a world pipeline made by hollowc world build`, dir);
  return JSON.parse(fs.readFileSync(file, 'utf8')) as WorldRecord;
}

/** Copies a built world pipeline to `dest` without the parts rebuilt from the seed (the repository's form). */
export function packWorldPipeline(pipeline: string, dest: string): void {
  readWorldRecord(pipeline);
  const tmp = `${path.resolve(dest)}.tmp`;
  fs.rmSync(tmp, { recursive: true, force: true });
  fs.cpSync(pipeline, tmp, { recursive: true, filter: (src) => !REBUILT_PARTS.includes(path.relative(pipeline, src).split(path.sep)[0]) });
  replaceFolder(tmp, dest);
}

/** The committed world pipeline (models/data/world-pipeline). */
export function committedWorldPipeline(): string {
  return path.dirname(modelsDataPath(path.join(WORLD_PIPELINE_DATA, WORLD_RECORD_FILE)));
}

/**
 * A whole pipeline folder at `dest` from a packed one (default: the committed one): its files, and
 * the text encoder and tokenizer rebuilt from the recorded seed. Made beside `dest` and renamed, so
 * a kill leaves nothing that looks whole; an existing `dest` with the same record is reused.
 */
export async function materializeWorldPipeline(dest: string, packed = committedWorldPipeline()): Promise<string> {
  const record = readWorldRecord(packed);
  const target = path.resolve(dest);
  if (
    fs.existsSync(path.join(target, WORLD_RECORD_FILE)) &&
    fs.readFileSync(path.join(target, WORLD_RECORD_FILE), 'utf8') === fs.readFileSync(path.join(packed, WORLD_RECORD_FILE), 'utf8')
  )
    return target;
  const tmp = `${target}.tmp`;
  fs.rmSync(tmp, { recursive: true, force: true });
  const b = record.builder;
  const rebuilt = `${target}.rebuild.tmp`;
  fs.rmSync(rebuilt, { recursive: true, force: true });
  try {
    await buildPipeline(b.family, b.size, rebuilt, { seed: b.seed, maxTokens: b.maxTokens, textEmbeddingScale: b.textEmbeddingScale });
    const sha = textEncoderSha256(rebuilt);
    if (sha !== record.textEncoderSha256)
      throw new HollowcError(
        `the text encoder rebuilt from seed ${b.seed} is not the one the pipeline trained with (sha256 ${sha.slice(0, 12)}, recorded ${record.textEncoderSha256.slice(0, 12)})`,
        packed,
      );
    fs.cpSync(packed, tmp, { recursive: true });
    for (const part of REBUILT_PARTS) fs.cpSync(path.join(rebuilt, part), path.join(tmp, part), { recursive: true });
  } finally {
    fs.rmSync(rebuilt, { recursive: true, force: true });
  }
  replaceFolder(tmp, target);
  return target;
}
