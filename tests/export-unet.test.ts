/**
 * `hollowc export-unet` on a fine-tuned sd15-tiny fixture (tests/support/fine-tuned.ts: base
 * weights of up_blocks.3, conv_out and down_blocks.0.attentions.0 trained, LoRA on two Linear
 * layers and a conv, one of them a trained weight): the diffusers folder holds every parameter by
 * its diffusers name in torch's layout, the ONNX UNet is the source graph with the new weights, and
 * the ONNX UNet's output gives exactly the loss grads.onnx computes with the trained values as inputs.
 * (UNet2DConditionModel.from_pretrained of the diffusers folder against the ONNX UNet: the oracle
 * check tests/bench/export-unet-check.py, which needs torch.)
 */
import * as fs from 'fs';
import * as path from 'path';
import * as ort from 'onnxruntime-node';
import { DIFFUSERS_CONFIG_FILE, DIFFUSERS_WEIGHTS_FILE, exportUnet } from '../cli/api/export-unet';
import { loadModel, readTensorBytes } from '../compiler/serde';
import { findBaseParameters, torchLayoutData } from '../passes/lib/base-parameters';
import { streamBytes } from '../compiler/float16-data';
import { readIndexedTensor, readSafetensorsIndex } from '../runtime/formats/safetensors-stream';
import { FIXTURE_MODEL, fixtureInputs, fixtureTensor, maxAbsDiff, tempDir, tinyTrainBaseSpec } from './support/fixture';
import { FineTuned, TUNED_BASE, fineTuned, fineTunedFixture, fineTunedLoss } from './support/fine-tuned';
import { buildPipeline } from '../models/builder/pipeline';
import { FAMILIES } from '../models/families';
import { runCli } from './support/cli';
import { compileSpec } from '../cli/api/compile-spec';
import { checkSpecFile } from '../cli/api/spec';
import { loadUNet } from '../cli/api/unet';
import { fromHalfBits, toHalfBits } from '../compiler/float16';
import { loadTrainingData } from '../runtime/store/training-data';
import { precompute } from '../runtime/store/precompute';
import { TRAINED_BASE_FILE } from '../runtime/train/base-weights';
import { train } from '../runtime/train/train';
import { writeData } from './runtime-fake-train';

let dir: string;
let tuned: FineTuned;
beforeAll(() => {
  dir = tempDir('hollowc-export-unet-');
  tuned = fineTunedFixture(dir);
}, 120_000);

const floats = (bytes: Uint8Array) => new Float32Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength));
function diffusersWeights(folder: string): Map<string, Float32Array> {
  const file = path.join(folder, DIFFUSERS_WEIGHTS_FILE);
  const index = readSafetensorsIndex(file).tensors;
  return new Map([...index].map(([name, t]) => [name, floats(readIndexedTensor(file, t))]));
}
function torchValues(model: string): Map<string, Float32Array> {
  return new Map(
    findBaseParameters(loadModel(model).graph).map((p) => {
      const chunks: Uint8Array[] = [];
      streamBytes(p.name, torchLayoutData(p), (c) => chunks.push(Uint8Array.from(c)));
      return [p.name, floats(Buffer.concat(chunks))];
    }),
  );
}

/** A 64 x 64 image in 2 steps of a pipeline folder (seed 3): the exported UNet and the source compared. */
const generate = (model: string, file: string) =>
  runCli([
    'generate',
    '--model',
    model,
    '--prompt',
    'a photo of a dog',
    '--width',
    '64',
    '--height',
    '64',
    '--steps',
    '2',
    '--seed',
    '3',
    '-o',
    file,
  ]);

