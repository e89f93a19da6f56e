/**
 * passes/memory/chunk-attention.ts on a builder-made tiny SD 2.1 (39.2% cut): precompute.onnx and the
 * two-path infer.onnx with their attention maps in blocks of query rows give the same outputs as
 * the compile without the pass, bit for bit (the same kernels on the same rows), at the design
 * shape and at one the block count was not chosen for (24x24 latents, batch 2).
 */
import * as fs from 'fs';
import * as path from 'path';
import * as ort from 'onnxruntime-node';
import { loadModel } from '../compiler/serde';
import { buildUNet } from '../models/builder';
import { FAMILIES } from '../models/families';
import { presetsFor } from '../models/presets';
import { findLoraSites } from '../passes/lib/lora-sites';
import { compile } from '../passes/compile-unet';
import { prepareUnet, unetInputShapes } from '../cli/api/prepared-unet';
import { realExportGraph } from './support/plan-request';
import { identicalOutputs, runModel, tempDir, trainingFor } from './support/fixture';

const LATENT = 16;
/**
 * Blocks of at most 100 KiB: the design point's level-0 self-attention map (256 x 256 per head)
 * in blocks whose row counts do not divide 256 evenly, so the last block is shorter.
 */
const CHUNK_BYTES = 100 * 1024;

function random(seed: number, n: number): Float32Array {
  let s = seed >>> 0;
  return Float32Array.from({ length: n }, () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32 - 0.5;
  });
}

function tensor(seed: number, shape: number[]): ort.Tensor {
  return new ort.Tensor(
    'float32',
    random(
      seed,
      shape.reduce((a, b) => a * b, 1),
    ),
    shape,
  );
}

test('chunk-attention: precompute.onnx and infer.onnx in blocks of query rows equal the whole maps bit for bit', async () => {
  const dir = tempDir('hollowc-chunk-');
  const modelFile = (await buildUNet(FAMILIES.sd21.tiny.config, { outDir: path.join(dir, 'unet'), seed: 5 })).file;
  const targets = findLoraSites(loadModel(modelFile).graph)
    .map((s) => s.module)
    .filter((m) => /\.attn[12]\.(to_q|to_k|to_v|to_out\.0)$/.test(m));
  const cross = FAMILIES.sd21.tiny.config.cross_attention_dim as number;
  const shapes = { sample: [1, 4, LATENT, LATENT], timestep: [1], encoder_hidden_states: [1, 77, cross] };
  const build = (out: string, skip: string[]) =>
    compile({
      modelFile,
      outDir: path.join(dir, out),
      lastKeptDown: presetsFor('sd21').find((p) => p.name === '39.2%')!.lastKeptDown,
      targets,
      lora: { rank: 2, alpha: 2 },
      emit: ['precompute', 'infer'],
      training: trainingFor('sd21', shapes),
      inferChunkBytes: CHUNK_BYTES,
      skipPasses: skip,
    });
  const chunkedManifest = build('chunked', []);
  build('whole', ['chunk-attention']);
  const softmaxes = (out: string, file: string) =>
    loadModel(path.join(dir, out, file)).graph.nodes.filter((n) => n.opType === 'Softmax').length;
  for (const file of ['precompute.onnx', 'infer.onnx']) {
    // eslint-disable-next-line no-console
    console.log(`${file}: ${softmaxes('whole', file)} softmaxes whole, ${softmaxes('chunked', file)} in blocks`);
    expect(softmaxes('chunked', file)).toBeGreaterThan(softmaxes('whole', file));
  }

  const lora = chunkedManifest.lora.targets.flatMap((t) => [t.lora_A, t.lora_B]);
  for (const [batch, latent] of [
    [1, LATENT],
    [2, 24],
  ]) {
    const unet = {
      sample: tensor(1, [batch, 4, latent, latent]),
      timestep: new ort.Tensor(
        'float32',
        Float32Array.from({ length: batch }, (_, i) => 500 + i),
        [batch],
      ),
      encoder_hidden_states: tensor(2, [batch, 77, cross]),
    };
    const infer: Record<string, ort.Tensor> = { ...unet, base_encoder_hidden_states: tensor(3, [batch, 77, cross]) };
    // Nonzero B, so path 2's LoRA branches take part.
    lora.forEach((p, i) => (infer[p.name] = tensor(10 + i, p.shape as number[])));
    for (const [file, feeds] of [
      ['precompute.onnx', unet],
      ['infer.onnx', infer],
    ] as const) {
      const [a, b] = [await runModel(path.join(dir, 'chunked', file), feeds), await runModel(path.join(dir, 'whole', file), feeds)];
      expect(identicalOutputs(a, b)).toEqual(Object.keys(a));
    }
  }
});

