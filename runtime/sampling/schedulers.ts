/**
 * Samplers with diffusers' math (diffusers 0.2x `DDIMScheduler`, `EulerAncestralDiscreteScheduler`,
 * `DPMSolverMultistepScheduler`), configured as the SD 1.x / 2.x / XL `scheduler_config.json`s
 * are: `timestep_spacing="leading"`, `steps_offset=1`, `set_alpha_to_one=False`, no clipping.
 *
 *   ddim       eta = 0. timesteps (leading) = (arange(N) * (T // N))[::-1] + offset, e.g. 50 steps:
 *              981, 961, ..., 1. x0 = (x - sqrt(1-a_t) eps) / sqrt(a_t);
 *              x_prev = sqrt(a_prev) x0 + sqrt(1-a_prev) eps, a_prev = abar[t - T//N] (abar[0] past the end)
 *   euler_a    sigmas = interp(timesteps, sigma(t)) + [0], x scaled by 1/sqrt(sigma²+1) for the
 *              model; x0 = x - sigma eps; ancestral step: sigma_up = sqrt(s_to²(s_from²-s_to²)/s_from²),
 *              sigma_down = sqrt(s_to² - sigma_up²), x = x + (x - x0)/sigma (sigma_down - sigma) + noise sigma_up.
 *              init noise sigma sqrt(sigma_max² + 1) for leading spacing, sigma_max for linspace/trailing
 *   dpmpp_2m   DPM-Solver++ (data prediction), order 2 (midpoint), lower_order_final, final sigma 0.
 *              timesteps (leading) = (arange(N+1) * (T // (N+1)))[::-1][:-1] + offset
 *
 * v-prediction models convert their output as diffusers does for each scheduler. Stored
 * timesteps and sigmas are rounded to float32 like diffusers' (numpy float32) arrays; the update
 * arithmetic runs in float64 and rounds once per element.
 */
import { HollowcError } from '../../compiler/errors';
import type { NoiseSchedule, Prediction } from './noise-schedule';

export type SchedulerName = 'ddim' | 'euler_a' | 'dpmpp_2m';
export const SCHEDULERS: readonly SchedulerName[] = ['ddim', 'euler_a', 'dpmpp_2m'];
export type TimestepSpacing = 'leading' | 'linspace' | 'trailing';

export interface SchedulerOptions {
  prediction: Prediction;
  /** Default 'leading' (the SD scheduler configs). */
  spacing?: TimestepSpacing;
  /** Default 1 (the SD scheduler configs); used by 'leading' spacing. */
  stepsOffset?: number;
  /** DDIM: abar past the last step is 1 (true) or abar[0] (false, the SD configs; the default here). */
  setAlphaToOne?: boolean;
  /** DDIM `clip_sample`: clamp the predicted x0 to [-range, range] (default: no clipping). */
  clipSampleRange?: number;
}

export interface Scheduler {
  readonly name: SchedulerName;
  /** The timestep fed to the UNet at each step. */
  readonly timesteps: readonly number[];
  /** Initial latents = N(0, 1) noise times this. */
  readonly initNoiseSigma: number;
  scaleModelInput(sample: Float32Array, i: number): Float32Array;
  /** One step from `sample` given the (guided) model output at step i. `noise()` draws N(0, 1) latents. */
  step(modelOutput: Float32Array, i: number, sample: Float32Array, noise: () => Float32Array): Float32Array;
}

const sqrt = Math.sqrt;
const exp = Math.exp;
const log = Math.log;
const fround = Math.fround;

