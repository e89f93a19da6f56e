/**
 * `hollowc plan`: FLOPs against the paper's Table 3 (full SD 2.1 at 64x64, counted on the
 * weightless graph), store bytes against what precompute writes, --budget, --json and the plot.
 */
import * as fs from 'fs';
import * as path from 'path';
import sharp from 'sharp';
import { parseBytes } from '../cli/api/plan';
import { PlanRequest, PlanRow, planUNet } from '../passes/plan/plan';
import { planSvg } from '../passes/plan/render';
import { recordLayout } from '../runtime/store/store-format';
import { describeUNet } from '../models/builder/unet';
import { FAMILIES } from '../models/families';
import { defaultTrainingSettings } from '../models/training-defaults';
import { analyzeUNet } from '../passes/lib/analyze-unet';
import { findLoraSites } from '../passes/lib/lora-sites';
import { precompute } from '../runtime/store/precompute';
import { Store } from '../runtime/store/store';
import { loadTrainingData } from '../runtime/store/training-data';
import { runCli } from './support/cli';
import { builderGraph, fullSizeRequest } from './support/plan-request';
import { tempDir } from './support/fixture';
import { tinyCompiled, writeData } from './runtime-fake-train';

const ATTENTION = /\.attn[12]\.(to_q|to_k|to_v|to_out\.0)$/;

const cli = runCli;

const fullSd21Request = (side: number) => fullSizeRequest('sd21', side, builderGraph('sd21'));

test("full SD 2.1 at 64x64 against the paper's Table 3", () => {
  const req = fullSd21Request(64);
  const plan = planUNet(req, undefined, ['none', '3-2']);
  const [none, hollowed] = plan.rows;
  const f = hollowed.flops;
  // Table 3's inference column compares with LoRA FT's inference: the UNet with the r128 branches
  // unmerged (its fine-tuning column is 3 x that forward: 2.148T = 3 x 0.716T).
  const ratios = {
    precomputeOverPlain: f.precompute / f.loraFtForward,
    twoPathOverPlain: f.inferTwoPath / f.loraFtForward,
    hollowedOverLoraFt: f.trainStepPaper / none.flops.trainStepPaper,
  };
  console.log(
    `Table 3 check: UNet forward ${(f.plainForward / 1e12).toFixed(3)}T, with the LoRA branches ${(f.loraFtForward / 1e12).toFixed(3)}T (paper 0.716T); precompute ${(f.precompute / 1e12).toFixed(3)}T (0.238T); hollowed forward ${(f.hollowedForward / 1e12).toFixed(3)}T (2.004T / 3 = 0.668T); two-path ${(f.inferTwoPath / 1e12).toFixed(3)}T (0.920T); train step ${(f.trainStepPaper / 1e12).toFixed(3)}T vs LoRA FT ${(none.flops.trainStepPaper / 1e12).toFixed(3)}T (train.onnx counted: ${(f.trainStepCounted / 1e12).toFixed(3)}T); ratios ${JSON.stringify(ratios)}`,
  );
  expect(Math.abs(f.precompute / 0.238e12 - 1)).toBeLessThan(0.01);
  expect(Math.abs(f.loraFtForward / 0.716e12 - 1)).toBeLessThan(0.01);
  expect(Math.abs(f.hollowedForward / (2.004e12 / 3) - 1)).toBeLessThan(0.01);
  expect(f.loraFtForward).toBeGreaterThan(f.plainForward);
  expect(Math.abs(ratios.precomputeOverPlain / 0.332 - 1)).toBeLessThan(0.05);
  expect(Math.abs(ratios.twoPathOverPlain / 1.285 - 1)).toBeLessThan(0.05);
  expect(Math.abs(ratios.hollowedOverLoraFt / 0.933 - 1)).toBeLessThan(0.05);
  // train.onnx differentiates only towards the LoRA tensors: less than 3 x its forward.
  expect(f.trainStepCounted).toBeLessThan(f.trainStepPaper);
  expect(f.trainStepCounted).toBeGreaterThan(f.hollowedForward);
  // Paper Table 6 store: 39.2% at 64x64 is 1,441,820 bytes per sample (our store also keeps z_t).
  expect(hollowed.storeBytesPerSample).toBe(1441820);
});

// The predicted peaks against measured ones: tests/plan-measured.test.ts.
describe.each([32, 64])('the 39.2%% training peak of full SD 2.1 (%ix, r128) on a reduced-precision base', (side) => {
  let req: PlanRequest;
  let fp32: PlanRow;
  beforeAll(() => {
    req = fullSd21Request(side);
    [fp32] = planUNet(req, undefined, ['3-2']).rows;
  });
  const base = (b: 'int8' | 'fp16') => planUNet({ ...req, training: { ...req.training, base: b } }, undefined, ['3-2']).rows[0];

  test('base fp16: half the weights, the same activations, one float32 copy', () => {
    const fp16 = base('fp16');
    // half the weights held; the float32 copies are not activations, the largest one is counted apart
    expect(Math.abs(fp16.memory.weightBytes / fp32.memory.weightBytes - 0.5)).toBeLessThan(0.01);
    expect(Math.abs(fp16.memory.activationPeakBytes / fp32.memory.activationPeakBytes - 1)).toBeLessThan(1e-4);
    // up_blocks.1's first conv1 (2560 -> 1280 channels, 3x3) as float32
    expect(fp16.memory.weightCopyBytes).toBe(1280 * 2560 * 9 * 4);
  });

  test('base int8: a quarter of the weights and their scales, no weight read', () => {
    const int8 = base('int8');
    // int8 weights with per-channel scales: a quarter of the float32 bytes and a little more
    expect(int8.memory.weightBytes / fp32.memory.weightBytes).toBeGreaterThan(0.25);
    expect(int8.memory.weightBytes / fp32.memory.weightBytes).toBeLessThan(0.27);
    expect(int8.memory.weightCopyBytes).toBe(1280 * 2560 * 9 * 4);
  });
});

