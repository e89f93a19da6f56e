/**
 * A VAE trained by hollowc's own training (issue 32): the builder's encoder and decoder joined into
 * one autoencoder, compiled by compile-graph into a gradients graph (MSE + KL), trained with host
 * AdamW (runtime/train/graph-train.ts) and written back as vae_encoder/ and vae_decoder/. Checks:
 * the gradients of weights of every kind of read against central differences of the loss; two runs
 * from the same feeds agree bit for bit; a short training on world scenes lowers the loss by more
 * than half, and the written pipeline's encode + decode reconstruct as well as training measured.
 */
import * as fs from 'fs';
import * as path from 'path';
import * as ort from 'onnxruntime-node';
import { GRAPH_MANIFEST_FILE, GraphTrainingManifest } from '../compiler/manifest';
import { gradientName } from '../compiler/manifest';
import { loadModel } from '../compiler/serde';
import { drawScenes, trainVae } from '../cli/api/train-vae';
import { buildAutoencoder, buildVaeGraph, LATENT_NOISE, RECONSTRUCTION } from '../models/builder/vae';
import { VirtualWeightSink } from '../models/builder/weights';
import { Rng, fillNormal } from '../models/random';
import { VAE_SD15_TINY, VaeConfig } from '../models/vae-config';
import { sampleScene } from '../models/world';
import { compileGraph } from '../passes/compile-graph';
import { openPipelineFolder } from '../runtime/text-to-image/pipeline-folder';
import { decodeLatents, encodeImages } from '../runtime/text-to-image/vae';
import { initialParams, trainGraph } from '../runtime/train/graph-train';
import { tempDir } from './support/fixture';

jest.setTimeout(120_000);

/** Two blocks (factor 2), 4 and 8 channels: SD's VAE structure at a size a test trains in seconds. */
const TEST_VAE: VaeConfig = { ...VAE_SD15_TINY, block_out_channels: [4, 8], layers_per_block: 1, norm_num_groups: 2, sample_size: 16 };
const SIZE = 8;
const BATCH = 2;
const LATENT = [BATCH, 4, SIZE / 2, SIZE / 2];

function compileTestVae(dir: string): GraphTrainingManifest {
  const built = buildAutoencoder(TEST_VAE, { outDir: path.join(dir, 'autoencoder'), seed: 3 });
  return compileGraph({
    model: loadModel(built.file),
    label: 'test VAE',
    outDir: path.join(dir, 'graph'),
    shapes: { sample: [BATCH, 3, SIZE, SIZE], [LATENT_NOISE]: LATENT },
    loss: { prediction: RECONSTRUCTION, target: 'sample', kl: { output: 'latent_parameters', weight: 0.1 } },
    exports: { vae_encoder: { model: buildVaeGraph(TEST_VAE, 'encoder', new VirtualWeightSink()).model } },
    optimizer: { betas: [0.9, 0.999], eps: 1e-8, weightDecay: 0 },
  });
}

async function feedsOf(seed: number): Promise<Record<string, ort.Tensor>> {
  const images = await drawScenes([sampleScene(seed), sampleScene(seed + 1)], SIZE);
  const noise = new Float32Array(LATENT.reduce((a, d) => a * d, 1));
  fillNormal(new Rng(seed, 'test/noise'), noise, 1);
  return { sample: new ort.Tensor('float32', images, [BATCH, 3, SIZE, SIZE]), [LATENT_NOISE]: new ort.Tensor('float32', noise, LATENT) };
}