/** numpy's round: half to even. */
export function roundHalfEven(x: number): number {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/** numpy.linspace(start, stop, num) (endpoint included): start + i * step. */
export function linspace(start: number, stop: number, num: number): number[] {
  if (num === 1) return [start];
  const step = (stop - start) / (num - 1);
  return Array.from({ length: num }, (_, i) => (i === num - 1 ? stop : start + i * step));
}

/** numpy.interp at x over the grid 0..values.length-1. */
export function interpGrid(x: number, values: ArrayLike<number>): number {
  if (x <= 0) return values[0];
  if (x >= values.length - 1) return values[values.length - 1];
  const i = Math.floor(x);
  const f = x - i;
  return f === 0 ? values[i] : values[i] + f * (values[i + 1] - values[i]);
}

function checkSteps(steps: number, T: number): void {
  if (!(Number.isInteger(steps) && steps >= 1 && steps <= T)) throw new HollowcError(`--steps must be an integer in 1..${T}, got ${steps}`);
}

function checkTimesteps(ts: number[], T: number, what: string): number[] {
  const bad = ts.find((t) => !(t >= 0 && t <= T - 1));
  if (bad !== undefined) throw new HollowcError(`${what} gives timestep ${bad}, outside 0..${T - 1}: use fewer steps or another spacing`);
  return ts;
}

/** DDIM's and Euler's timesteps (numpy arithmetic, float). */
export function spacedTimesteps(T: number, steps: number, spacing: TimestepSpacing, offset: number): number[] {
  if (spacing === 'leading') {
    const ratio = Math.floor(T / steps);
    return Array.from({ length: steps }, (_, i) => roundHalfEven((steps - 1 - i) * ratio) + offset);
  }
  if (spacing === 'linspace') return linspace(0, T - 1, steps).reverse();
  const ratio = T / steps;
  return Array.from({ length: steps }, (_, i) => roundHalfEven(T - i * ratio) - 1);
}

export function ddimTimesteps(T: number, steps: number, spacing: TimestepSpacing = 'leading', offset = 1): number[] {
  checkSteps(steps, T);
  const ts = spacedTimesteps(T, steps, spacing, offset).map((t) => (spacing === 'linspace' ? roundHalfEven(t) : t));
  return checkTimesteps(ts, T, `ddim with ${steps} steps (${spacing})`);
}

/** DPMSolverMultistepScheduler.set_timesteps (no Karras sigmas, lambda_min_clipped = -inf). */
export function dpmTimesteps(T: number, steps: number, spacing: TimestepSpacing = 'leading', offset = 1): number[] {
  checkSteps(steps, T);
  let ts: number[];
  if (spacing === 'leading') {
    const ratio = Math.floor(T / (steps + 1));
    ts = Array.from({ length: steps }, (_, i) => (steps - i) * ratio + offset);
  } else if (spacing === 'linspace') {
    ts = linspace(0, T - 1, steps + 1)
      .map(roundHalfEven)
      .reverse()
      .slice(0, steps);
  } else {
    const ratio = T / steps;
    ts = Array.from({ length: steps }, (_, i) => roundHalfEven(T - i * ratio) - 1);
  }
  return checkTimesteps(ts, T, `dpmpp_2m with ${steps} steps (${spacing})`);
}

/** Euler's sigmas: interp of sqrt((1-abar)/abar) at the timesteps, then 0; float32 like diffusers. */
export function eulerSigmas(schedule: NoiseSchedule, timesteps: readonly number[]): number[] {
  const all = schedule.sigmas();
  return [...timesteps.map((t) => fround(interpGrid(t, all))), 0];
}

class Ddim implements Scheduler {
  readonly name = 'ddim';
  readonly timesteps: number[];
  readonly initNoiseSigma = 1;
  private readonly ratio: number;

  constructor(
    private readonly schedule: NoiseSchedule,
    steps: number,
    private readonly options: SchedulerOptions,
  ) {
    const T = schedule.numTrainTimesteps;
    this.timesteps = ddimTimesteps(T, steps, options.spacing, options.stepsOffset);
    this.ratio = Math.floor(T / steps);
  }

  scaleModelInput(sample: Float32Array): Float32Array {
    return sample;
  }

  step(out: Float32Array, i: number, x: Float32Array): Float32Array {
    const t = this.timesteps[i];
    const prev = t - this.ratio;
    const ac = this.schedule.alphasCumprod;
    const a = ac[t];
    // set_alpha_to_one=False: past the end, abar[0]
    const aPrev = prev >= 0 ? ac[prev] : this.options.setAlphaToOne ? 1 : ac[0];
    const sa = sqrt(a);
    const sb = sqrt(1 - a);
    const sap = sqrt(aPrev);
    const sbp = sqrt(1 - aPrev);
    const result = new Float32Array(x.length);
    const v = this.options.prediction === 'v_prediction';
    const clip = this.options.clipSampleRange;
    for (let k = 0; k < x.length; k++) {
      let x0 = v ? sa * x[k] - sb * out[k] : (x[k] - sb * out[k]) / sa;
      const eps = v ? sa * out[k] + sb * x[k] : out[k];
      // clip_sample clamps x0 only (eps stays: use_clipped_model_output is off in the pipelines)
      if (clip !== undefined) x0 = Math.min(clip, Math.max(-clip, x0));
      result[k] = sap * x0 + sbp * eps;
    }
    return result;
  }
}

class EulerAncestral implements Scheduler {
  readonly name = 'euler_a';
  readonly timesteps: number[];
  readonly sigmas: number[];
  readonly initNoiseSigma: number;

  constructor(
    schedule: NoiseSchedule,
    steps: number,
    private readonly options: SchedulerOptions,
  ) {
    const T = schedule.numTrainTimesteps;
    checkSteps(steps, T);
    const spacing = options.spacing ?? 'leading';
    this.timesteps = checkTimesteps(
      spacedTimesteps(T, steps, spacing, options.stepsOffset ?? 1),
      T,
      `euler_a with ${steps} steps (${spacing})`,
    ).map(fround);
    this.sigmas = eulerSigmas(schedule, this.timesteps);
    const max = Math.max(...this.sigmas);
    this.initNoiseSigma = spacing === 'linspace' || spacing === 'trailing' ? max : sqrt(max * max + 1);
  }

  scaleModelInput(sample: Float32Array, i: number): Float32Array {
    const s = this.sigmas[i];
    const c = 1 / sqrt(s * s + 1);
    return sample.map((x) => x * c);
  }

  step(out: Float32Array, i: number, x: Float32Array, noise: () => Float32Array): Float32Array {
    const sigma = this.sigmas[i];
    const to = this.sigmas[i + 1];
    const up = sqrt((to * to * (sigma * sigma - to * to)) / (sigma * sigma));
    const down = sqrt(to * to - up * up);
    const dt = down - sigma;
    const v = this.options.prediction === 'v_prediction';
    const c1 = -sigma / sqrt(sigma * sigma + 1);
    const c2 = 1 / (sigma * sigma + 1);
    const n = up > 0 ? noise() : undefined;
    const result = new Float32Array(x.length);
    for (let k = 0; k < x.length; k++) {
      const x0 = v ? out[k] * c1 + x[k] * c2 : x[k] - sigma * out[k];
      const d = (x[k] - x0) / sigma;
      result[k] = x[k] + d * dt + (n ? n[k] * up : 0);
    }
    return result;
  }
}

class DpmSolverPP2M implements Scheduler {
  readonly name = 'dpmpp_2m';
  readonly timesteps: number[];
  readonly sigmas: number[];
  readonly initNoiseSigma = 1;
  private previous: Float32Array | undefined;
  private lowerOrderNums = 0;

  constructor(
    schedule: NoiseSchedule,
    steps: number,
    private readonly options: SchedulerOptions,
  ) {
    this.timesteps = dpmTimesteps(schedule.numTrainTimesteps, steps, options.spacing, options.stepsOffset);
    this.sigmas = eulerSigmas(schedule, this.timesteps);
  }

  scaleModelInput(sample: Float32Array): Float32Array {
    return sample;
  }

  /** sigma (k-diffusion) -> VP (alpha_t, sigma_t). */
  private static vp(sigma: number): { alpha: number; sigma: number; lambda: number } {
    const alpha = 1 / sqrt(sigma * sigma + 1);
    const s = sigma * alpha;
    return { alpha, sigma: s, lambda: log(alpha) - log(s) };
  }

  step(out: Float32Array, i: number, x: Float32Array): Float32Array {
    const s0 = DpmSolverPP2M.vp(this.sigmas[i]);
    const t = DpmSolverPP2M.vp(this.sigmas[i + 1]);
    // convert_model_output: the data prediction x0
    const x0 = new Float32Array(x.length);
    const v = this.options.prediction === 'v_prediction';
    for (let k = 0; k < x.length; k++) x0[k] = v ? s0.alpha * x[k] - s0.sigma * out[k] : (x[k] - s0.sigma * out[k]) / s0.alpha;
    // final_sigmas_type "zero" makes the last step first order (lower_order_final)
    const last = i === this.timesteps.length - 1;
    const h = t.lambda - s0.lambda;
    const e = exp(-h) - 1;
    const ratio = t.sigma / s0.sigma;
    const result = new Float32Array(x.length);
    if (this.lowerOrderNums < 1 || last || !this.previous) {
      for (let k = 0; k < x.length; k++) result[k] = (t.sigma === 0 ? 0 : ratio * x[k]) - t.alpha * e * x0[k];
    } else {
      const s1 = DpmSolverPP2M.vp(this.sigmas[i - 1]);
      const r0 = (s0.lambda - s1.lambda) / h;
      const m1 = this.previous;
      for (let k = 0; k < x.length; k++) {
        const d1 = (x0[k] - m1[k]) / r0;
        result[k] = ratio * x[k] - t.alpha * e * x0[k] - 0.5 * t.alpha * e * d1;
      }
    }
    this.previous = x0;
    if (this.lowerOrderNums < 2) this.lowerOrderNums++;
    return result;
  }
}

export function makeScheduler(name: SchedulerName, schedule: NoiseSchedule, steps: number, options: SchedulerOptions): Scheduler {
  switch (name) {
    case 'ddim':
      return new Ddim(schedule, steps, options);
    case 'euler_a':
      return new EulerAncestral(schedule, steps, options);
    case 'dpmpp_2m':
      return new DpmSolverPP2M(schedule, steps, options);
    default:
      throw new HollowcError(`unknown scheduler "${name as string}" (expected one of: ${SCHEDULERS.join(', ')})`);
  }
}
