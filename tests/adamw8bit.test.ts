/**
 * 8-bit AdamW moments (runtime/train/adamw8bit.ts): the dynamic maps, the blockwise code's error,
 * and the 8-bit host step against the float32 one (host-adamw.ts) on the same gradients.
 */
import { ParamState } from '../runtime/train/checkpoint';
import { HostAdamW } from '../runtime/train/host-adamw';
import {
  BLOCK,
  MIN_QUANTIZED_VALUES,
  SIGNED_MAP,
  UNSIGNED_MAP,
  decodeMoment,
  encodeBlock,
  nearestCode,
  zeroMoment,
  zeroMoments,
} from '../runtime/train/adamw8bit';
import { normal, rng } from './support/gradient-check';

const OPTIMIZER = { betas: [0.9, 0.999] as [number, number], eps: 1e-8, weightDecay: 0.01 };

test('the dynamic maps: 256 increasing values, 0 and 1 among them, signed down to -1, unsigned from 0', () => {
  for (const map of [SIGNED_MAP, UNSIGNED_MAP]) {
    expect(map.length).toBe(256);
    for (let i = 1; i < 256; i++) expect(map[i]).toBeGreaterThan(map[i - 1]);
    expect(map.includes(0)).toBe(true);
    expect(map[255]).toBe(1);
  }
  expect(SIGNED_MAP.indexOf(0)).toBe(127);
  expect(SIGNED_MAP[0]).toBeCloseTo(-(0.1 + 0.9 * (63.5 / 64)), 6);
  expect(UNSIGNED_MAP[0]).toBe(0);
  // the smallest nonzero magnitude: one value for the decade 1e-7..1e-6 (signed), two (unsigned)
  expect(SIGNED_MAP[128]).toBeCloseTo(0.55e-6, 12);
  expect(UNSIGNED_MAP[1]).toBeCloseTo(0.325e-6, 12);
});

test('blockwise codes: a value within a tenth of its block’s largest comes back to half a code step (0.9/64 of the scale)', () => {
  const gauss = normal(rng(3));
  const n = 3 * BLOCK + 17; // a partial last block
  for (const signed of [true, false]) {
    // magnitudes over six decades, as moments have them
    const x = Float32Array.from({ length: n }, () => (signed ? Math.sign(gauss()) : 1) * 10 ** (-6 * Math.random()) * (1 + gauss() ** 2));
    const m = zeroMoment(n, signed);
    for (let b = 0; b * BLOCK < n; b++) encodeBlock(x.subarray(b * BLOCK, Math.min(n, (b + 1) * BLOCK)), m, b, signed);
    const back = decodeMoment(m, signed);
    for (let b = 0; b * BLOCK < n; b++) {
      const scale = m.absmax[b];
      expect(scale).toBe(Math.max(...x.subarray(b * BLOCK, (b + 1) * BLOCK).map(Math.abs)));
      for (let i = b * BLOCK; i < Math.min(n, (b + 1) * BLOCK); i++) {
        if (Math.abs(x[i]) < 0.1 * scale) continue;
        // plus float32 rounding of the map value and of x / scale
        expect(Math.abs(back[i] - x[i])).toBeLessThanOrEqual(((signed ? 0.9 / 64 : 0.9 / 128) / 2 + 2 ** -22) * scale);
      }
    }
  }
});

test('encoding finds each value’s nearest map value as a binary search does: map values, midpoints between them, eight decades', () => {
  const gauss = normal(rng(5));
  for (const signed of [true, false]) {
    const map = signed ? SIGNED_MAP : UNSIGNED_MAP;
    const mids = Array.from(map.subarray(1), (v, i) => (v + map[i]) / 2);
    const values = [...map, ...mids, ...Array.from({ length: 5000 }, () => 10 ** (-8 * Math.random()) * (signed ? Math.sign(gauss()) : 1))];
    const x = Float32Array.from([1, ...values.map((v) => Math.max(-1, Math.min(1, v)))]); // the first sets the scale to 1
    const m = zeroMoment(x.length, signed);
    for (let b = 0; b * BLOCK < x.length; b++) {
      const block = x.slice(b * BLOCK, (b + 1) * BLOCK);
      block[0] = 1;
      encodeBlock(block, m, b, signed);
      block.forEach((v, i) => expect([v, m.codes[b * BLOCK + i]]).toEqual([v, nearestCode(map, v)]));
    }
  }
});