describe('export-unet of a fine-tuned sd15-tiny', () => {
  test('diffusers: every parameter by diffusers name in torch layout; trained ones as trained, LoRA folded in, the rest as the source', () => {
    const output = path.join(dir, 'diffusers');
    const r = exportUnet({ out: tuned.out, format: 'diffusers', output, config: tuned.config });
    expect(r.files.sort()).toEqual([DIFFUSERS_WEIGHTS_FILE, DIFFUSERS_CONFIG_FILE].sort());
    expect(JSON.parse(fs.readFileSync(path.join(output, DIFFUSERS_CONFIG_FILE), 'utf8')).block_out_channels).toEqual([16, 32, 48, 48]);
    const w = diffusersWeights(output);
    const source = loadModel(FIXTURE_MODEL);
    const params = findBaseParameters(source.graph);
    expect(w.size).toBe(686);
    expect(r.changed).toBe(tuned.manifest.trainBase!.length + 2); // + the two LoRA layers whose weight did not train
    // pre-transposed in the export: onnx::MatMul_8620 is to_k's [in, out]; the folder holds torch's [out, in]
    const toK = params.find((p) => p.name === 'down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight')!;
    expect(toK.value.name).toMatch(/^onnx::MatMul_\d+$/);
    expect(toK.value.initializer!.dims).toEqual([32, 32]); // [in: cross_attention_dim, out: 32]
    const stored = floats(readTensorBytes(toK.value.initializer!));
    const exported = w.get(toK.name)!;
    for (let o = 0; o < 32; o++) for (let i = 0; i < 32; i++) expect(exported[o * 32 + i]).toBe(stored[i * 32 + o]);
    // GroupNorm's [C, 1, 1] scale as torch's [C]
    expect(Array.from(w.get('down_blocks.1.resnets.0.norm1.weight')!)).toEqual(
      Array.from(floats(readTensorBytes(params.find((p) => p.name === 'down_blocks.1.resnets.0.norm1.weight')!.value.initializer!))),
    );
    for (const p of tuned.manifest.trainBase!) {
      if (tuned.manifest.lora.targets.some((t) => `${t.module}.weight` === p.name)) continue;
      expect(Buffer.from(w.get(p.name)!.buffer).equals(Buffer.from(tuned.values.get(p.name)!.buffer))).toBe(true);
    }
    // LoRA folded: W + (alpha/r)·B·A, on a trained weight and on a frozen conv
    for (const t of tuned.manifest.lora.targets) {
      const name = `${t.module}.weight`;
      const base = tuned.values.get(name) ?? torchValues(FIXTURE_MODEL).get(name)!;
      // W[o, k] + (alpha/r) Σ_r B[o, r]·A[r, k], k running over the input channels (and the kernel)
      const [A, B] = [tuned.values.get(t.lora_A.name)!, tuned.values.get(t.lora_B.name)!];
      const [outF, rank, per] = [t.lora_B.shape[0], t.lora_A.shape[0], base.length / t.lora_B.shape[0]];
      const want = base.map((x, j) => {
        const [o, k] = [Math.floor(j / per), j % per];
        let sum = 0;
        for (let r = 0; r < rank; r++) sum += B[o * rank + r] * A[r * per + k];
        return x + (tuned.manifest.lora.alpha / rank) * sum;
      });
      expect(outF * per).toBe(base.length);
      expect(maxAbsDiff(w.get(name)!, want)).toBeLessThan(1e-6);
      expect(maxAbsDiff(w.get(name)!, base)).toBeGreaterThan(1e-3);
    }
    // untouched: every other parameter as the source holds it
    const untouched = torchValues(FIXTURE_MODEL);
    const frozen = params.filter(
      (p) => !TUNED_BASE.test(p.name) && !tuned.manifest.lora.targets.some((t) => `${t.module}.weight` === p.name),
    );
    expect(frozen.length).toBeGreaterThan(500);
    for (const p of frozen) expect(Buffer.from(w.get(p.name)!.buffer).equals(Buffer.from(untouched.get(p.name)!.buffer))).toBe(true);
  });

  test('onnx: the source graph with the new weights; its output gives the loss of grads.onnx fed the trained values', async () => {
    const output = path.join(dir, 'onnx');
    exportUnet({ out: tuned.out, format: 'onnx', output });
    const model = path.join(output, 'model.onnx');
    expect(fs.existsSync(path.join(output, 'model.onnx_data'))).toBe(true);
    expect(loadModel(model).graph.nodes.length).toBe(loadModel(FIXTURE_MODEL).graph.nodes.length);
    // each weight stored as the export stored it, holding what the diffusers folder holds
    const diffusers = path.join(dir, 'diffusers-for-onnx');
    exportUnet({ out: tuned.out, format: 'diffusers', output: diffusers, config: tuned.config });
    const a = torchValues(model);
    const b = diffusersWeights(diffusers);
    expect([...a.keys()].sort()).toEqual([...b.keys()].sort());
    for (const [name, v] of a) expect(Buffer.from(v.buffer).equals(Buffer.from(b.get(name)!.buffer))).toBe(true);

    const session = await ort.InferenceSession.create(model, { executionProviders: ['cpu'] });
    const got = (await session.run(fixtureInputs(1))).out_sample.data as Float32Array;
    await session.release();
    const target = fixtureTensor('ref/target.npy').data as Float32Array;
    const mse = got.reduce((s, x, i) => s + (x - target[i]) ** 2, 0) / got.length;
    const want = await fineTunedLoss(tuned);
    expect(Math.abs(mse - want) / want).toBeLessThan(1e-5);
    // and it is not the base model's
    const base = await ort.InferenceSession.create(FIXTURE_MODEL, { executionProviders: ['cpu'] });
    const before = (await base.run(fixtureInputs(1))).out_sample.data as Float32Array;
    await base.release();
    expect(maxAbsDiff(got, before)).toBeGreaterThan(1e-2);
  });

  test('the CLI: a second export replaces the first; bad input is one line and writes nothing', async () => {
    const output = path.join(dir, 'cli');
    const r1 = await runCli(['export-unet', tuned.out, '--format', 'diffusers', '--config', tuned.config, '-o', output]);
    expect(r1.code).toBe(0);
    expect(r1.stdout).toContain('686 parameters');
    fs.writeFileSync(path.join(output, 'stale.txt'), 'from before');
    const again = await runCli(['export-unet', tuned.out, '--format', 'diffusers', '--config', tuned.config, '-o', output]);
    expect(again.code).toBe(0);
    expect(fs.readdirSync(output).sort()).toEqual([DIFFUSERS_CONFIG_FILE, DIFFUSERS_WEIGHTS_FILE].sort());
    const r2 = await runCli(['export-unet', tuned.out, '--format', 'diffusers', '-o', path.join(dir, 'no-config')]);
    expect(r2.code).toBe(1);
    expect(r2.stderr).toMatch(/config.json.*give it with --config/);
    expect(fs.existsSync(path.join(dir, 'no-config'))).toBe(false);
    const r3 = await runCli([
      'export-unet',
      tuned.out,
      '--model',
      path.join(dir, 'diffusers', DIFFUSERS_CONFIG_FILE),
      '-o',
      path.join(dir, 'bad-model'),
    ]);
    expect(r3.code).toBe(1);
    expect(r3.stderr).toMatch(/is not the UNet .* was compiled from/);
    expect(fs.readdirSync(dir).filter((f) => f.includes('.hollowc-'))).toEqual([]);
  });
});

