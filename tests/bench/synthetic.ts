/**
 * Deterministic inputs for the benches: a timestep of 500, loss weight 1, SDXL's time_ids of a
 * 1024-px image (1024, 1024, 0, 0, 1024, 1024), small nonzero LoRA A and B, the rest sin-shaped.
 */
import { LOSS_WEIGHT, TIME_IDS, TIMESTEP, isLoraParam } from '../../compiler/manifest';
import type { ParamState } from '../../runtime/train/checkpoint';

const TIME_IDS_1024 = [1024, 1024, 0, 0, 1024, 1024];

export function syntheticValue(name: string, i: number): number {
  if (name === TIME_IDS) return TIME_IDS_1024[i % TIME_IDS_1024.length];
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
