/**
 * `hollowc personalize --train-base` / `--optimizer-state` on the tiny builder SD 1.5 pipeline (few
 * steps, no class images): the spec it writes, the base weights it trains, the fine-tuned UNet it
 * exports (an ONNX pipeline folder whose UNet differs from the source in exactly the trained tensors,
 * and a diffusers UNet folder), validation images from that pipeline folder, what the report says,
 * reuse and recompile on reruns, and the combinations it refuses.
 */
import * as crypto from 'crypto';
import * as fs from 'fs';
import * as path from 'path';
import { DIFFUSERS_WEIGHTS_FILE } from '../cli/api/export-unet';
import { PersonalizeOptions, PersonalizeResult, personalize } from '../cli/api/personalize';
import { drawDemoPhotos } from '../cli/demo';
import { streamBytes } from '../compiler/float16-data';
import { loadModel } from '../compiler/serde';
import { buildPipeline } from '../models/builder/pipeline';
import { findBaseParameters, torchLayoutData } from '../passes/lib/base-parameters';
import { readSafetensorsIndex, readIndexedTensor } from '../runtime/formats/safetensors-stream';
import { TRAINED_BASE_FILE } from '../runtime/train/base-weights';
import { refused, runCli } from './support/cli';
import { tempDir } from './support/fixture';

jest.setTimeout(120_000);
const root = tempDir('hollowc-personalize-base-');
let model: string;
let photos: string;

const options = (out: string, extra: Partial<PersonalizeOptions> = {}): PersonalizeOptions => ({
  model,
  photos,
  prompt: 'a photo of sks face',
  classPrompt: 'a photo of a face',
  out,
  steps: 4,
  lr: 1e-3,
  samples: 4,
  validationSteps: 2,
  guidance: 2,
  resolution: 64,
  seed: 1,
  log: () => {},
  warn: () => {},
  progress: { write: () => true },
  ...extra,
});
const sha = (f: string) => crypto.createHash('sha256').update(fs.readFileSync(f)).digest('hex');
const statuses = (r: PersonalizeResult) => Object.fromEntries(r.stages.map((s) => [s.name, s.status]));
const floats = (b: Uint8Array) => new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength));

/** Every parameter of an ONNX UNet by diffusers name, torch layout. */
function unetValues(file: string): Map<string, Float32Array> {
  return new Map(
    findBaseParameters(loadModel(file).graph).map((p) => {
      const chunks: Uint8Array[] = [];
      streamBytes(p.name, torchLayoutData(p), (c) => chunks.push(Uint8Array.from(c)));
      return [p.name, floats(Buffer.concat(chunks))];
    }),
  );
}
function safetensorsValues(file: string): Map<string, Float32Array> {
  const index = readSafetensorsIndex(file).tensors;
  return new Map([...index].map(([name, t]) => [name, floats(readIndexedTensor(file, t))]));
}
const same = (a: Float32Array, b: Float32Array) =>
  Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(Buffer.from(b.buffer, b.byteOffset, b.byteLength));

const upOut = path.join(root, 'up');
let up: PersonalizeResult;

beforeAll(async () => {
  model = path.join(root, 'sd15');
  await buildPipeline('sd15', 'tiny', model, { seed: 0 });
  photos = path.join(root, 'photos');
  await drawDemoPhotos(photos, 3, 64);
  up = await personalize(options(upOut, { trainBase: ['up_blocks.*'] }));
}, 120_000);

/** `hollowc personalize` on the tiny pipeline and its photos, into `out`. */
const personalizeArgs = (out: string) => [
  'personalize',
  '--model',
  model,
  '--photos',
  photos,
  '--prompt',
  'a photo of sks face',
  '--class-prompt',
  'a photo of a face',
  '-o',
  out,
];

/** The validation images' settings (prompt, steps, guidance, seed, size) on another pipeline folder. */
const generateAt = (pipeline: string, output: string) =>
  runCli([
    'generate',
    '--model',
    pipeline,
    '--prompt',
    'a photo of sks face',
    '--steps',
    '2',
    '--guidance',
    '2',
    '--seed',
    '1',
    '--width',
    '64',
    '--height',
    '64',
    '-o',
    output,
  ]);

