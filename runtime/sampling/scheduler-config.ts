/**
 * A sampler configured from a pipeline folder's `scheduler/scheduler_config.json`, as diffusers'
 * `<Scheduler>.from_config(pipe.scheduler.config)` would build it: keys the folder's config
 * holds are used (whatever class wrote them), keys it lacks take the chosen scheduler class's
 * own defaults (DDIMScheduler: leading spacing, steps_offset 0, set_alpha_to_one True,
 * clip_sample True; EulerAncestralDiscreteScheduler and DPMSolverMultistepScheduler: linspace
 * spacing, steps_offset 0). Settings the samplers do not implement are refused by name rather
 * than ignored.
 */
import { HollowcError } from '../../compiler/errors';
import { NoiseSchedule, Prediction } from './noise-schedule';
import { Scheduler, SchedulerName, SchedulerOptions, TimestepSpacing, makeScheduler } from './schedulers';

type Json = Record<string, unknown>;

const CLASS_OF: Record<SchedulerName, string> = {
  ddim: 'DDIMScheduler',
  euler_a: 'EulerAncestralDiscreteScheduler',
  dpmpp_2m: 'DPMSolverMultistepScheduler',
};

/** The sampler a folder's scheduler class maps to (ddim for classes hollowc does not sample with: PNDM, Euler, ...). */
export function defaultSchedulerFor(className: string): SchedulerName {
  const hit = (Object.keys(CLASS_OF) as SchedulerName[]).find((n) => CLASS_OF[n] === className);
  return hit ?? 'ddim';
}

export interface ConfiguredScheduler {
  readonly name: SchedulerName;
  readonly prediction: Prediction;
  readonly schedule: NoiseSchedule;
  readonly options: SchedulerOptions;
  /** A fresh sampler (they keep per-run state) for `steps` steps. */
  make(steps: number): Scheduler;
}

const LABEL = 'scheduler/scheduler_config.json';

function number(config: Json, key: string, fallback?: number): number {
  const v = config[key] ?? fallback;
  if (typeof v !== 'number' || !Number.isFinite(v))
    throw new HollowcError(`${LABEL}: ${key} ${JSON.stringify(config[key])} is not a number`);
  return v;
}

function flag(config: Json, key: string, fallback: boolean): boolean {
  const v = config[key] ?? fallback;
  if (typeof v !== 'boolean') throw new HollowcError(`${LABEL}: ${key} ${JSON.stringify(config[key])} is not true or false`);
  return v;
}

/** Refuses a setting whose value changes the math in a way the samplers do not implement. */
function refuse(config: Json, key: string, supported: unknown, what: string): void {
  if (config[key] !== undefined && config[key] !== null && config[key] !== supported) {
    throw new HollowcError(
      `${LABEL}: ${key} ${JSON.stringify(config[key])} is not supported by hollowc's ${what} (only ${JSON.stringify(supported)})`,
    );
  }
}

export function configureScheduler(config: Json, name: SchedulerName, spacingOverride?: TimestepSpacing): ConfiguredScheduler {
  const prediction = config.prediction_type ?? 'epsilon';
  if (prediction !== 'epsilon' && prediction !== 'v_prediction')
    throw new HollowcError(`${LABEL}: prediction_type ${JSON.stringify(prediction)} is not supported (epsilon or v_prediction)`);
  if (config.trained_betas !== undefined && config.trained_betas !== null)
    throw new HollowcError(`${LABEL}: trained_betas are not supported (SD's scaled_linear betas only)`);
  if (config.beta_schedule !== 'scaled_linear')
    throw new HollowcError(`${LABEL}: beta_schedule ${JSON.stringify(config.beta_schedule)} is not SD's scaled_linear`);
  refuse(config, 'rescale_betas_zero_snr', false, 'samplers');
  refuse(config, 'thresholding', false, 'samplers');
  const schedule = new NoiseSchedule({
    beta_schedule: 'scaled_linear',
    beta_start: number(config, 'beta_start'),
    beta_end: number(config, 'beta_end'),
    num_train_timesteps: number(config, 'num_train_timesteps', 1000),
  });
  const spacing = spacingOverride ?? config.timestep_spacing ?? (name === 'ddim' ? 'leading' : 'linspace');
  if (spacing !== 'leading' && spacing !== 'linspace' && spacing !== 'trailing')
    throw new HollowcError(`${LABEL}: timestep_spacing ${JSON.stringify(spacing)} is not leading, linspace or trailing`);
  const stepsOffset = number(config, 'steps_offset', 0);
  const options: SchedulerOptions = { prediction, spacing, stepsOffset };
  if (name === 'ddim') {
    options.setAlphaToOne = flag(config, 'set_alpha_to_one', true);
    if (flag(config, 'clip_sample', true)) options.clipSampleRange = number(config, 'clip_sample_range', 1);
  } else {
    refuse(config, 'use_karras_sigmas', false, name);
    if (name === 'dpmpp_2m') {
      refuse(config, 'algorithm_type', 'dpmsolver++', name);
      refuse(config, 'solver_order', 2, name);
      refuse(config, 'solver_type', 'midpoint', name);
      refuse(config, 'lower_order_final', true, name);
      refuse(config, 'euler_at_final', false, name);
      refuse(config, 'final_sigmas_type', 'zero', name);
    }
  }
  return { name, prediction, schedule, options, make: (steps) => makeScheduler(name, schedule, steps, options) };
}
