/** Deterministic inputs for the benches: a timestep of 500, loss weight 1, small nonzero LoRA A and B, the rest sin-shaped. */
import { LOSS_WEIGHT, TIMESTEP, isLoraParam } from '../../compiler/manifest';
import type { ParamState } from '../../runtime/train/checkpoint';

export function syntheticValue(name: string, i: number): number {
  return name === TIMESTEP ? 500 : name === LOSS_WEIGHT ? 1 : isLoraParam(name) ? 0.01 * Math.sin(i) : Math.sin(i * 0.37);
}

/** Fresh optimizer state for `params`: synthetic values, zero moments (step 1 of a run). */
export function syntheticParams(params: readonly { name: string; shape: number[] }[]): ParamState[] {
  return params.map((p) => {
    const n = p.shape.reduce((x, y) => x * y, 1);
    return {
      name: p.name,
      shape: p.shape,
      value: Float32Array.from({ length: n }, (_, i) => syntheticValue(p.name, i)),
      expAvg: new Float32Array(n),
      expAvgSq: new Float32Array(n),
    };
  });
}
