/**
 * Sizes checked before any work and folders that know their UNet (issue 33 items 2, 3): a size the
 * UNet cannot take is refused in one line saying which sizes work, before anything is written; a
 * compiled folder records the UNet it was made from, and pairing it with another is refused.
 */
import * as fs from 'fs';
import * as path from 'path';
import { checkCompiledFrom, sha256File } from '../compiler/model-identity';
import { readManifest } from '../compiler/manifest';
import { buildPipeline } from '../models/builder/pipeline';
import { runCli, refused } from './support/cli';
import { tempDir, TINY_SD15_SPEC } from './support/fixture';
import { writeData } from './runtime-fake-train';

let root: string;
let pipeA: string; // tiny sd15 pipeline, seed 1: three downsamplers, so latent sides are multiples of 8
let pipeB: string; // the same architecture, seed 2
let out: string; // compiled from pipeA

const SPEC = TINY_SD15_SPEC;

function write(name: string, content: string): string {
  const file = path.join(root, name);
  fs.writeFileSync(file, content);
  return file;
}


beforeAll(async () => {
  root = tempDir('hollowc-sizes-identity-');
  pipeA = path.join(root, 'pipe-a');
  pipeB = path.join(root, 'pipe-b');
  await buildPipeline('sd15', 'tiny', pipeA, { seed: 1 });
  await buildPipeline('sd15', 'tiny', pipeB, { seed: 2 });
  out = path.join(root, 'out');
  const r = await runCli(['compile', pipeA, write('spec.hollow', SPEC), '-o', out]);
  expect([r.code, r.stderr]).toEqual([0, '']);
});

describe('sizes the UNet cannot take are refused before any work', () => {
  test('compile: the spec line and column of the side', async () => {
    const spec = write('spec-12.hollow', SPEC.replace('[1, 4, 16, 16]', '[1, 4, 12, 16]'));
    const never = path.join(root, 'never-12');
    const r = await runCli(['compile', pipeA, spec, '-o', never]);
    expect(r.code).toBe(1);
    expect(r.stderr.split('\n')[0]).toBe(
      `${spec}:3:21: error: latent height 12: the UNet takes latent sides that are multiples of 8; nearest: 8 or 16`,
    );
    expect(fs.existsSync(never)).toBe(false);
  });

  test('generate --model: image sides, with the nearest that work', async () => {
    const png = path.join(root, 'never.png');
    await refused(
      ['generate', '--model', pipeA, '--prompt', 'x', '--width', '64', '--height', '96', '-o', png],
      '--height 96: the UNet takes latent sides that are multiples of 8 (images: multiples of 64); nearest: 64 or 128',
    );
    await refused(['generate', '--model', pipeA, '--prompt', 'x', '--width', '60', '-o', png], '--width 60: the UNet takes latent sides that are multiples of 8 (images: multiples of 64); nearest: 64');
    expect(fs.existsSync(png)).toBe(false);
  });

  test('generate <out>: --latent-size against what the compiled UNet takes', async () => {
    const data = writeData(path.join(root, 'data-16'), 'sd15', { instances: 1, classes: 0 });
    const embeds = path.join(data, 'instance_prompt.npy');
    const latents = path.join(root, 'never.npy');
    await refused(
      ['generate', out, '--prompt-embeds', embeds, '--class-embeds', embeds, '--latent-size', '12x16', '--latents-out', latents],
      '--latent-size height 12: the UNet takes latent sides that are multiples of 8; nearest: 8 or 16',
    );
    expect(fs.existsSync(latents)).toBe(false);
  });

  test('precompute: latents of a size the hollowed net cannot take write no store', async () => {
    // precompute.onnx (the down path only) would take them; training would fail in the up path
    const data = writeData(path.join(root, 'data-12'), 'sd15', { instances: 2, classes: 0, latent: 12 });
    await refused(['precompute', out, '--data', data, '--count', '2'], 'latent height 12: the UNet takes latent sides that are multiples of 8; nearest: 8 or 16');
    expect(fs.existsSync(path.join(out, 'store'))).toBe(false);
  });

  test('personalize --resolution: before any stage, no run folder', async () => {
    const run = path.join(root, 'run-96');
    await refused(
      ['personalize', '--model', pipeA, '--photos', root, '--prompt', 'a sks dog', '--class-prompt', 'a dog', '--resolution', '96', '-o', run],
      '--resolution 96: the UNet takes latent sides that are multiples of 8 (images: multiples of 64); nearest: 64 or 128',
    );
    expect(fs.existsSync(run)).toBe(false);
  });

  test('plan --shape', async () => {
    await refused(['plan', pipeA, '--rank', '2', '--shape', 'sample=1,4,16,20'], '--shape sample width 20: the UNet takes latent sides that are multiples of 8; nearest: 16 or 24');
  });
});

