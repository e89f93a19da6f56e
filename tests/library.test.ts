/**
 * The library entry (package.json "main" -> dist/index.js): inspect, compile, precompute, train
 * and export from code, without the CLI, on a tiny builder model.
 */
import * as fs from 'fs';
import * as path from 'path';
import * as hollowc from '../index';
import { tempDir } from './support/fixture';
import { writeData } from './runtime-fake-train';

test('a library user drives inspect -> compile -> precompute -> train -> export-lora', async () => {
  const dir = tempDir('hollowc-lib-');
  const built = await hollowc.buildUNet(hollowc.FAMILIES.sd15.tiny.config, { outDir: path.join(dir, 'unet'), seed: 1 });
  const unet = hollowc.loadUNet(built.file);
  expect(hollowc.inspectJson(unet.analysis).totalParams).toBe(1390804);
  const specFile = path.join(dir, 'spec.hollow');
  fs.writeFileSync(
    specFile,
    [
      'model sd15',
      'hollow preset "39.2%"',
      'shape sample [1, 4, 16, 16]',
      'shape timestep [1]',
      'shape encoder_hidden_states [1, 7, 32]',
      'lora rank 2',
      'lora targets "attn2.to_q"',
      'train steps 3',
      'emit precompute train',
      '',
    ].join('\n'),
  );
  const out = path.join(dir, 'out');
  const manifest = hollowc.compileSpec(unet, hollowc.checkSpecFile(unet, specFile), { out });
  expect(manifest.hollowc).toBe(hollowc.MANIFEST_FORMAT);
  expect(Object.keys(manifest.artifacts).sort()).toEqual(['precompute', 'train']);
  const data = hollowc.loadTrainingData(writeData(path.join(dir, 'data'), 'sd15', { instances: 2, classes: 0, latent: 16 }));
  const pre = await hollowc.precompute({ out, data, count: 3 });
  expect(pre.records).toBe(3);
  const trained = await hollowc.train({ out });
  expect(trained.step).toBe(3);
  expect(trained.losses.every((l) => Number.isFinite(l.loss))).toBe(true);
  const exported = hollowc.exportLora({ out, format: 'kohya', output: path.join(dir, 'lora.safetensors') });
  expect(exported.modules).toBe(manifest.lora.targets.filter((t) => t.trained).length);
});

test('a library user plans a UNet and gets the same table as `hollowc plan`', async () => {
  const dir = tempDir('hollowc-lib-plan-');
  const built = await hollowc.buildUNet(hollowc.FAMILIES.sd15.tiny.config, { outDir: path.join(dir, 'unet'), seed: 1 });
  const plan = hollowc.plan(built.file, { rank: 2, samples: 10, steps: 20, shape: ['sample=1,4,16,16'], budget: '1GB' });
  expect(plan.rows[0].cut).toBe('none');
  expect(plan.rows.length).toBe(hollowc.loadUNet(built.file).analysis.cuts.length + 1);
  // hollowing more holds fewer base parameters and stores a hollow activation per sample
  const cut = plan.rows.find((r) => r.preset === '39.2%')!;
  expect(cut.baseParameters).toBeLessThan(plan.rows[0].baseParameters);
  expect(cut.storeBytesPerSample).toBeGreaterThan(0);
  expect(hollowc.planText(plan)).toContain('39.2%');
});

test("a library user's personalize checks its input before it writes anything", async () => {
  const dir = tempDir('hollowc-lib-personalize-');
  const missing = path.join(dir, 'no-pipeline');
  const out = path.join(dir, 'run');
  await expect(
    hollowc.personalize({ model: missing, photos: dir, prompt: 'a photo of sks dog', classPrompt: 'a photo of a dog', out, log: () => {}, warn: () => {} }),
  ).rejects.toThrow(new RegExp(missing.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')));
  expect(fs.existsSync(out)).toBe(false);
});
