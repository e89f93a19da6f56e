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
import { prepareUnet } from '../cli/api/prepared-unet';
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
  expect(prepareUnet(modelFile, { run: { batch: 2, height: LATENT, width: LATENT } })).toBeUndefined();
  const prepared = prepareUnet(modelFile, { run: { batch: 2, height: LATENT, width: LATENT }, chunkBytes: CHUNK_BYTES })!;
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
