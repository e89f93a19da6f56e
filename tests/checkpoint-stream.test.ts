/**
 * Training checkpoints are read tensor by tensor into the arrays training uses (a full SD 2.1
 * fine-tune's checkpoint is ~10 GB: weights and two AdamW moments): measured in a child process,
 * reading raises peak RSS by the values it returns and little more (reading the whole file first
 * raised it by twice that), and writing streams views of the arrays, no second copy.
 */
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { expAvgName, quantizedCodesName } from '../compiler/manifest';
import { readSafetensorsIndex } from '../runtime/formats/safetensors-stream';
import { blocksOf } from '../runtime/train/adamw8bit';
import { CHECKPOINT_FILE, ParamState, TrainState, readCheckpoint, readCheckpointState, writeCheckpoint } from '../runtime/train/checkpoint';
import { tempDir } from './support/fixture';

const CHILD = path.join(__dirname, 'support', 'checkpoint-rss-child.js');
const MiB = 2 ** 20;

function child(...args: string[]): Record<string, number> {
  const r = spawnSync(process.execPath, [CHILD, ...args], { encoding: 'utf8' });
  expect([r.status, r.stderr]).toEqual([0, '']);
  return JSON.parse(r.stdout) as Record<string, number>;
}

test('reading a checkpoint (what --resume does) holds the parameters and at most one tensor more; writing holds no second copy', () => {
  const dir = tempDir('hollowc-checkpoint-rss-');
  try {
    // 16 tensors of 4 MiB with two moments each: a 192 MiB file whose largest tensor is 4 MiB
    const [count, size] = [16, 2 ** 20];
    const held = 3 * count * size * 4;
    const wrote = child('write', dir, String(count), String(size));
    expect(fs.statSync(path.join(dir, CHECKPOINT_FILE)).size).toBeGreaterThan(held);
    const read = child('read', dir, String(count), String(size));
    // eslint-disable-next-line no-console
    console.log(`checkpoint ${held / MiB} MiB of tensors: write raised peak RSS by ${(wrote.grew / MiB).toFixed(1)} MiB, read by ${(read.grew / MiB).toFixed(1)} MiB`);
    expect([read.wrong, read.step]).toEqual([0, 7]);
    // the returned arrays themselves, the largest tensor, and slack for the process; a whole-file read is ~2x held
    expect(read.grew).toBeLessThan(held + 4 * MiB + 16 * MiB);
    expect(wrote.grew).toBeLessThan(16 * MiB);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}, 120_000);

test('8-bit moments, values only, and the state from the header round-trip', () => {
  const dir = tempDir('hollowc-checkpoint-q8-');
  try {
    const n = 600;
    const codes = (k: number) => Uint8Array.from({ length: n }, (_, i) => (i * k) % 256);
    const absmax = (k: number) => Float32Array.from({ length: blocksOf(n) }, (_, b) => k + b / 8);
    const params: ParamState[] = [
      {
        name: 'conv_out.weight',
        shape: [n],
        value: Float32Array.from({ length: n }, (_, i) => Math.sin(i)),
        expAvg: new Float32Array(0),
        expAvgSq: new Float32Array(0),
        quantized: { expAvg: { codes: codes(3), absmax: absmax(1) }, expAvgSq: { codes: codes(5), absmax: absmax(2) } },
      },
      { name: 'conv_out.bias', shape: [2], value: Float32Array.of(1, -2), expAvg: Float32Array.of(0.5, 0.25), expAvgSq: Float32Array.of(3, 4) },
    ];
    const state: TrainState = {
      version: 1,
      step: 3,
      seed: 9,
      lr: 1e-4,
      batch: 2,
      storeRecords: 4,
      storeFingerprint: 'f',
      position: { epoch: 0, offset: 2 },
      params: params.map((p) => p.name),
    };
    const file = writeCheckpoint(dir, state, params);
    expect(readSafetensorsIndex(file).tensors.get(quantizedCodesName(expAvgName('conv_out.weight')))!.dtype).toBe('U8');
    expect(readCheckpointState(file)).toEqual(state);
    const cp = readCheckpoint(file);
    expect(cp.state).toEqual(state);
    for (const p of params) {
      const got = cp.params.get(p.name)!;
      expect([got.shape, Array.from(got.value), Array.from(got.expAvg), Array.from(got.expAvgSq)]).toEqual([
        p.shape,
        Array.from(p.value),
        Array.from(p.expAvg),
        Array.from(p.expAvgSq),
      ]);
      expect(got.quantized).toEqual(p.quantized);
    }
    const values = readCheckpoint(file, { moments: false });
    expect(Array.from(values.params.get('conv_out.bias')!.value)).toEqual([1, -2]);
    expect([values.params.get('conv_out.bias')!.expAvg.length, values.params.get('conv_out.weight')!.quantized]).toEqual([0, undefined]);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