test('generate --model: the plain UNet prepared at the run shape (prepareUnet) computes its maps in blocks, bit for bit, and its files go with cleanup()', async () => {
  const dir = tempDir('hollowc-chunk-unet-');
  const modelFile = (await buildUNet(FAMILIES.sd21.tiny.config, { outDir: path.join(dir, 'unet'), seed: 6 })).file;
  // The exported UNet has free batch and size axes: shapes come from the run (batch 2 with guidance).
  expect(prepareUnet(modelFile, { run: { batch: 2, channels: 4, height: LATENT, width: LATENT } })).toBeUndefined();
  const prepared = prepareUnet(modelFile, { run: { batch: 2, channels: 4, height: LATENT, width: LATENT }, chunkBytes: CHUNK_BYTES })!;
  try {
    expect(prepared.lora).toBeUndefined();
    expect(prepared.attention.chunked).toBeGreaterThan(0);
    expect(prepared.attention.blocks).toBeGreaterThan(prepared.attention.chunked);
    const cross = FAMILIES.sd21.tiny.config.cross_attention_dim as number;
    const feeds = {
      sample: tensor(11, [2, 4, LATENT, LATENT]),
      timestep: new ort.Tensor('float32', Float32Array.of(500, 500), [2]),
      encoder_hidden_states: tensor(12, [2, 77, cross]),
    };
    const [whole, blocked] = [await runModel(modelFile, feeds), await runModel(prepared.model, feeds)];
    expect(identicalOutputs(blocked, whole).length).toBe(Object.keys(whole).length);
  } finally {
    prepared.cleanup();
  }
  expect(fs.existsSync(path.dirname(prepared.model))).toBe(false);
});

test("generate --model on a torch export: its free `channels` axis is sized from the run, so the full-size SD 1.5 graph's maps go in blocks", () => {
  // torch 1.13's export names all four sample axes (tests/fixtures/real-exports): before the channel
  // count came from the run, no map of a user's export was designed, and every one ran whole.
  const modelFile = realExportGraph('sd15-opset17');
  const run = { batch: 2, channels: 4, height: 64, width: 64 };
  const sized = unetInputShapes(loadModel(modelFile), run);
  expect(sized).toEqual({ shapes: { sample: [2, 4, 64, 64], timestep: [2], encoder_hidden_states: [2, 77, 768] } });
  const warnings: string[] = [];
  const prepared = prepareUnet(modelFile, { run, warn: (l) => warnings.push(l) })!;
  try {
    expect(warnings).toEqual([]);
    // maps over the 8 MiB default at batch 2, 8 heads: the five 64x64 transformer blocks' attn1
    // (1 GiB) and attn2 (4096 x 77: 19 MiB), and the five 32x32 blocks' attn1 (64 MiB)
    expect(prepared.attention.chunked).toBe(15);
  } finally {
    prepared.cleanup();
  }
  // an axis no run names is said, and nothing is chunked
  const odd = loadModel(modelFile);
  odd.graph.inputs.find((v) => v.name === 'encoder_hidden_states')!.type!.shape![2] = 'width_of_text';
  expect(unetInputShapes(odd, run)).toEqual({ reason: 'input encoder_hidden_states has a free axis 2 (width_of_text) hollowc cannot size' });
});