describe('a compiled folder knows the UNet it was made from', () => {
  test('generate --model with --run compiled from another UNet is refused, naming both', async () => {
    const stderr = await refused(
      ['generate', '--model', pipeB, '--run', out, '--prompt', 'x', '-o', path.join(root, 'never-run.png')],
      `--run ${out} was compiled from another UNet (${path.resolve(pipeA, 'unet', 'model.onnx')}, `,
    );
    expect(stderr).toContain(`than --model ${pipeB} (${path.resolve(pipeB, 'unet', 'model.onnx')}, `);
  });

  test('a copy of the UNet is the same UNet; other weights behind the same graph are not', () => {
    const manifest = readManifest(out);
    const copy = path.join(root, 'copy');
    fs.cpSync(path.join(pipeA, 'unet'), copy, { recursive: true });
    const what = { folder: 'out', model: 'copy' };
    expect(() => checkCompiledFrom(manifest, path.join(copy, 'model.onnx'), what)).not.toThrow();
    // one weight changed: the graph file is byte for byte the same, so its hash alone would pass
    const data = path.join(copy, 'model.onnx_data');
    const bytes = fs.readFileSync(data);
    bytes[0] ^= 0x40;
    fs.writeFileSync(data, bytes);
    expect(sha256File(path.join(copy, 'model.onnx'))).toBe(manifest.model.sha256);
    expect(() => checkCompiledFrom(manifest, path.join(copy, 'model.onnx'), what)).toThrow('out was compiled from another UNet');
  });
});

describe('a store knows the UNet it was precomputed with', () => {
  test('train refuses a store precomputed for the same graph with other weights; its own store trains', async () => {
    const copy = path.join(root, 'unet-other-weights');
    fs.cpSync(path.join(pipeA, 'unet'), copy, { recursive: true });
    const weights = path.join(copy, 'model.onnx_data');
    const bytes = fs.readFileSync(weights);
    bytes[0] ^= 0x40;
    fs.writeFileSync(weights, bytes);
    const spec = write(
      'spec-train.hollow',
      SPEC.replace('emit precompute infer', 'emit precompute grads').replace('lora rank', 'shape encoder_hidden_states [1, 7, 32]\nlora rank'),
    );
    const [outA, outC] = [path.join(root, 'train-a'), path.join(root, 'train-c')];
    expect((await runCli(['compile', pipeA, spec, '-o', outA])).code).toBe(0);
    expect((await runCli(['compile', path.join(copy, 'model.onnx'), spec, '-o', outC])).code).toBe(0);
    // the graph files are the same bytes: the graph's hash alone would take the store
    expect(readManifest(outC).model.sha256).toBe(readManifest(outA).model.sha256);
    const data = writeData(path.join(root, 'data-train'), 'sd15', { instances: 2, classes: 0 });
    const pre = await runCli(['precompute', outA, '--data', data, '--count', '2']);
    expect([pre.code, pre.stderr.includes('error')]).toEqual([0, false]);
    await refused(['train', outC, '--store', path.join(outA, 'store'), '--steps', '1'], 'the store was precomputed for another compile');
    expect(fs.existsSync(path.join(outC, 'lora.safetensors'))).toBe(false);
    const own = await runCli(['train', outA, '--steps', '1']);
    expect([own.code, own.stderr.split('\n').filter((l) => l.includes('error'))]).toEqual([0, []]);
  });
});