describe('compile-graph on the builder VAE', () => {
  const dir = tempDir('hollowc-vae-grads-');
  const manifest = compileTestVae(dir);
  const graph = path.join(dir, 'graph');
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

  test('grads.onnx takes every parameter and the data, and returns the loss, its terms and every gradient', () => {
    expect(manifest.data.map((d) => d.name).sort()).toEqual([LATENT_NOISE, 'sample']);
    expect(manifest.losses.map((l) => l.name)).toEqual(['loss', 'reconstruction_mse', 'kl']);
    const outputs = manifest.grads.outputs.map((o) => o.name);
    expect(outputs).toHaveLength(3 + manifest.parameters.length);
    for (const p of manifest.parameters) expect(outputs).toContain(gradientName(p.name));
    // the encoder export reads a subset of the trained parameters, by the same names
    expect(manifest.exports.vae_encoder.parameters.length).toBeGreaterThan(20);
    expect(manifest.parameters.length).toBeGreaterThan(manifest.exports.vae_encoder.parameters.length);
    expect(fs.existsSync(path.join(graph, GRAPH_MANIFEST_FILE))).toBe(true);
  });

  test('gradients match central differences of the loss for a weight of each kind of read', async () => {
    const session = await ort.InferenceSession.create(path.join(graph, manifest.grads.file));
    const params = initialParams(graph, manifest);
    const data = await feedsOf(11);
    const run = async (fetch: string[]) => {
      const feeds: Record<string, ort.Tensor> = { ...data };
      for (const p of params) feeds[p.name] = new ort.Tensor('float32', p.value, p.shape);
      return session.run(feeds, fetch);
    };
    const loss = async () => (await run(['loss'])).loss.data[0] as number;
    const checked = [
      'encoder.conv_in.weight', // Conv
      'encoder.mid_block.attentions.0.to_q.weight', // pre-transposed MatMul weight
      'decoder.mid_block.attentions.0.group_norm.weight', // GroupNorm affine, stored [C, 1, 1]
      'encoder.down_blocks.0.resnets.0.norm1.bias',
      'quant_conv.weight', // feeds the mean and the logvar: the KL term and the sampled latent
      'decoder.conv_out.bias',
    ];
    const analytic = await run(checked.map(gradientName));
    const h = 1e-2;
    for (const name of checked) {
      const p = params.find((x) => x.name === name)!;
      const g = analytic[gradientName(name)].data as Float32Array;
      const scale = g.reduce((m, x) => Math.max(m, Math.abs(x)), 0);
      expect(scale).toBeGreaterThan(1e-5);
      // the largest entry and two more, by a seeded pick
      const pick = new Rng(5, name);
      const indices = [
        g.indexOf(g.reduce((a, x) => (Math.abs(x) > Math.abs(a) ? x : a), 0)),
        pick.next() % g.length,
        pick.next() % g.length,
      ];
      for (const i of indices) {
        const saved = p.value[i];
        p.value[i] = saved + h;
        const up = await loss();
        p.value[i] = saved - h;
        const down = await loss();
        p.value[i] = saved;
        const numeric = (up - down) / (2 * h);
        expect({ name, i, withinTolerance: Math.abs(numeric - g[i]) < 0.03 * scale + 1e-6 }).toEqual({ name, i, withinTolerance: true });
      }
    }
    await session.release();
  });

  test('two runs from the same feeds end with the same parameters, bit for bit', async () => {
    const feeds = (t: number) => feedsOf(100 + t);
    const a = await trainGraph({ dir: graph, steps: 3, lr: 1e-3, feeds });
    const b = await trainGraph({ dir: graph, steps: 3, lr: 1e-3, feeds });
    expect(b.log.map((s) => s.losses)).toEqual(a.log.map((s) => s.losses));
    expect(b.params.every((p, k) => Buffer.from(p.value.buffer).equals(Buffer.from(a.params[k].value.buffer)))).toBe(true);
    // and they trained: the parameters moved
    const initial = initialParams(graph, manifest);
    expect(a.params.some((p, k) => !Buffer.from(p.value.buffer).equals(Buffer.from(initial[k].value.buffer)))).toBe(true);
  });
});

test('bad input: a loss on an output the graph lacks, or a folder that is not a graph-training folder, is one line and leaves nothing', async () => {
  const dir = tempDir('hollowc-vae-bad-');
  try {
    const built = buildAutoencoder(TEST_VAE, { outDir: path.join(dir, 'autoencoder'), seed: 3 });
    const out = path.join(dir, 'graph');
    expect(() =>
      compileGraph({
        model: loadModel(built.file),
        label: 'test VAE',
        outDir: out,
        shapes: { sample: [BATCH, 3, SIZE, SIZE], [LATENT_NOISE]: LATENT },
        loss: { prediction: 'recon', target: 'sample' },
        optimizer: { betas: [0.9, 0.999], eps: 1e-8, weightDecay: 0 },
      }),
    ).toThrow(/^test VAE: the loss prediction "recon" is not an output of the graph \(outputs: latent_parameters, reconstruction\)$/);
    expect(fs.existsSync(out)).toBe(false);
    await expect(trainGraph({ dir: built.file.replace(/model\.onnx$/, ''), steps: 1, lr: 1e-3, feeds: () => ({}) })).rejects.toThrow(
      /graph-training\.json: not a graph-training folder \(ENOENT\); compile one first$/,
    );
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('a short training on world scenes halves the loss; the written VAE reconstructs as training measured', async () => {
  const out = tempDir('hollowc-vae-train-');
  try {
    // 16 scenes at 16 px, 200 steps of 4: about 10 s on 2 cores
    const r = await trainVae({
      out,
      config: TEST_VAE,
      size: 16,
      steps: 200,
      batch: 4,
      lr: 1e-2,
      warmup: 10,
      klWeight: 1e-3,
      scenes: 16,
      seed: 1,
    });
    const mean = (from: number, to: number) => r.log.slice(from, to).reduce((a, s) => a + s.losses.reconstruction_mse, 0) / (to - from);
    const first = mean(0, 10);
    const last = mean(190, 200);
    // Measured when written: 0.591 -> 0.207 (2.9x). Predicting each pixel's mean over the 16 scenes
    // (nothing through the latents) scores 0.490, above first / 2.
    expect(last).toBeLessThan(first / 2);

    const folder = openPipelineFolder(out);
    expect(folder.vaeEncoder.config.block_out_channels).toEqual([4, 8]);
    const images = await drawScenes(
      Array.from({ length: 4 }, (_, i) => sampleScene(i)),
      16,
    );
    const dims = [4, 3, 16, 16];
    const decoded = await decodeLatents(folder, await encodeImages(folder, { data: images, dims }));
    let sq = 0;
    for (let k = 0; k < images.length; k++) sq += (decoded.data[k] * 2 - 1 - images[k]) ** 2;
    // the pipeline's encode (sampled z, scaling_factor and back) + decode: close to training's MSE, far below the untrained one
    expect(sq / images.length).toBeLessThan(Math.max(2 * last, first / 3));
  } finally {
    fs.rmSync(out, { recursive: true, force: true });
  }
});
