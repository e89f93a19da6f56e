/** Helpers for comparing WebGPU runs with CPU runs (tests/webgpu.test.ts, tests/bench/webgpu-*.ts). */
import * as ort from 'onnxruntime-node';
import { Rng, fillNormal } from '../../models/random';

/**
 * Seeded feeds for every input of an artifact: LoRA A/B N(0, 0.1²) (B zero with `loraB: 'zero'`),
 * AdamW moments zero (step 1 of a run), lr 1e-3, loss_weight 1, timestep 501, step 1, the rest
 * N(0, 1). `sizes` gives the symbolic dims (batch, height, width, sequence).
 */
export function feedsFor(
  session: ort.InferenceSession,
  seed: number,
  loraB: 'zero' | 'random',
  sizes: Record<string, number>,
): Record<string, ort.Tensor> {
  const feeds: Record<string, ort.Tensor> = {};
  session.inputMetadata.forEach((m) => {
    if (!m.isTensor) return;
    const dims = m.shape.map((d) => {
      if (typeof d === 'number') return d;
      if (sizes[d] === undefined) throw new Error(`no size for dim ${d} of ${m.name}`);
      return sizes[d];
    });
    const n = dims.reduce((a, b) => a * b, 1);
    if (m.type === 'int64') {
      feeds[m.name] = new ort.Tensor(
        'int64',
        BigInt64Array.from({ length: n }, () => 1n),
        dims,
      );
      return;
    }
    const a = new Float32Array(n);
    if (m.name === 'lr') a.fill(1e-3);
    else if (m.name === 'loss_weight') a.fill(1);
    else if (m.name === 'timestep') a.fill(501);
    else if (m.name === 'step') a.fill(1);
    else if (/exp_avg(_sq)?$/.test(m.name)) a.fill(0);
    else if (/lora_B\.weight$/.test(m.name) && loraB === 'zero') a.fill(0);
    else fillNormal(new Rng(seed, m.name), a, /lora/.test(m.name) ? 0.1 : 1);
    feeds[m.name] = new ort.Tensor('float32', a, dims);
  });
  return feeds;
}

/** max |a - b| / max |b| (b the reference), and its parts. */
export function worstRelative(a: ArrayLike<number>, b: ArrayLike<number>): { rel: number; maxAbs: number; scale: number } {
  let maxAbs = 0;
  let scale = 0;
  for (let i = 0; i < b.length; i++) {
    maxAbs = Math.max(maxAbs, Math.abs(a[i] - b[i]));
    scale = Math.max(scale, Math.abs(b[i]));
  }
  return { rel: scale > 0 ? maxAbs / scale : maxAbs, maxAbs, scale };
}

/** Per output, worst relative difference of `got` from `want`, largest first. */
export function compareOutputs(
  want: Record<string, ort.Tensor>,
  got: Record<string, ort.Tensor>,
): { name: string; rel: number; maxAbs: number; scale: number }[] {
  return Object.keys(want)
    .map((name) => ({ name, ...worstRelative(got[name].data as Float32Array, want[name].data as Float32Array) }))
    .sort((x, y) => y.rel - x.rel);
}
