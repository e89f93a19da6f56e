/**
 * Plain LoRA fine-tuning (`hollow none`, the baseline users compare Hollowed Net with) through the
 * runtime: precompute writes a store without hollow activations (no model runs), and train runs the
 * whole UNet's grads.onnx on it. Checked against the base UNet: with the initial LoRA (B = 0) the
 * loss train reports on a record equals the MSE of model.onnx's output on that record's z_t, t and
 * conditioning against its target.
 */
import * as fs from 'fs';
import * as path from 'path';
import * as ort from 'onnxruntime-node';
import { checkSpecFile } from '../cli/api/spec';
import { compileSpec } from '../cli/api/compile-spec';
import { loadUNet } from '../cli/api/unet';
import { buildUNet } from '../models/builder/unet';
import { FAMILIES } from '../models/families';
import { precompute } from '../runtime/store/precompute';
import { Store } from '../runtime/store/store';
import { recordLayout } from '../runtime/store/store-format';
import { loadTrainingData } from '../runtime/store/training-data';
import { evaluateLoss, train } from '../runtime/train/train';
import { readLoraForManifest } from '../runtime/formats/lora-file';
import { TRAINED_LORA_FILE } from '../runtime/formats/lora-format';
import { tempDir } from './support/fixture';
import { parseSpec } from '../dsl';
import { DEFAULT_TARGETS } from '../models/training-defaults';
import { NO_HOLLOW_PRESET, personalizeSpec } from '../runtime/personalize/spec';
import type { PipelineFolder } from '../runtime/text-to-image/pipeline-folder';
import { writeData } from './runtime-fake-train';

test('hollow none: a store without activations, trained by train, its first loss the base UNet MSE', async () => {
  const dir = tempDir('hollowc-plain-lora-');
  const v = FAMILIES.sd15.tiny;
  const { file } = await buildUNet(v.config, { outDir: path.join(dir, 'model'), seed: 3 });
  const latent = v.shapes.sample[2];
  fs.writeFileSync(
    path.join(dir, 'spec.hollow'),
    [
      'model sd15',
      'hollow none',
      `shape sample [1, 4, ${latent}, ${latent}]`,
      'shape timestep [1]',
      `shape encoder_hidden_states [1, ${v.shapes.encoder_hidden_states.slice(1).join(', ')}]`,
      'lora rank 4',
      'optimizer adamw lr 1e-2',
      'emit grads train infer',
      '',
    ].join('\n'),
  );
  const out = path.join(dir, 'out');
  const unet = loadUNet(file);
  const manifest = compileSpec(unet, checkSpecFile(unet, path.join(dir, 'spec.hollow')), { out });
  expect(manifest.cut).toBeNull();
  expect(manifest.artifacts.precompute).toBeUndefined();

  const data = loadTrainingData(writeData(path.join(dir, 'data'), 'sd15', { instances: 2, classes: 1, latent }));
  const pre = await precompute({ out, data, count: 4 });
  expect(pre.added).toBe(4);
  // z_t and the target per record, no activation: 24 fixed bytes + 2 latents + the CRC
  expect(pre.recordBytes).toBe(recordLayout([4, latent, latent], [0]).recordBytes);
  expect(pre.recordBytes).toBe(24 + 2 * 4 * 4 * latent * latent + 4);

  // the base UNet on the first record, by hand
  const { store } = Store.open(path.join(out, 'store'), { readOnly: true });
  const rec = store.read(0);
  const cond = store.conditioning(rec.condId);
  store.close();
  expect(rec.activation.length).toBe(0);
  const session = await ort.InferenceSession.create(file);
  const r = await session.run({
    sample: new ort.Tensor('float32', rec.zt, [1, 4, latent, latent]),
    timestep: new ort.Tensor('float32', Float32Array.of(rec.timestep), [1]),
    encoder_hidden_states: new ort.Tensor('float32', cond.encoderHiddenStates.data, [1, ...cond.encoderHiddenStates.shape]),
  });
  await session.release();
  const outSample = r[session.outputNames[0]].data as Float32Array;
  let mse = 0;
  for (let k = 0; k < outSample.length; k++) mse += (outSample[k] - rec.target[k]) ** 2 / outSample.length;
  const loss = await evaluateLoss({ out, batches: 1 });
  expect(Math.abs(loss - mse) / mse).toBeLessThan(1e-5);

  const run = await train({ out, steps: 4 });
  expect(run.step).toBe(4);
  const trained = readLoraForManifest(path.join(out, TRAINED_LORA_FILE), manifest);
  const bs = [...trained].filter(([name]) => name.endsWith('lora_B.weight'));
  expect(bs.length).toBe(manifest.lora.targets.filter((t) => t.trained).length);
  expect(bs.every(([, b]) => b.some((x) => x !== 0))).toBe(true);
});

test('personalize --preset none writes hollow none without precompute; --lora-targets writes its targets', () => {
  const folder = { family: 'sd15', tokenizers: [{ maxLength: 16 }], unet: { config: { cross_attention_dim: 32 } } } as unknown as PipelineFolder;
  const choices = { trainBase: [], optimizerState: 'fp32' as const, gradients: 'fp32' as const, seed: 0, latent: [4, 8, 8] };
  const plain = parseSpec(personalizeSpec(folder, { ...choices, preset: NO_HOLLOW_PRESET, lora: { rank: 8, alpha: 8 } }), 'run.hollow');
  expect(plain.hollow.kind).toBe('none');
  expect(plain.emit.value).toEqual(['train', 'grads', 'infer']);
  expect(plain.lora.targets.map((t) => t.value)).toEqual([...DEFAULT_TARGETS]);
  const conv = parseSpec(
    personalizeSpec(folder, { ...choices, preset: '39.2%', lora: { rank: 8, alpha: 8, targets: [...DEFAULT_TARGETS, 'conv1', 'conv2'] } }),
    'run.hollow',
  );
  expect(conv.hollow.kind).toBe('preset');
  expect(conv.emit.value).toEqual(['precompute', 'train', 'grads', 'infer']);
  expect(conv.lora.targets.map((t) => t.value)).toEqual([...DEFAULT_TARGETS, 'conv1', 'conv2']);
});
