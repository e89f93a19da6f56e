/**
 * `hollowc plan` as a user meets it (issue 33 item 7): a UNet folder taken as it is, a rank above a
 * layer's width refused with the largest that fits, a row at a time reported, and progress on
 * stderr once planning takes a while.
 */
import * as path from 'path';
import { buildUNet } from '../models/builder/unet';
import { FAMILIES } from '../models/families';
import { defaultTrainingSettings } from '../models/training-defaults';
import { loadUNet } from '../cli/api/unet';
import { planUNet } from '../passes/plan/plan';
import { recordLayout } from '../runtime/store/store-format';
import { rowProgress } from '../cli/plan';
import { runCli } from './support/cli';
import { tempDir } from './support/fixture';

let unetDir: string;

beforeAll(async () => {
  unetDir = path.join(tempDir('hollowc-plan-cli-'), 'unet');
  await buildUNet(FAMILIES.sd15.tiny.config, { outDir: unetDir, seed: 0 });
});

test('a rank above a targeted layer\'s width: one line naming the narrowest and the largest rank that fits', async () => {
  const r = await runCli(['plan', unetDir, '--rank', '20', '--shape', 'sample=1,4,8,8']);
  expect([r.code, r.stderr.trim().split('\n').length]).toEqual([1, 1]);
  // the tiny UNet's attention widths are 16, 32 and 48: every layer of the first block is too narrow
  expect(r.stderr).toMatch(
    /^hollowc: error: --rank 20 is larger than down_blocks\.0\.attentions\.0\.transformer_blocks\.0\.attn1\.to_q allows: it has in 16, out 16 \(and \d+ more targeted layers\): use --rank 16 or less, or leave the narrow layers out of --targets\n$/,
  );
});

test('planUNet reports each row as it finishes', () => {
  const unet = loadUNet(unetDir); // a UNet folder: its model.onnx
  expect(unet.file).toBe(path.join(unetDir, 'model.onnx'));
  const rows: [number, number, string][] = [];
  const plan = planUNet(
    {
      unet,
      targets: ['down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q'],
      lora: { rank: 2, alpha: 2 },
      training: { ...defaultTrainingSettings('sd15'), shapes: { sample: [1, 4, 8, 8], timestep: [1] } },
      samples: 1,
      steps: 1,
      storeRecordBytes: (latent, activation) => recordLayout(latent, activation).recordBytes,
      onRow: (done, total, cut) => rows.push([done, total, cut]),
    },
    undefined,
    ['none', '3-2'],
  );
  expect(plan.rows.map((r) => r.cut)).toEqual(['none', '3-2']);
  expect(rows).toEqual([
    [1, 2, 'none'],
    [2, 2, '3-2'],
  ]);
});

test('progress appears only once planning has taken a while, then every row', () => {
  let clock = 0;
  let written = '';
  const progress = rowProgress({ write: (t: string) => (written += t) }, () => clock);
  clock = 1000;
  progress.onRow(1, 13, 'none');
  expect(written).toBe('');
  clock = 2000;
  progress.onRow(2, 13, '4-2');
  clock = 30_000;
  progress.onRow(13, 13, '1-1');
  progress.finish();
  const lines = written.trim().split('\n');
  expect(lines[0]).toMatch(/^plan: row 2\/13 .*cut 4-2/);
  expect(lines[lines.length - 1]).toMatch(/^plan: row 13\/13 .*cut 1-1/);
});
