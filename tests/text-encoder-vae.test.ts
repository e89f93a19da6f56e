/**
 * The CLIP text encoder and VAE builders: exact full-size parameter counts against the real
 * models, and tiny builds run in onnxruntime: causality, pooling at the EOS position, the
 * projection of text_encoder_2, hidden states, VAE shapes at two resolutions.
 */
import * as fs from 'fs';
import * as path from 'path';
import * as ort from 'onnxruntime-node';
import { loadModel, readTensorBytes } from '../compiler/serde';
import { verifyGraph } from '../compiler/verify';
import {
  CLIP_L,
  CLIP_L_TINY,
  clipTextParameterCount,
  ClipTextConfig,
  OPENCLIP_BIGG,
  OPENCLIP_BIGG_TINY,
  OPENCLIP_H,
  OPENCLIP_H_TINY,
} from '../models/text-encoder-config';
import {
  VAE_SD15,
  VAE_SD15_TINY,
  VAE_SDXL,
  vaeDecoderParameterCount,
  vaeEncoderParameterCount,
  vaeParameterCount,
} from '../models/vae-config';
import { buildClipText, describeClipText } from '../models/builder/clip-text';
import { buildVae, describeVae } from '../models/builder/vae';
import { runModel, tempDir } from './support/fixture';
import { randomTensor } from './support/tensors';

let root: string;
beforeAll(() => {
  root = tempDir('hollowc-text-vae-');
});
afterAll(() => fs.rmSync(root, { recursive: true, force: true }));

const BOS = 49406n;
const EOS = 49407n;

/** Rows of 77 ids: BOS, the given tokens, EOS, then `pad`. */
function ids(rows: number[][], pad: bigint): ort.Tensor {
  const out = new BigInt64Array(rows.length * 77).fill(pad);
  rows.forEach((r, i) => {
    out[i * 77] = BOS;
    r.forEach((t, j) => (out[i * 77 + 1 + j] = BigInt(t)));
    out[i * 77 + 1 + r.length] = EOS;
  });
  return new ort.Tensor('int64', out, [rows.length, 77]);
}

function row(t: ort.Tensor, b: number, s: number): Float32Array {
  const [, S, D] = t.dims;
  return (t.data as Float32Array).slice((b * S + s) * D, (b * S + s + 1) * D);
}

const maxDiff = (a: Float32Array, b: Float32Array) => a.reduce((m, v, i) => Math.max(m, Math.abs(v - b[i])), 0);

describe('parameter counts (from the configs, no weights)', () => {
  test('full text encoders and VAE match the real models', () => {
    expect(clipTextParameterCount(CLIP_L)).toBe(123_060_480);
    // SD 2.x text_encoder: OpenCLIP ViT-H/14 text tower with 23 layers
    expect(clipTextParameterCount(OPENCLIP_H)).toBe(340_387_840);
    expect(clipTextParameterCount(OPENCLIP_BIGG)).toBe(694_659_840);
    expect(vaeParameterCount(VAE_SD15)).toBe(83_653_863);
    expect(vaeEncoderParameterCount(VAE_SD15)).toBe(34_163_664);
    expect(vaeDecoderParameterCount(VAE_SD15)).toBe(49_490_199);
    expect(vaeParameterCount(VAE_SDXL)).toBe(83_653_863);
  });

  test('weightless full-size graphs hold exactly those parameters', () => {
    expect(describeClipText(CLIP_L).parameterCount).toBe(123_060_480);
    expect(describeClipText(OPENCLIP_BIGG, { hiddenStates: true }).parameterCount).toBe(694_659_840);
    expect(describeVae(VAE_SD15, 'encoder').parameterCount + describeVae(VAE_SD15, 'decoder').parameterCount).toBe(83_653_863);
  });
});

