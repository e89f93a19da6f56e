/**
 * Deterministic inputs for the benches: a timestep of 500, loss weight 1, SDXL's time_ids of a
 * 1024-px image (1024, 1024, 0, 0, 1024, 1024), small nonzero LoRA A and B, the rest sin-shaped.
 */
import { LOSS_WEIGHT, TIME_IDS, TIMESTEP, isLoraParam } from '../../compiler/manifest';
import type { OptimizerState } from '../../compiler/manifest';
import type { ParamState } from '../../runtime/train/checkpoint';
import { zeroMoments } from '../../runtime/train/adamw8bit';

const TIME_IDS_1024 = [1024, 1024, 0, 0, 1024, 1024];

export function syntheticValue(name: string, i: number): number {
  if (name === TIME_IDS) return TIME_IDS_1024[i % TIME_IDS_1024.length];
  return name === TIMESTEP ? 500 : name === LOSS_WEIGHT ? 1 : isLoraParam(name) ? 0.01 * Math.sin(i) : Math.sin(i * 0.37);
}

/**
 * Fresh optimizer state for `params`: synthetic values (a trained base weight's small, as a
 * network's are, so that activations stay finite), zero moments of the run's optimizer state.
 */
export function syntheticParams(params: readonly { name: string; shape: number[] }[], state?: OptimizerState): ParamState[] {
  return params.map((p) => {
    const n = p.shape.reduce((x, y) => x * y, 1);
    const value = (i: number) => (isLoraParam(p.name) ? syntheticValue(p.name, i) : 0.02 * Math.sin(i * 0.37));
    return { name: p.name, shape: p.shape, value: Float32Array.from({ length: n }, (_, i) => value(i)), ...zeroMoments(n, state) };
  });
}