describe('export-unet --format onnx --pipeline', () => {
  test('a pipeline folder with the fine-tuned UNet that generate --model runs', async () => {
    const root = tempDir('hollowc-export-pipeline-');
    const pipe = path.join(root, 'pipe');
    await buildPipeline('sd15', 'tiny', pipe, { seed: 2 });
    const t = fineTuned(
      root,
      path.join(pipe, 'unet', 'model.onnx'),
      { sample: [...FAMILIES.sd15.tiny.shapes.sample], encoder_hidden_states: [...FAMILIES.sd15.tiny.shapes.encoder_hidden_states] },
      [],
    );
    const tunedPipe = path.join(root, 'tuned-pipe');
    const r = await runCli(['export-unet', t.out, '--format', 'onnx', '--pipeline', pipe, '-o', tunedPipe]);
    expect([r.code, r.stderr]).toEqual([0, '']);
    expect(fs.statSync(path.join(tunedPipe, 'text_encoder', 'model.onnx')).ino).toBe(
      fs.statSync(path.join(pipe, 'text_encoder', 'model.onnx')).ino,
    );
    expect(fs.existsSync(path.join(tunedPipe, 'unet', 'config.json'))).toBe(true);
    const a = await generate(tunedPipe, path.join(root, 'tuned.png'));
    expect([a.code, a.stderr.includes('error')]).toEqual([0, false]);
    await generate(pipe, path.join(root, 'base.png'));
    expect(fs.readFileSync(path.join(root, 'tuned.png')).equals(fs.readFileSync(path.join(root, 'base.png')))).toBe(false);
  }, 300_000);
});

