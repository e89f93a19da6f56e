/**
 * `plan` with `train base` and 8-bit moments on the sd15-tiny fixture: the rows count the trained
 * base weights a cut keeps, their value, gradient and moments in the predicted peak, and their
 * weight gradients in train.onnx's counted FLOPs; the CLI's flags and the spec give the same rows.
 */
import * as fs from 'fs';
import * as path from 'path';
import { loadModel } from '../compiler/serde';
import { momentBytes } from '../compiler/manifest';
import { defaultTrainingSettings } from '../models/training-defaults';
import { analyzeUNet } from '../passes/lib/analyze-unet';
import { findBaseParameters } from '../passes/lib/base-parameters';
import { PlanRequest, planUNet } from '../passes/plan/plan';
import { recordLayout } from '../runtime/store/store-format';
import { planFor } from '../cli/api/plan';
import { runCli } from './support/cli';
import { FIXTURE_MODEL, FIXTURE_SHAPES, fixtureManifest, tempDir } from './support/fixture';

const model = loadModel(FIXTURE_MODEL);
const analysis = analyzeUNet(model.graph, FIXTURE_MODEL);
const params = findBaseParameters(model.graph);
const hollowed: string[] = fixtureManifest().hollow.hollowed_modules;
const size = (p: { shape: number[] }) => p.shape.reduce((a, b) => a * b, 1);

function request(trainBase: boolean, state?: '8bit', gradients?: 'fp16'): PlanRequest {
  const d = defaultTrainingSettings('sd15');
  return {
    unet: { file: FIXTURE_MODEL, model, analysis },
    targets: [],
    lora: { rank: 4, alpha: 4 },
    training: { ...d, shapes: FIXTURE_SHAPES, optimizer: { ...d.optimizer, ...(state ? { state } : {}), ...(gradients ? { gradients } : {}) } },
    ...(trainBase
      ? { trainBase: (h: readonly string[]) => params.filter((p) => !h.some((m) => p.module.startsWith(m + '.'))).map((p) => p.name) }
      : {}),
    samples: 10,
    steps: 10,
    storeRecordBytes: (latent, activation) => recordLayout(latent, activation).recordBytes,
  };
}

test('train base "*": each row counts the kept weights, their state in the peak, their gradients in the FLOPs', () => {
  const frozen = planUNet(request(false), undefined, ['none', '3-2']).rows;
  const full = planUNet(request(true), undefined, ['none', '3-2']).rows;
  const q8 = planUNet(request(true, '8bit'), undefined, ['none', '3-2']).rows;
  const kept = params.filter((p) => !hollowed.some((m) => p.module.startsWith(m + '.')));
  expect(full.map((r) => r.trainedBaseParameters)).toEqual([1_390_804, 1_390_804 - fixtureManifest().hollow.hollowed_parameter_count]);
  expect(frozen.map((r) => r.trainedBaseParameters)).toEqual([0, 0]);
  // value + gradient + two float32 moments; under 8 bits the moments of tensors of 4096 values or more are bytes and block scales
  expect(full[1].memory.baseStateBytes).toBe(16 * kept.reduce((a, p) => a + size(p), 0));
  const eightBit = kept.reduce((a, p) => a + 8 * size(p) + (size(p) >= 4096 ? 2 * size(p) + 8 * Math.ceil(size(p) / 256) : 8 * size(p)), 0);
  expect(q8[1].memory.baseStateBytes).toBe(eightBit);
  expect(eightBit).toBe(kept.reduce((a, p) => a + 8 * size(p) + momentBytes(size(p), '8bit'), 0));
  expect(q8[1].memory.baseStateBytes).toBeLessThan(full[1].memory.baseStateBytes);
  // gradients fp16: each trained weight's gradient in 2 bytes instead of 4
  const g16 = planUNet(request(true, undefined, 'fp16'), undefined, ['none', '3-2']).rows;
  expect(full[1].memory.baseStateBytes - g16[1].memory.baseStateBytes).toBe(2 * kept.reduce((a, p) => a + size(p), 0));
  for (const i of [0, 1]) {
    expect(full[i].memory.predictedPeakBytes - frozen[i].memory.predictedPeakBytes).toBeGreaterThanOrEqual(full[i].memory.baseStateBytes);
    // weight gradients: about twice the forward's products more, counted as products with weights
    expect(full[i].flops.trainStepCounted).toBeGreaterThan(1.5 * frozen[i].flops.trainStepCounted);
  }
});

test('the CLI: --train-base and --optimizer-state, or a spec, give the same rows; an unmatched glob is one line', async () => {
  const dir = tempDir('hollowc-plan-train-base-');
  const spec = path.join(dir, 'full.hollow');
  fs.writeFileSync(
    spec,
    'hollow preset "39.2%"\nshape sample [1, 4, 16, 16]\nshape encoder_hidden_states [1, 7, 32]\ntrain base "up_blocks.*"\noptimizer adamw8bit\n',
  );
  const fromSpec = planFor(FIXTURE_MODEL, { spec, rank: 4, samples: 10, steps: 10 });
  const r = await runCli([
    'plan',
    FIXTURE_MODEL,
    '--shape',
    'sample=1,4,16,16',
    '--shape',
    'encoder_hidden_states=1,7,32',
    '--rank',
    '4',
    '--targets',
    'attn2.to_k',
    '--train-base',
    'up_blocks.*',
    '--optimizer-state',
    '8bit',
    '--json',
  ]);
  expect(r.code).toBe(0);
  const fromFlags = JSON.parse(r.stdout);
  const row = (p: typeof fromSpec, cut: string) => p.rows.find((x) => x.cut === cut)!;
  for (const cut of ['none', '3-2']) {
    expect(row(fromFlags, cut).trainedBaseParameters).toBe(row(fromSpec, cut).trainedBaseParameters);
    expect(row(fromFlags, cut).memory.baseStateBytes).toBe(row(fromSpec, cut).memory.baseStateBytes);
  }
  // up_blocks.0 is hollowed under 39.2%: that row trains less of them
  expect(row(fromSpec, '3-2').trainedBaseParameters).toBeLessThan(row(fromSpec, 'none').trainedBaseParameters);
  const text = await runCli(['plan', FIXTURE_MODEL, '--shape', 'sample=1,4,16,16', '--rank', '4', '--train-base', 'up_blocks.*']);
  expect(text.stdout).toContain('base trains');
  const bad = await runCli(['plan', FIXTURE_MODEL, '--shape', 'sample=1,4,16,16', '--rank', '4', '--train-base', 'upblocks.*']);
  expect([bad.code, bad.stderr.trim()]).toEqual([1, 'hollowc: error: --train-base "upblocks.*" matches no module of this model']);
}, 600_000);