test('--train-base "up_blocks.*": no LoRA, the pipeline folder differs from the source in exactly the trained tensors, validation images from it', async () => {
  const spec = fs.readFileSync(path.join(upOut, 'spec.hollow'), 'utf8');
  expect(spec).toContain('train base "up_blocks.*"\n');
  expect(spec).not.toMatch(/^lora /m); // no --rank: no LoRA (the spec's rule beside train base)
  expect(spec).toContain('emit precompute grads\n'); // no train.onnx or infer.onnx: nothing here runs them
  const m = up.manifest;
  expect(m.lora.targets.filter((t) => t.trained)).toEqual([]);
  const trained = new Set(m.trainBase!.map((p) => p.name));
  expect(trained.size).toBeGreaterThan(50);
  expect([...trained].every((n) => n.startsWith('up_blocks.'))).toBe(true);
  expect(up.lora).toBeUndefined();
  expect(fs.existsSync(path.join(upOut, 'lora.safetensors'))).toBe(false);
  expect(up.loss!.after).toBeLessThan(up.loss!.before);

  // the ONNX pipeline folder: its UNet is the source's with the trained tensors replaced, the rest byte for byte
  const source = unetValues(path.join(model, 'unet', 'model.onnx'));
  const tuned = unetValues(path.join(up.unet!.pipeline, 'unet', 'model.onnx'));
  const values = safetensorsValues(path.join(upOut, 'compiled', TRAINED_BASE_FILE));
  expect(tuned.size).toBe(source.size);
  const changed = [...tuned].filter(([n, v]) => !same(v, source.get(n)!)).map(([n]) => n);
  expect(changed.sort()).toEqual([...trained].sort());
  for (const n of trained) expect(same(tuned.get(n)!, values.get(n)!)).toBe(true);
  const frozen = [...source.keys()].find((n) => n.startsWith('down_blocks.0.resnets.0.conv1.weight'))!;
  expect(same(tuned.get(frozen)!, source.get(frozen)!)).toBe(true);
  // its other components are the source's
  for (const f of ['vae_decoder/model.onnx', 'text_encoder/model.onnx', 'model_index.json'])
    expect(sha(path.join(up.unet!.pipeline, f))).toBe(sha(path.join(model, f)));
  // the diffusers UNet folder holds the same values
  const diffusers = safetensorsValues(path.join(up.unet!.diffusers, DIFFUSERS_WEIGHTS_FILE));
  expect(diffusers.size).toBe(source.size);
  for (const n of trained) expect(same(diffusers.get(n)!, values.get(n)!)).toBe(true);
  expect(same(diffusers.get(frozen)!, source.get(frozen)!)).toBe(true);

  // validation: the personalized image is the pipeline folder's (generate --model at the same seed), and not the base model's
  const [personalized, baseImage] = up.images;
  expect(baseImage).toMatch(/-base\.png$/);
  expect(sha(personalized)).not.toBe(sha(baseImage));
  const again = path.join(root, 'again.png');
  const g = await generateAt(up.unet!.pipeline, again);
  expect(g.code).toBe(0);
  expect(sha(again)).toBe(sha(personalized));
  const fromSource = path.join(root, 'source.png');
  await generateAt(model, fromSource);
  expect(sha(fromSource)).toBe(sha(baseImage));

  // what trained, in the stage summaries and the report
  const summary = (name: string) => up.stages.find((s) => s.name === name)!.summary;
  const words = `base weights "up_blocks.*": ${trained.size} tensors`;
  expect(summary('compile')).toContain(words);
  expect(summary('train')).toMatch(
    /^trained to step 4 .*; trained base weights "up_blocks\.\*": \d+ tensors, [\d,]+ parameters with AdamW, fp32 moments$/,
  );
  expect(summary('export')).toContain(`${trained.size} of ${source.size} tensors changed`);
  const report = fs.readFileSync(up.report, 'utf8');
  expect(report).toContain(words.replace(/"/g, '&quot;'));
  expect(report).toContain('<th>LoRA</th><td>none</td>');
  expect(report).toContain('AdamW, fp32 moments');
  expect(report).toContain('href="pipeline/"');
  expect(report).not.toContain('lora.safetensors');
});

test('reruns: the same choices reuse every stage; another --train-base recompiles and trains other tensors', async () => {
  const same1 = await personalize(options(upOut, { trainBase: ['up_blocks.*'] }));
  expect(Object.values(statuses(same1)).filter((s) => s !== 'reused')).toEqual(['ran']); // the report only
  const other = await personalize(options(upOut, { trainBase: ['up_blocks.3', 'conv_out'] }));
  expect(statuses(other)).toMatchObject({ compile: 'ran', store: 'ran', train: 'ran', export: 'ran', validation: 'ran', photos: 'reused' });
  const names = other.manifest.trainBase!.map((p) => p.name);
  expect(names.every((n) => n.startsWith('up_blocks.3.') || n.startsWith('conv_out.'))).toBe(true);
  expect(names.length).toBeLessThan(up.manifest.trainBase!.length);
  const changed = unetValues(path.join(other.unet!.pipeline, 'unet', 'model.onnx'));
  const source = unetValues(path.join(model, 'unet', 'model.onnx'));
  const upBlock0 = [...source.keys()].find((n) => n.startsWith('up_blocks.0.'))!;
  expect(same(changed.get(upBlock0)!, source.get(upBlock0)!)).toBe(true); // trained in the first run, frozen now
});

test('--optimizer-state 8bit with --train-base and --rank: adamw8bit spec, LoRA on the default targets beside the base weights, both exported', async () => {
  const out = path.join(root, 'eight');
  const r = await runCli([
    ...personalizeArgs(out),
    '--train-base',
    'up_blocks.3',
    '--rank',
    '2',
    '--optimizer-state',
    '8bit',
    '--steps',
    '4',
    '--lr',
    '1e-3',
    '--samples',
    '4',
    '--validation-steps',
    '2',
    '--guidance',
    '2',
    '--resolution',
    '64',
    '--seed',
    '1',
    '--quiet',
  ]);
  expect(r.code).toBe(0);
  expect(r.stderr).not.toMatch(/error|warning/);
  const spec = fs.readFileSync(path.join(out, 'spec.hollow'), 'utf8');
  expect(spec).toContain('optimizer adamw8bit\n');
  expect(spec).toContain('lora targets "attn1.to_q" "attn1.to_k" "attn1.to_v" "attn1.to_out.0" "attn2.to_q"');
  expect(spec).toContain('emit precompute grads\n');
  const manifest = JSON.parse(fs.readFileSync(path.join(out, 'compiled', 'manifest.json'), 'utf8'));
  expect(manifest.training.optimizer.state).toBe('8bit');
  // it trained: the trained-base file differs from the source in every trained tensor, a LoRA was exported
  const values = safetensorsValues(path.join(out, 'compiled', TRAINED_BASE_FILE));
  const source = unetValues(path.join(model, 'unet', 'model.onnx'));
  expect(values.size).toBe(manifest.trainBase.length);
  for (const [n, v] of values) expect([n, same(v, source.get(n)!)]).toEqual([n, false]);
  for (const f of ['lora.safetensors', 'lora-kohya.safetensors', 'pipeline/unet/model.onnx', 'unet-diffusers/config.json'])
    expect(fs.existsSync(path.join(out, f))).toBe(true);
  expect(r.stdout).toMatch(
    /train: trained to step 4 .*; trained LoRA rank 2, alpha 2 on \d+ layers .* and base weights "up_blocks\.3": \d+ tensors, [\d,]+ parameters with AdamW, 8-bit moments/,
  );
  expect(fs.readFileSync(path.join(out, 'report.html'), 'utf8')).toContain('AdamW, 8-bit moments');
});

test('--optimizer-state 8bit on a LoRA run: adamw8bit spec with infer.onnx for the validation images, no train.onnx; it trains', async () => {
  const r = await personalize(options(path.join(root, 'eight-lora'), { rank: 2, optimizerState: '8bit' }));
  const spec = fs.readFileSync(path.join(r.out, 'spec.hollow'), 'utf8');
  expect(spec).toContain('optimizer adamw8bit\n');
  expect(spec).toContain('emit precompute grads infer\n');
  expect(spec).not.toContain('train base');
  expect(r.manifest.training.optimizer.state).toBe('8bit');
  expect(r.manifest.artifacts.train).toBeUndefined();
  expect(r.loss!.after).not.toBe(r.loss!.before);
  expect(r.unet).toBeUndefined();
  for (const f of [r.lora!.diffusers, r.lora!.kohya, ...r.images]) expect(fs.statSync(f).size).toBeGreaterThan(0);
  expect(r.stages.find((s) => s.name === 'train')!.summary).toMatch(
    /^trained to step 4 .*; trained LoRA rank 2, alpha 2 on \d+ layers \([\d,]+ parameters\) with AdamW, 8-bit moments$/,
  );
});

test('bad combinations: one line, nothing written', async () => {
  const spec = path.join(root, 'any.hollow');
  fs.writeFileSync(spec, 'hollow preset "39.2%"\n');
  const out = path.join(root, 'refused');
  const argv = personalizeArgs(out);
  await refused([...argv, '--spec', spec, '--train-base', '*'], '--train-base goes with the generated spec only');
  await refused([...argv, '--spec', spec, '--optimizer-state', '8bit'], '--optimizer-state goes with the generated spec only');
  await refused([...argv, '--train-base', '*', '--alpha', '4'], '--alpha without --rank beside --train-base');
  await refused([...argv, '--optimizer-state', '4bit'], "'4bit' is invalid");
  expect(fs.existsSync(out)).toBe(false);
});
