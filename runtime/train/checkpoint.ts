/**
 * Training checkpoints and the loss log, in `<out>/train/`:
 *   checkpoint.safetensors  `<param>`, `<param>.exp_avg`, `<param>.exp_avg_sq` (F32; 8-bit moments as
 *                           `<moment>.q8` U8 and `<moment>.absmax` F32 per block) and the state
 *                           (step, seed, lr, batch, position, store fingerprint) as JSON in the
 *                           metadata key `hollowc_checkpoint`: one file, streamed to a temporary
 *                           sibling, fsynced and renamed, so a kill leaves either the old
 *                           checkpoint or the new one
 *   checkpoint.json         the same state for people and scripts, plus the checkpoint's sha256
 *                           (written after it; the safetensors is what --resume reads)
 *   loss.jsonl              one line per step: {"step", "loss", "lr", "elapsed_s"}; a resume first
 *                           drops lines after the checkpoint's step
 */
import * as crypto from 'crypto';
import * as fs from 'fs';
import * as path from 'path';
import { HollowcError } from '../../compiler/errors';
import { expAvgName, expAvgSqName, quantizedCodesName, quantizedScalesName } from '../../compiler/manifest';
import { writeFileAtomic } from '../../compiler/atomic-files';
import { float32Tensor, SafeTensor, writeSafetensors } from '../formats/safetensors';
import { readIndexedValues, readSafetensorsIndex } from '../formats/safetensors-stream';
import { QuantizedMoment, blocksOf } from './adamw8bit';

export const TRAIN_DIR = 'train';
export const CHECKPOINT_FILE = 'checkpoint.safetensors';
export const CHECKPOINT_STATE_FILE = 'checkpoint.json';
export const LOSS_LOG_FILE = 'loss.jsonl';
const STATE_KEY = 'hollowc_checkpoint';

/**
 * A tensor being trained (LoRA, or a base weight under `train base`), with its AdamW moments:
 * float32, or 8-bit in `quantized` (adamw8bit.ts; then expAvg and expAvgSq are empty).
 */
export interface ParamState {
  name: string;
  shape: number[];
  value: Float32Array;
  expAvg: Float32Array;
  expAvgSq: Float32Array;
  quantized?: { expAvg: QuantizedMoment; expAvgSq: QuantizedMoment };
}

export interface TrainState {
  version: 1;
  step: number;
  seed: number;
  lr: number;
  batch: number;
  storeRecords: number;
  storeFingerprint: string;
  /** Where the next step starts in the sample order: epoch and offset in its permutation. */
  position: { epoch: number; offset: number };
  params: string[];
}

export function writeCheckpoint(dir: string, state: TrainState, params: readonly ParamState[]): string {
  fs.mkdirSync(dir, { recursive: true });
  const file = path.join(dir, CHECKPOINT_FILE);
  // views of the training arrays, streamed one by one: no second copy of a full fine-tune's weights
  const tensors = new Map<string, SafeTensor>();
  for (const p of params) {
    tensors.set(p.name, float32Tensor(p.shape, p.value));
    if (p.quantized) {
      for (const [name, m] of [
        [expAvgName(p.name), p.quantized.expAvg],
        [expAvgSqName(p.name), p.quantized.expAvgSq],
      ] as const) {
        tensors.set(quantizedCodesName(name), { dtype: 'U8', shape: [...p.shape], data: m.codes });
        tensors.set(quantizedScalesName(name), float32Tensor([m.absmax.length], m.absmax));
      }
      continue;
    }
    tensors.set(expAvgName(p.name), float32Tensor(p.shape, p.expAvg));
    tensors.set(expAvgSqName(p.name), float32Tensor(p.shape, p.expAvgSq));
  }
  const digest = writeSafetensors(file, tensors, { [STATE_KEY]: JSON.stringify(state), format: 'pt' });
  writeStateFile(dir, state, digest);
  return file;
}

function writeStateFile(dir: string, state: TrainState, sha256: string): void {
  writeFileAtomic(path.join(dir, CHECKPOINT_STATE_FILE), JSON.stringify({ ...state, checkpoint: CHECKPOINT_FILE, sha256 }, null, 2) + '\n');
}

/**
 * checkpoint.json is written after checkpoint.safetensors: a kill between the two leaves it
 * describing the checkpoint before. A resume calls this with the state it read from the
 * safetensors (what --resume trusts) and rewrites the JSON when it says anything else.
 */
