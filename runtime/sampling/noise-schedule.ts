/**
 * The diffusion forward process SD-family UNets were trained with, as diffusers defines it
 * (DDPMScheduler / DDIMScheduler `beta_schedule="scaled_linear"`):
 *
 *   betas[t]          = linspace(sqrt(beta_start), sqrt(beta_end), T)[t]²
 *   alphas_cumprod[t] = prod_{s<=t} (1 - betas[s])                       (abar_t)
 *   z_t               = sqrt(abar_t) z + sqrt(1 - abar_t) eps              (add_noise)
 *   v_t               = sqrt(abar_t) eps - sqrt(1 - abar_t) z              (get_velocity)
 *   sigma_t           = sqrt((1 - abar_t) / abar_t)                        (k-diffusion sigmas)
 *
 * Computed in float64 (diffusers uses float32 torch tensors; the two agree to ~1e-6 relative:
 * abar_999 = 0.0046601 here, 0.0046601 in diffusers). Per-element results are rounded once to
 * float32, so the same inputs give the same bytes on every machine.
 */
import type { NoiseSchedule as ScheduleConfig } from '../../models/families';
import { FAMILIES, FamilyName } from '../../models/families';

export type Prediction = 'epsilon' | 'v_prediction';

const sqrt = Math.sqrt;

export class NoiseSchedule {
  readonly betas: Float64Array;
  readonly alphasCumprod: Float64Array;

  constructor(readonly config: ScheduleConfig) {
    const n = config.num_train_timesteps;
    this.betas = new Float64Array(n);
    this.alphasCumprod = new Float64Array(n);
    const lo = sqrt(config.beta_start);
    const hi = sqrt(config.beta_end);
    let abar = 1;
    for (let t = 0; t < n; t++) {
      const s = n === 1 ? lo : lo + ((hi - lo) * t) / (n - 1);
      this.betas[t] = s * s;
      abar *= 1 - this.betas[t];
      this.alphasCumprod[t] = abar;
    }
  }

  static forFamily(family: FamilyName | string): NoiseSchedule {
    const f = FAMILIES[family as FamilyName];
    if (!f) throw new Error(`unknown model family "${family}"`);
    return new NoiseSchedule(f.noiseSchedule);
  }

  get numTrainTimesteps(): number {
    return this.config.num_train_timesteps;
  }

  private abar(t: number): number {
    if (!Number.isInteger(t) || t < 0 || t >= this.alphasCumprod.length)
      throw new Error(`timestep ${t} is outside 0..${this.alphasCumprod.length - 1}`);
    return this.alphasCumprod[t];
  }

  /** sqrt((1 - abar_t) / abar_t): the noise level of z_t / sqrt(abar_t). */
  sigma(t: number): number {
    const a = this.abar(t);
    return sqrt((1 - a) / a);
  }

  /** All training sigmas (index = timestep). */
  sigmas(): Float64Array {
    return this.alphasCumprod.map((a) => sqrt((1 - a) / a));
  }

  /** z_t = sqrt(abar_t) z + sqrt(1 - abar_t) eps. */
  addNoise(z: Float32Array, eps: Float32Array, t: number, out = new Float32Array(z.length)): Float32Array {
    const a = this.abar(t);
    return combine(sqrt(a), z, sqrt(1 - a), eps, out);
  }

  /** v = sqrt(abar_t) eps - sqrt(1 - abar_t) z. */
  velocity(z: Float32Array, eps: Float32Array, t: number, out = new Float32Array(z.length)): Float32Array {
    const a = this.abar(t);
    return combine(sqrt(a), eps, -sqrt(1 - a), z, out);
  }

  /** What the UNet learns to predict at t: eps, or v for v-prediction models. */
  target(prediction: Prediction, z: Float32Array, eps: Float32Array, t: number): Float32Array {
    return prediction === 'epsilon' ? Float32Array.from(eps) : this.velocity(z, eps, t);
  }
}

/** out = a·x + b·y, each element computed in float64 and rounded once. */
export function combine(a: number, x: Float32Array, b: number, y: Float32Array, out = new Float32Array(x.length)): Float32Array {
  if (x.length !== y.length) throw new Error(`length ${x.length} vs ${y.length}`);
  for (let i = 0; i < x.length; i++) out[i] = a * x[i] + b * y[i];
  return out;
}