describe('text encoder', () => {
  const built = new Map<string, string>();
  function model(name: string, c: ClipTextConfig, hiddenStates = false): string {
    const key = `${name}-${hiddenStates}`;
    if (!built.has(key)) built.set(key, buildClipText(c, { outDir: path.join(root, key), hiddenStates }).file);
    return built.get(key)!;
  }

  test.each([
    ['clip-l', CLIP_L_TINY, 'Sigmoid'],
    ['openclip-h', OPENCLIP_H_TINY, 'Erf'],
  ] as const)('%s: names, outputs, shapes, activation', async (name, c, actOp) => {
    const file = model(name, c);
    const m = loadModel(file);
    expect(verifyGraph(m.graph)).toEqual([]);
    expect(m.graph.inputs.map((i) => [i.name, i.type?.elemType])).toEqual([['input_ids', 7]]);
    expect(m.graph.outputs.map((o) => o.name)).toEqual(['last_hidden_state', 'pooler_output']);
    const names = new Set(m.graph.nodes.map((n) => n.name));
    expect(names.has('/text_model/encoder/layers.0/self_attn/q_proj/MatMul')).toBe(true);
    expect(names.has('/text_model/embeddings/token_embedding/Gather')).toBe(true);
    expect(m.graph.nodes.some((n) => n.name.startsWith('/text_model/encoder/layers.0/mlp/activation_fn/') && n.opType === actOp)).toBe(
      true,
    );
    expect(m.graph.tryValue('text_model.embeddings.token_embedding.weight')?.initializer?.dims).toEqual([49408, c.hidden_size]);
    const out = await runModel(file, {
      input_ids: ids(
        [
          [320, 1125],
          [320, 1125, 539, 320, 2368],
        ],
        EOS,
      ),
    });
    expect(out.last_hidden_state.dims).toEqual([2, 77, c.hidden_size]);
    expect(out.pooler_output.dims).toEqual([2, c.hidden_size]);
    expect((out.last_hidden_state.data as Float32Array).every(Number.isFinite)).toBe(true);
  });

  test('causal: a later token leaves earlier positions unchanged; pooled = state at EOS', async () => {
    const file = model('clip-l', CLIP_L_TINY);
    // the two prompts differ at position 4 only (token 3 of the text)
    const out = await runModel(file, {
      input_ids: ids(
        [
          [320, 1125, 539, 320, 2368],
          [320, 1125, 539, 1929, 2368],
        ],
        EOS,
      ),
    });
    const h = out.last_hidden_state;
    for (let s = 0; s < 4; s++) expect(maxDiff(row(h, 0, s), row(h, 1, s))).toBe(0);
    for (const s of [4, 5, 6, 30]) expect(maxDiff(row(h, 0, s), row(h, 1, s))).toBeGreaterThan(1e-4);
    // EOS is at 6 in both rows (argmax: 49407 is the largest id, the first one counts)
    const pooled = out.pooler_output.data as Float32Array;
    const d = CLIP_L_TINY.hidden_size;
    expect(maxDiff(pooled.slice(0, d), row(h, 0, 6))).toBe(0);
    expect(maxDiff(pooled.slice(d), row(h, 1, 6))).toBe(0);
    expect(maxDiff(pooled.slice(0, d), row(h, 0, 7))).toBeGreaterThan(1e-4);
  });

  test('pooling follows EOS when it moves (pad token "!" = 0)', async () => {
    const file = model('openclip-h', OPENCLIP_H_TINY);
    const out = await runModel(file, { input_ids: ids([[320], [320, 1125, 539, 320, 2368, 1929]], 0n) });
    const d = OPENCLIP_H_TINY.hidden_size;
    const pooled = out.pooler_output.data as Float32Array;
    expect(maxDiff(pooled.slice(0, d), row(out.last_hidden_state, 0, 2))).toBe(0);
    expect(maxDiff(pooled.slice(d), row(out.last_hidden_state, 1, 7))).toBe(0);
  });

  test('text_encoder_2: text_embeds = text_projection(pooled), hidden states 0..L', async () => {
    const c = OPENCLIP_BIGG_TINY;
    const file = model('bigg', c, true);
    const m = loadModel(file);
    const L = c.num_hidden_layers;
    expect(m.graph.outputs.map((o) => o.name)).toEqual([
      'text_embeds',
      'last_hidden_state',
      ...Array.from({ length: L + 1 }, (_, i) => `hidden_states.${i}`),
    ]);
    const rows = [
      [320, 1125, 539, 320, 2368],
      [320, 1125, 539, 1929, 2368],
    ];
    const out = await runModel(file, { input_ids: ids(rows, 0n) });
    const d = c.hidden_size;
    const p = c.projection_dim;
    expect(out.text_embeds.dims).toEqual([2, p]);
    for (let i = 0; i <= L; i++) expect(out[`hidden_states.${i}`].dims).toEqual([2, 77, d]);
    // the projection weight, read from the file: ONNX [in, out] (torch's transpose)
    const proj = m.graph.nodes.find((n) => n.name === '/text_projection/MatMul')!.inputs[1]!.initializer!;
    expect(proj.dims).toEqual([d, p]);
    const w = new Float32Array(Uint8Array.from(readTensorBytes(proj)).buffer); // a copy: Buffer views share a pool
    for (let b = 0; b < 2; b++) {
      const pooled = row(out.last_hidden_state, b, 6);
      const want = new Float32Array(p);
      for (let j = 0; j < p; j++) for (let k = 0; k < d; k++) want[j] += pooled[k] * w[k * p + j];
      expect(maxDiff((out.text_embeds.data as Float32Array).slice(b * p, (b + 1) * p), want)).toBeLessThan(1e-5);
    }
    // hidden_states.0 is the embedding output: position-wise, so only position 4 differs between the rows
    const h0 = out['hidden_states.0'];
    expect(maxDiff(row(h0, 0, 3), row(h0, 1, 3))).toBe(0);
    expect(maxDiff(row(h0, 0, 5), row(h0, 1, 5))).toBe(0);
    expect(maxDiff(row(h0, 0, 4), row(h0, 1, 4))).toBeGreaterThan(0);
    // last_hidden_state is the final LayerNorm of hidden_states.L (zero mean per position), hidden_states.L is not
    const mean = (v: Float32Array) => v.reduce((a, x) => a + x, 0) / v.length;
    const hl = row(out[`hidden_states.${L}`], 0, 3);
    expect(Math.abs(mean(hl))).toBeGreaterThan(1e-4);
    expect(maxDiff(row(out[`hidden_states.${L}`], 0, 3), row(out.last_hidden_state, 0, 3))).toBeGreaterThan(1e-3);
  });
});