export function syncCheckpointState(dir: string, state: TrainState): void {
  const jsonFile = path.join(dir, CHECKPOINT_STATE_FILE);
  try {
    const written = JSON.parse(fs.readFileSync(jsonFile, 'utf8')) as Record<string, unknown>;
    const same = (Object.keys(state) as (keyof TrainState)[]).every((k) => JSON.stringify(written[k]) === JSON.stringify(state[k]));
    if (same && typeof written.sha256 === 'string') return;
  } catch {
    // missing or torn: rewritten below
  }
  const hash = crypto.createHash('sha256');
  const fd = fs.openSync(path.join(dir, CHECKPOINT_FILE), 'r');
  try {
    const chunk = Buffer.alloc(1 << 22);
    for (let n; (n = fs.readSync(fd, chunk, 0, chunk.length, null)) > 0;) hash.update(chunk.subarray(0, n));
  } finally {
    fs.closeSync(fd);
  }
  writeStateFile(dir, state, hash.digest('hex'));
}

export interface Checkpoint {
  state: TrainState;
  params: Map<string, Omit<ParamState, 'name'>>;
}

/** The state of a checkpoint, from its header alone (no tensor is read). */
export function readCheckpointState(file: string): TrainState {
  return stateOf(file, readSafetensorsIndex(file).metadata);
}

function stateOf(file: string, metadata: Record<string, string>): TrainState {
  const text = metadata[STATE_KEY];
  if (!text) throw new HollowcError(`not a hollowc training checkpoint (no ${STATE_KEY} metadata)`, file);
  return JSON.parse(text) as TrainState;
}

/**
 * The state and each parameter with its moments, read tensor by tensor into the arrays training
 * uses: a full fine-tune's checkpoint (weights and two moments, ~10 GB for SD 2.1) is never held
 * as bytes beside them, so memory beyond the parameters is at most the largest tensor.
 * `moments: false` reads the values alone (an export needs no optimizer state).
 */
export function readCheckpoint(file: string, options: { moments?: boolean } = {}): Checkpoint {
  const { tensors, metadata } = readSafetensorsIndex(file);
  const state = stateOf(file, metadata);
  const withMoments = options.moments ?? true;
  const params: Checkpoint['params'] = new Map();
  const fd = fs.openSync(file, 'r');
  try {
    const get = (key: string) => {
      const t = tensors.get(key);
      if (!t) throw new HollowcError(`checkpoint lacks ${key}`, file);
      return t;
    };
    const floats = (key: string) => {
      const values = readIndexedValues(fd, file, key, get(key));
      if (!(values instanceof Float32Array)) throw new HollowcError(`${key} has dtype U8; expected a float tensor`, file);
      return values;
    };
    for (const name of state.params) {
      const shape = get(name).shape;
      const value = floats(name);
      const none = new Float32Array(0);
      if (!withMoments) {
        params.set(name, { shape, value, expAvg: none, expAvgSq: none });
        continue;
      }
      if (tensors.has(quantizedCodesName(expAvgName(name)))) {
        const moment = (moment: string) => {
          const t = get(quantizedCodesName(moment));
          const absmax = floats(quantizedScalesName(moment));
          if (t.dtype !== 'U8' || t.length !== value.length || absmax.length !== blocksOf(value.length))
            throw new HollowcError(`checkpoint's 8-bit ${moment} does not fit ${name} [${shape}]`, file);
          return { codes: readIndexedValues(fd, file, quantizedCodesName(moment), t) as Uint8Array, absmax };
        };
        const quantized = { expAvg: moment(expAvgName(name)), expAvgSq: moment(expAvgSqName(name)) };
        params.set(name, { shape, value, expAvg: none, expAvgSq: none, quantized });
        continue;
      }
      params.set(name, { shape, value, expAvg: floats(expAvgName(name)), expAvgSq: floats(expAvgSqName(name)) });
    }
  } finally {
    fs.closeSync(fd);
  }
  return { state, params };
}

export function truncateLossLog(file: string, lastStep: number): void {
  if (!fs.existsSync(file)) return;
  const kept = fs
    .readFileSync(file, 'utf8')
    .split('\n')
    .filter((line) => {
      if (!line.trim()) return false;
      try {
        return (JSON.parse(line) as { step: number }).step <= lastStep;
      } catch {
        return false; // a line cut short by the kill
      }
    });
  writeFileAtomic(file, kept.map((l) => `${l}\n`).join(''));
}

/** LoRA tensors (train.onnx names) of a checkpoint or a LoRA file, for evaluation and export. */
export function paramsFromCheckpoint(file: string): Map<string, Float32Array> {
  const cp = readCheckpoint(file, { moments: false });
  return new Map([...cp.params].map(([name, v]) => [name, v.value]));
}
