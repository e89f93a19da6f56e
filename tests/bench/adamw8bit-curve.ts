/**
 * Loss curves of float32 and 8-bit AdamW moments (`optimizer adamw` / `adamw8bit`) on the builder's
 * tiny SD 1.5: full fine-tuning (`train base "*"`) under the 39.2% cut, the same store, seed and
 * sample order, N steps each; prints both curves' means over windows of steps, their mean per-step
 * difference, and the noise to compare it with (the spread of one curve's losses over a window,
 * and the difference between two float32 runs whose sample orders differ).
 *
 *   node -r ./tests/support/register-ts.js tests/bench/adamw8bit-curve.ts [steps=300] [lr=1e-4]
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { compileSpec } from '../../cli/api/compile-spec';
import { checkSpecFile } from '../../cli/api/spec';
import { loadUNet } from '../../cli/api/unet';
import { buildUNet } from '../../models/builder';
import { FAMILIES } from '../../models/families';
import { precompute } from '../../runtime/store/precompute';
import { loadTrainingData } from '../../runtime/store/training-data';
import { train } from '../../runtime/train/train';
import { writeData } from '../runtime-fake-train';

const steps = Number(process.argv[2] ?? 300);
const lr = process.argv[3] ?? '1e-4';
const v = FAMILIES.sd15.tiny;

async function run(dir: string, unetFile: string, data: string, name: string, optimizer: string, seed: number): Promise<number[]> {
  const spec = path.join(dir, `${name}.hollow`);
  fs.writeFileSync(
    spec,
    [
      'model sd15',
      'hollow preset "39.2%"',
      `shape sample [1, ${v.shapes.sample.slice(1).join(', ')}]`,
      `shape encoder_hidden_states [1, ${v.shapes.encoder_hidden_states.slice(1).join(', ')}]`,
      'train base "*"',
      `optimizer ${optimizer} lr ${lr}`,
      `seed ${seed}`,
      'emit precompute grads',
      '',
    ].join('\n'),
  );
  const out = path.join(dir, name);
  const unet = loadUNet(unetFile);
  compileSpec(unet, checkSpecFile(unet, spec), { out });
  await precompute({ out, data: loadTrainingData(data), count: 16 });
  const t0 = Date.now();
  const r = await train({ out, steps, checkpointEvery: steps });
  process.stderr.write(`${name}: ${steps} steps in ${((Date.now() - t0) / 1000).toFixed(1)} s\n`);
  return r.losses.map((l) => l.loss);
}

const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
const std = (xs: number[]) => Math.sqrt(mean(xs.map((x) => (x - mean(xs)) ** 2)));

async function main(): Promise<void> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hollowc-adamw8bit-'));
  const { file } = await buildUNet(v.config, { outDir: path.join(dir, 'model'), seed: 3 });
  const data = writeData(path.join(dir, 'samples'), 'sd15', { instances: 8, classes: 0 });
  const fp32 = await run(dir, file, data, 'fp32', 'adamw', 1);
  const q8 = await run(dir, file, data, 'q8', 'adamw8bit', 1);
  const other = await run(dir, file, data, 'fp32-seed2', 'adamw', 2);
  const window = Math.max(10, Math.floor(steps / 6));
  console.log(`tiny SD 1.5, 39.2% cut, train base "*", lr ${lr}, ${steps} steps, 16 records`);
  console.log('steps        float32  8-bit    (float32, other seed)  spread in window');
  for (let s = 0; s < steps; s += window) {
    const w = (xs: number[]) => xs.slice(s, s + window);
    console.log(
      `${String(s + 1).padStart(4)}-${String(Math.min(steps, s + window)).padEnd(5)}  ${mean(w(fp32)).toFixed(4)}   ${mean(w(q8)).toFixed(4)}   ${mean(w(other)).toFixed(4)}                 ${std(w(fp32)).toFixed(4)}`,
    );
  }
  const diff = (a: number[], b: number[]) => mean(a.map((x, i) => Math.abs(x - b[i])));
  console.log(`mean |loss 8-bit - loss float32| per step: ${diff(q8, fp32).toFixed(5)}; same records, first and last: ${q8[0]} ${fp32[0]}, ${q8[steps - 1]} ${fp32[steps - 1]}`);
  console.log(`last ${window} steps: float32 ${mean(fp32.slice(-window)).toFixed(4)} ± ${std(fp32.slice(-window)).toFixed(4)}, 8-bit ${mean(q8.slice(-window)).toFixed(4)} ± ${std(q8.slice(-window)).toFixed(4)}`);
}

main().catch((e) => {
  console.error(e);
  process.exitCode = 1;
});
