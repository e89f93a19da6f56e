/**
 * The sampling loop both runtimes share (runtime/sampling/two-path.ts on onnxruntime-node, the browser page's
 * sampler on onnxruntime-web): each step scales the latents, batches them once per conditioning
 * row, asks the model for its prediction, combines the rows with classifier-free guidance
 * (uncond + g·(cond − uncond)) and lets the scheduler step. Pure: the model call is a callback.
 */
import { Rng, fillNormal } from '../../models/random';
import type { Scheduler } from './schedulers';

export interface DenoiseOptions {
  scheduler: Scheduler;
  latents: Float32Array;
  /** Rows per model call: 2 (negative, prompt) when guided, else 1. */
  rows: number;
  /** Guidance scale; with one row the prediction is used as it is. */
  guidance: number;
  /** Seed of the ancestral samplers' per-step noise (stream `generate/noise/<step>`). */
  seed: number;
  /** The model's prediction for `rows` copies of the scaled latents at timestep `t`. */
  predict: (batch: Float32Array, t: number) => Promise<Float32Array>;
  onStep?: (done: number, total: number, t: number) => void;
}

export async function denoise(o: DenoiseOptions): Promise<Float32Array> {
  const { scheduler } = o;
  const size = o.latents.length;
  let latents = o.latents;
  for (let i = 0; i < scheduler.timesteps.length; i++) {
    const t = scheduler.timesteps[i];
    const input = scheduler.scaleModelInput(latents, i);
    const batch = new Float32Array(o.rows * size);
    for (let b = 0; b < o.rows; b++) batch.set(input, b * size);
    const pred = await o.predict(batch, t);
    let output = pred;
    if (o.rows > 1) {
      output = new Float32Array(size);
      for (let k = 0; k < size; k++) output[k] = pred[k] + o.guidance * (pred[size + k] - pred[k]);
    }
    latents = scheduler.step(output, i, latents, () => {
      const n = new Float32Array(size);
      fillNormal(new Rng(o.seed, `generate/noise/${i}`), n, 1);
      return n;
    });
    o.onStep?.(i + 1, scheduler.timesteps.length, t);
  }
  return latents;
}
