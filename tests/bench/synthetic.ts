/** Deterministic inputs for the benches: a timestep of 500, loss weight 1, small nonzero LoRA A and B, the rest sin-shaped. */
import { LOSS_WEIGHT, TIMESTEP, isLoraParam } from '../../compiler/manifest';

export function syntheticValue(name: string, i: number): number {
  return name === TIMESTEP ? 500 : name === LOSS_WEIGHT ? 1 : isLoraParam(name) ? 0.01 * Math.sin(i) : Math.sin(i * 0.37);
}