function tensor(n: number, state: 'fp32' | '8bit', start: Float32Array): ParamState {
  return { name: `w.${state}`, shape: [n], value: Float32Array.from(start), ...zeroMoments(n, state) };
}

test('small tensors keep float32 moments; larger ones get 8-bit moments', () => {
  expect(zeroMoments(MIN_QUANTIZED_VALUES - 1, '8bit').quantized).toBeUndefined();
  expect(zeroMoments(MIN_QUANTIZED_VALUES, '8bit').quantized!.expAvg.absmax.length).toBe(MIN_QUANTIZED_VALUES / BLOCK);
  expect(zeroMoments(MIN_QUANTIZED_VALUES, undefined).quantized).toBeUndefined();
});

test('one 8-bit step is within 3% of the float32 step from the same moments, all along 300 steps of training', () => {
  // Gradients as training sees them: a drifting signal and noise, their scale spread over three
  // decades from block to block and over one within a block (a value whose second moment falls
  // below ~1e-6 of its block's largest loses it, in bitsandbytes' scheme as here: adamw8bit.ts).
  const n = 16 * BLOCK;
  const gauss = normal(rng(11));
  const random = rng(12);
  const start = Float32Array.from({ length: n }, () => 0.05 * gauss());
  const blockScale = Array.from({ length: n / BLOCK }, () => 10 ** (-3 * random()));
  const scale = Float32Array.from({ length: n }, (_, i) => blockScale[Math.floor(i / BLOCK)] * 10 ** -random());
  const signal = Float32Array.from({ length: n }, () => gauss());
  const a = tensor(n, 'fp32', start);
  const fp32 = new HostAdamW(OPTIMIZER);
  const q8 = new HostAdamW({ ...OPTIMIZER, state: '8bit' });
  let worst = 0;
  for (let t = 1; t <= 300; t++) {
    const g = Float32Array.from(signal, (s, i) => scale[i] * (s * Math.cos(t / 50) + 0.5 * gauss()));
    // the same step from the float32 run's moments, encoded to 8 bits
    const b = tensor(n, '8bit', a.value);
    for (let k = 0; k < n / BLOCK; k++) {
      encodeBlock(a.expAvg.subarray(k * BLOCK, (k + 1) * BLOCK), b.quantized!.expAvg, k, true);
      encodeBlock(a.expAvgSq.subarray(k * BLOCK, (k + 1) * BLOCK), b.quantized!.expAvgSq, k, false);
    }
    const before = Float32Array.from(a.value);
    q8.step([b], [Float32Array.from(g)], 1e-3, t);
    fp32.step([a], [g], 1e-3, t);
    if (t === 1) expect(Buffer.from(b.value.buffer).equals(Buffer.from(a.value.buffer))).toBe(true);
    let diff = 0;
    let step = 0;
    for (let i = 0; i < n; i++) {
      diff += (b.value[i] - a.value[i]) ** 2;
      step += (a.value[i] - before[i]) ** 2;
    }
    worst = Math.max(worst, Math.sqrt(diff / step));
  }
  // eslint-disable-next-line no-console
  console.log(`8-bit vs float32 AdamW step, 300 steps: worst ‖Δp8 − Δp32‖ / ‖Δp32‖ = ${worst.toExponential(3)}`);
  expect(worst).toBeGreaterThan(0); // the moments really are rounded
  expect(worst).toBeLessThan(0.03);
});
