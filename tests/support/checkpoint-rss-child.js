// Writes or reads a float32-moment training checkpoint of `count` tensors of `size` values in a
// fresh process and prints how far that raised the process's peak RSS (maxRSS, the kernel's
// high-water mark: nothing between samples is missed). Values follow a formula, so the reader
// checks every one it got.
require('./register-ts');

const { readCheckpoint, writeCheckpoint } = require('../../runtime/train/checkpoint.ts');
const [mode, dir, count, size] = process.argv.slice(2);
const n = Number(size);
const names = Array.from({ length: Number(count) }, (_, k) => `down_blocks.${k}.conv.weight`);
const valueAt = (k, i, moment) => ((k * 7 + i * 13 + moment * 5) % 1021) / 1021 - 0.5;
const peak = () => process.resourceUsage().maxRSS * 1024;

if (mode === 'write') {
  const params = names.map((name, k) => {
    const [value, expAvg, expAvgSq] = [0, 1, 2].map((m) => Float32Array.from({ length: n }, (_, i) => valueAt(k, i, m)));
    return { name, shape: [n], value, expAvg, expAvgSq };
  });
  const state = { version: 1, step: 7, seed: 1, lr: 1e-3, batch: 1, storeRecords: 1, storeFingerprint: 'x', position: { epoch: 0, offset: 0 }, params: names };
  const before = peak();
  writeCheckpoint(dir, state, params);
  process.stdout.write(JSON.stringify({ grew: peak() - before }));
} else {
  const before = peak();
  const cp = readCheckpoint(require('path').join(dir, 'checkpoint.safetensors'));
  const grew = peak() - before;
  let wrong = 0;
  names.forEach((name, k) => {
    const p = cp.params.get(name);
    [p.value, p.expAvg, p.expAvgSq].forEach((a, m) => {
      if (a.length !== n) wrong += n;
      else for (let i = 0; i < n; i++) if (a[i] !== Math.fround(valueAt(k, i, m))) wrong++;
    });
  });
  process.stdout.write(JSON.stringify({ grew, wrong, step: cp.state.step }));
}