describe('export-unet of a float16 source (model build --dtype fp16) trained a few steps', () => {
  test('onnx: a float16 pipeline, trained weights rounded to float16, frozen ones the source bytes, generate --model runs it; diffusers: float32, the trained values', async () => {
    const root = tempDir('hollowc-export-fp16-');
    const pipe = path.join(root, 'pipe16');
    await buildPipeline('sd15', 'tiny', pipe, { seed: 2, dtype: 'fp16' });
    const unetFile = path.join(pipe, 'unet', 'model.onnx');
    const v = FAMILIES.sd15.tiny;
    const spec = path.join(root, 'fp16.hollow');
    fs.writeFileSync(spec, tinyTrainBaseSpec(['optimizer adamw lr 1e-3']));
    const out = path.join(root, 'compiled');
    const unet = loadUNet(unetFile);
    const manifest = compileSpec(unet, checkSpecFile(unet, spec), { out });
    await precompute({
      out,
      data: loadTrainingData(writeData(path.join(root, 'samples'), 'sd15', { instances: 2, classes: 0 })),
      count: 2,
    });
    await train({ out, steps: 3 });
    const trainedBase = path.join(out, TRAINED_BASE_FILE);
    const trained = new Map([...readSafetensorsIndex(trainedBase).tensors].map(([n, t]) => [n, floats(readIndexedTensor(trainedBase, t))]));
    expect(trained.size).toBe(manifest.trainBase!.length);
    const folded = new Set(manifest.lora.targets.filter((t) => t.trained).map((t) => `${t.module}.weight`));
    expect(folded.size).toBeGreaterThan(0);

    // diffusers: float32, trained values as trained, frozen ones the float16 source widened
    const diffusers = path.join(root, 'diffusers');
    exportUnet({ out, format: 'diffusers', output: diffusers, config: path.join(pipe, 'unet', DIFFUSERS_CONFIG_FILE) });
    const dIndex = readSafetensorsIndex(path.join(diffusers, DIFFUSERS_WEIGHTS_FILE)).tensors;
    expect([...dIndex.values()].every((t) => t.dtype === 'F32')).toBe(true);
    const w = diffusersWeights(diffusers);
    const source = findBaseParameters(loadModel(unetFile).graph);
    expect(w.size).toBe(source.length);
    // (a trained weight that also has a trained LoRA holds both: the LoRA folded into the trained value)
    for (const [name, value] of trained)
      if (!folded.has(name)) expect(Buffer.from(w.get(name)!.buffer).equals(Buffer.from(value.buffer))).toBe(true);
    const halfOf = (bytes: Uint8Array) => new Uint16Array(Uint8Array.from(bytes).buffer);
    const storedOrder = (p: { layout: string; shape: number[] }, torch: Float32Array) => {
      if (p.layout !== 'transposed') return torch;
      const [rows, cols] = p.shape;
      const t = new Float32Array(rows * cols);
      for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) t[c * rows + r] = torch[r * cols + c];
      return t;
    };
    for (const p of source) {
      if (trained.has(p.name) || folded.has(p.name)) continue;
      const bits = halfOf(readTensorBytes(p.value.initializer!));
      expect(Array.from(storedOrder(p, w.get(p.name)!)).map(toHalfBits)).toEqual(Array.from(bits));
    }

    // onnx with the float16 pipeline: every weight float16; frozen ones byte for byte the source's,
    // changed ones (trained, LoRA folded) the diffusers float32 values rounded to the nearest float16
    const tunedPipe = path.join(root, 'tuned-pipe16');
    const r = exportUnet({ out, format: 'onnx', output: tunedPipe, pipeline: pipe });
    expect(r.changed).toBe(trained.size + [...folded].filter((n) => !trained.has(n)).length);
    const exported = new Map(findBaseParameters(loadModel(path.join(tunedPipe, 'unet', 'model.onnx')).graph).map((p) => [p.name, p]));
    expect(exported.size).toBe(source.length);
    let frozen = 0;
    let moved = 0;
    for (const p of source) {
      const e = exported.get(p.name)!;
      expect([e.value.initializer!.dataType, e.layout, e.value.initializer!.dims]).toEqual([10, p.layout, p.value.initializer!.dims]); // FLOAT16
      const [got, was] = [readTensorBytes(e.value.initializer!), readTensorBytes(p.value.initializer!)];
      if (!trained.has(p.name) && !folded.has(p.name)) {
        expect(Buffer.from(got).equals(Buffer.from(was))).toBe(true);
        frozen++;
        continue;
      }
      const want = storedOrder(p, w.get(p.name)!);
      const bits = halfOf(got);
      bits.forEach((h, i) => {
        // the nearest float16: neither neighbour is closer to the float32 value
        const x = want[i];
        const d = Math.abs(fromHalfBits(h) - x);
        const closer = [h - 1, h + 1].some((n) => n >= 0 && n <= 0xffff && Math.abs(fromHalfBits(n) - x) < d);
        if (closer || toHalfBits(x) !== h) throw new Error(`${p.name}[${i}]: ${x} stored as ${fromHalfBits(h)}`);
      });
      if (!Buffer.from(got).equals(Buffer.from(was))) moved++;
    }
    // eslint-disable-next-line no-console
    console.log(
      `float16 export: ${moved} changed weights rounded to float16 (${trained.size} trained, ${folded.size} with LoRA folded in), ${frozen} frozen ones byte-equal`,
    );
    expect(frozen).toBeGreaterThan(300);
    expect(moved).toBe(r.changed);

    const a = await generate(tunedPipe, path.join(root, 'tuned.png'));
    expect([a.code, a.stderr.includes('error')]).toEqual([0, false]);
    expect(a.stderr).toContain('unet/model.onnx: cpu');
    const b = await generate(pipe, path.join(root, 'base.png'));
    expect(b.code).toBe(0);
    expect(fs.readFileSync(path.join(root, 'tuned.png')).equals(fs.readFileSync(path.join(root, 'base.png')))).toBe(false);
  }, 600_000);
});
