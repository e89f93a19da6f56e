/**
 * Every paper preset compiles for builder-made sd15/sd21 models and `sdxl-mid` for SDXL, and the
 * artifacts keep the Hollowed-Net invariants at batch 1 and 2:
 * - with every LoRA B = 0, infer.onnx is the base UNet;
 * - with LoRA, infer.onnx = the hollowed net (forward.onnx) fed precompute.onnx's activation of
 *   the base conditioning, i.e. the two paths are wired as the paper describes.
 */
import * as path from 'path';
import * as ort from 'onnxruntime-node';
import { CompileManifest } from '../compiler/manifest';
import { compile } from '../passes/compile-unet';
import { findLoraSites } from '../passes/lib/lora-sites';
import { loadModel } from '../compiler/serde';
import { buildUNet } from '../models/builder';
import { FAMILIES, FamilyName } from '../models/families';
import { presetsFor } from '../models/presets';
import { maxAbsDiff, tempDir } from './support/fixture';
import { randomTensor, zeros } from './support/tensors';

const ATTENTION = /\.attn[12]\.(to_q|to_k|to_v|to_out\.0)$/;

function unetInputs(family: FamilyName, batch: number, seed: number): Record<string, ort.Tensor> {
  const shapes = FAMILIES[family].tiny.shapes;
  const withBatch = (s: readonly number[]) => [batch, ...s.slice(1)];
  const feeds: Record<string, ort.Tensor> = {
    sample: randomTensor(seed, 'sample', withBatch(shapes.sample)),
    timestep: new ort.Tensor(
      'float32',
      Float32Array.from({ length: batch }, (_, i) => 211 + 397 * i),
      [batch],
    ),
    encoder_hidden_states: randomTensor(seed, 'ehs', withBatch(shapes.encoder_hidden_states)),
  };
  if (shapes.text_embeds) feeds.text_embeds = randomTensor(seed, 'text', withBatch(shapes.text_embeds));
  if (shapes.time_ids)
    feeds.time_ids = new ort.Tensor(
      'float32',
      Float32Array.from({ length: batch * 6 }, (_, i) => [128, 128, 0, 0, 128, 128][i % 6]),
      [batch, 6],
    );
  return feeds;
}

function loraFeeds(m: CompileManifest, seed: number, zeroB: boolean): Record<string, ort.Tensor> {
  const feeds: Record<string, ort.Tensor> = {};
  for (const t of m.lora.targets.filter((x) => x.trained)) {
    feeds[t.lora_A.name] = randomTensor(seed, t.lora_A.name, t.lora_A.shape, 0.5);
    feeds[t.lora_B.name] = zeroB ? zeros(t.lora_B.shape) : randomTensor(seed, t.lora_B.name, t.lora_B.shape, 0.5);
  }
  return feeds;
}

async function session(file: string) {
  return ort.InferenceSession.create(file, { executionProviders: ['cpu'], graphOptimizationLevel: 'basic' });
}

const CASES: [FamilyName, string[]][] = (['sd15', 'sd21', 'sdxl'] as FamilyName[]).map((f) => [f, presetsFor(f).map((p) => p.name)]);

describe.each(CASES)('%s tiny', (family, presets) => {
  const dir = tempDir(`hollowc-${family}-`);
  let modelFile: string;
  let targets: string[];
  let base: ort.InferenceSession;

  beforeAll(async () => {
    modelFile = (await buildUNet(FAMILIES[family].tiny.config, { outDir: dir, seed: 7 })).file;
    targets = findLoraSites(loadModel(modelFile).graph)
      .map((s) => s.module)
      .filter((m) => ATTENTION.test(m));
    base = await session(modelFile);
  });
  afterAll(async () => base?.release());

  test.each(presets)('preset %s', async (preset) => {
    const lastKept = presetsFor(family).find((p) => p.name === preset)!.lastKeptDown;
    const out = path.join(dir, `out-${preset.replace('%', '')}`);
    const m = compile({
      modelFile,
      outDir: out,
      lastKeptDown: lastKept,
      targets,
      lora: { rank: 2, alpha: 2 },
      emit: ['precompute', 'infer', 'forward'],
    });
    expect(m.family).toBe(family);
    expect(m.cut!.hollowed).toEqual(presetsFor(family).find((p) => p.name === preset)!.hollowed);

    const infer = await session(path.join(out, 'infer.onnx'));
    const precompute = await session(path.join(out, 'precompute.onnx'));
    const forward = await session(path.join(out, 'forward.onnx'));
    try {
      for (const batch of [1, 2]) {
        const inputs = unetInputs(family, batch, 100 + batch);
        const baseInputs: Record<string, ort.Tensor> = { base_encoder_hidden_states: inputs.encoder_hidden_states };
        if (inputs.text_embeds) baseInputs.base_text_embeds = inputs.text_embeds;
        const reference = (await base.run(inputs)).out_sample;
        const zero = (await infer.run({ ...inputs, ...baseInputs, ...loraFeeds(m, 5, true) })).out_sample;
        expect(maxAbsDiff(zero.data as Float32Array, reference.data as Float32Array)).toBeLessThan(1e-4);

        // Two different conditionings: path 1 sees the "class prompt", path 2 the personal one.
        const classInputs = unetInputs(family, batch, 900 + batch);
        const twoPath: Record<string, ort.Tensor> = { base_encoder_hidden_states: classInputs.encoder_hidden_states };
        if (classInputs.text_embeds) twoPath.base_text_embeds = classInputs.text_embeds;
        const lora = loraFeeds(m, 6, false);
        const merged = (await infer.run({ ...inputs, ...twoPath, ...lora })).out_sample;
        const activation = (
          await precompute.run({
            ...inputs,
            encoder_hidden_states: classInputs.encoder_hidden_states,
            ...(classInputs.text_embeds ? { text_embeds: classInputs.text_embeds } : {}),
          })
        ).hollow_activation;
        const hollowed = (await forward.run({ ...inputs, hollow_activation: activation, ...lora })).out_sample;
        expect(maxAbsDiff(merged.data as Float32Array, hollowed.data as Float32Array)).toBeLessThan(1e-4);
        // And the LoRA does change the output (the test above could not pass by ignoring it).
        expect(maxAbsDiff(merged.data as Float32Array, reference.data as Float32Array)).toBeGreaterThan(1e-3);
      }
    } finally {
      await Promise.all([infer.release(), precompute.release(), forward.release()]);
    }
  });
});