describe('on a tiny sd15', () => {
  let dir: string;
  let modelFile: string;
  beforeAll(async () => {
    dir = tempDir('hollowc-plan-');
    const f = await tinyCompiled(path.join(dir, 'tiny'), 'sd15', {
      batch: 1,
      preset: '39.2%',
      extraSpec: 'lora targets "attn1.to_q"',
      train: false,
    });
    modelFile = f.modelFile;
    await precompute({
      out: f.out,
      data: loadTrainingData(writeData(path.join(dir, 'data'), 'sd15', { instances: 2, classes: 0 })),
      count: 2,
    });
    const { store } = Store.open(path.join(f.out, 'store'), { readOnly: true });
    (globalThis as { storeRecordBytes?: number }).storeRecordBytes = store.recordBytes;
    store.close();
  });
  const base = () => [
    'plan',
    modelFile,
    '--shape',
    'sample=1,4,16,16',
    '--shape',
    'encoder_hidden_states=1,7,32',
    '--rank',
    '4',
    '--targets',
    'attn1.to_q',
  ];

  test('--json prints one object; store bytes equal what precompute wrote', async () => {
    const r = await cli([...base(), '--json']);
    expect(r.code).toBe(0);
    const plan = JSON.parse(r.stdout);
    expect(plan.rows.map((x: { cut: string }) => x.cut)[0]).toBe('none');
    const row = plan.rows.find((x: { preset?: string }) => x.preset === '39.2%');
    expect(row.storeBytesPerSample).toBe((globalThis as { storeRecordBytes?: number }).storeRecordBytes);
    expect(row.baseParameters).toBe(908452);
    expect(r.stdout.trim().split('\n')).toHaveLength(1);
  });

  test('--budget between two presets picks the one with fewer hollowed layers that fits', async () => {
    const plan = JSON.parse((await cli([...base(), '--json'])).stdout);
    const byPreset = (name: string) => plan.rows.find((x: { preset?: string }) => x.preset === name);
    const [a, b] = [byPreset('11.5%'), byPreset('39.2%')];
    expect(b.memory.predictedPeakBytes).toBeLessThan(a.memory.predictedPeakBytes);
    const budget = Math.round((a.memory.predictedPeakBytes + b.memory.predictedPeakBytes) / 2);
    const picked = JSON.parse((await cli([...base(), '--json', '--budget', String(budget)])).stdout);
    const fits = picked.rows.filter((x: { fitsBudget: boolean }) => x.fitsBudget);
    expect(fits.length).toBeGreaterThan(0);
    expect(picked.rows.find((x: { cut: string }) => x.cut === picked.chosen).memory.predictedPeakBytes).toBeLessThanOrEqual(budget);
    // Nothing with fewer hollowed layers fits.
    const chosen = picked.rows.find((x: { cut: string }) => x.cut === picked.chosen);
    expect(
      picked.rows.filter((x: { hollowed: string[]; fitsBudget: boolean }) => x.hollowed.length < chosen.hollowed.length && x.fitsBudget),
    ).toEqual([]);
    // The text table marks the pick and states the inference baselines.
    const text = (await cli([...base(), '--budget', String(budget)])).stdout;
    expect(text).toMatch(
      /^one inference step: \d+\.\d\dG the UNet alone \(LoRA merged\), \d+\.\d\dG with the LoRA branches unmerged \(LoRA FT\)$/m,
    );
    expect(text).toMatch(new RegExp(`^\\*${picked.chosen} `, 'm'));
    expect(parseBytes('4GB')).toBe(4 * 2 ** 30);
    expect(parseBytes('3500MiB')).toBe(3500 * 2 ** 20);
  });

  test('--plot draws both series with labelled axes, as SVG and as PNG', async () => {
    const pngFile = path.join(dir, 'plan.png');
    const r = await cli([...base(), '--json', '--plot', pngFile]);
    expect(r.code).toBe(0);
    const meta = await sharp(pngFile).metadata();
    expect([meta.format, meta.width, meta.height]).toEqual(['png', 640, 400]);
    const plan = JSON.parse(r.stdout);
    const svg = planSvg(plan);
    expect(svg).toContain('class="series-memory"');
    expect(svg).toContain('class="series-flops"');
    expect(svg).toContain('hollowed fraction of parameters (%)');
    expect(svg).toContain('predicted peak memory (MiB)');
    expect(svg).toContain('training FLOPs per step');
    expect((svg.match(/<circle /g) ?? []).length).toBe(2 * plan.rows.length);
  });
});