describe('VAE', () => {
  let encoder: string;
  let decoder: string;
  beforeAll(() => {
    encoder = buildVae(VAE_SD15_TINY, 'encoder', { outDir: path.join(root, 'vae_encoder') }).file;
    decoder = buildVae(VAE_SD15_TINY, 'decoder', { outDir: path.join(root, 'vae_decoder') }).file;
  });

  test('graphs: names, inputs, outputs, parameters', () => {
    const enc = loadModel(encoder);
    const dec = loadModel(decoder);
    expect(verifyGraph(enc.graph)).toEqual([]);
    expect(verifyGraph(dec.graph)).toEqual([]);
    expect(enc.graph.inputs.map((i) => i.name)).toEqual(['sample']);
    expect(enc.graph.outputs.map((o) => o.name)).toEqual(['latent_parameters']);
    expect(dec.graph.inputs.map((i) => i.name)).toEqual(['latent_sample']);
    expect(dec.graph.outputs.map((o) => o.name)).toEqual(['sample']);
    for (const name of [
      'quant_conv.weight',
      'encoder.mid_block.attentions.0.to_q.bias',
      'encoder.down_blocks.0.downsamplers.0.conv.weight',
    ]) {
      expect(enc.graph.tryValue(name)?.initializer).toBeDefined();
    }
    for (const name of [
      'post_quant_conv.weight',
      'decoder.up_blocks.0.upsamplers.0.conv.weight',
      'decoder.up_blocks.3.resnets.1.conv2.weight',
    ]) {
      expect(dec.graph.tryValue(name)?.initializer).toBeDefined();
    }
    expect(dec.graph.nodes.filter((n) => n.opType === 'Resize')).toHaveLength(3);
    expect(enc.graph.nodes.filter((n) => n.opType === 'Pad')).toHaveLength(3);
  });

  test.each([
    [1, 64, 64],
    [2, 96, 128],
  ])('batch %i at %ix%i: encode to H/8, decode back', async (batch, h, w) => {
    const enc = await runModel(encoder, { sample: randomTensor(1, `image${h}`, [batch, 3, h, w], 0.5) });
    expect(enc.latent_parameters.dims).toEqual([batch, 8, h / 8, w / 8]);
    expect((enc.latent_parameters.data as Float32Array).every(Number.isFinite)).toBe(true);
    const dec = await runModel(decoder, { latent_sample: randomTensor(2, `latent${h}`, [batch, 4, h / 8, w / 8]) });
    expect(dec.sample.dims).toEqual([batch, 3, h, w]);
    expect((dec.sample.data as Float32Array).every(Number.isFinite)).toBe(true);
  });
});
