/**
 * Timestep conditioning: `time_proj` (Timesteps: sinusoidal features), `time_embedding`
 * (TimestepEmbedding: linear_1, SiLU, linear_2) and SDXL's text_time additional embedding
 * (`add_time_proj` over the flattened time_ids, concatenated to text_embeds, `add_embedding`).
 */
import { GraphBuilder } from '../../compiler/builder';
import { Value } from '../../compiler/ir';
import { BuildContext, int64Const, linear2d, moduleBuilder, silu } from './nn';

/**
 * The frequencies of diffusers' get_timestep_embedding, computed with float32 rounding at each
 * step as torch does (arange, * -ln(10000), / (half - shift), exp); the exporter folds them into
 * one [1, half] constant.
 */
export function timestepFrequencies(dim: number, shift: number): Float32Array {
  if (dim % 2 !== 0) throw new Error(`timestep embedding width ${dim} is odd; hollowc supports even widths only`);
  const half = dim / 2;
  const f = Math.fround;
  const out = new Float32Array(half);
  const logMax = f(-Math.log(10000));
  const denominator = f(half - shift);
  for (let i = 0; i < half; i++) out[i] = f(Math.exp(f(f(logMax * i) / denominator)));
  return out;
}

/** Timesteps module: t [N] -> [N, dim] = cat(cos, sin) (flip_sin_to_cos) or cat(sin, cos). */
export function timesteps(b: GraphBuilder, t: Value, dim: number, flipSinToCos: boolean, shift: number): Value {
  const freqs = timestepFrequencies(dim, shift);
  const column = b.op('Unsqueeze', [t, int64Const(b, [1])]);
  const args = b.op('Mul', [column, b.constant(freqs, [1, freqs.length])]);
  const sin = b.op('Sin', [args]);
  const cos = b.op('Cos', [args]);
  // The exporter concatenates (sin, cos) and then swaps the halves with two Slices and a
  // second Concat; concatenating in the final order directly is the same tensor.
  return b.op('Concat', flipSinToCos ? [cos, sin] : [sin, cos], { axis: -1 });
}

/** TimestepEmbedding: linear_1 -> SiLU (`act`) -> linear_2, on [B, in]. */
export function timestepEmbedding(ctx: BuildContext, path: string, x: Value, inF: number, outF: number): Value {
  const b = moduleBuilder(ctx, path);
  const h = linear2d(ctx, `${path}.linear_1`, x, inF, outF);
  return linear2d(ctx, `${path}.linear_2`, silu(b.within('act'), h), outF, outF);
}

/** Number of SDXL micro-conditioning ids: original size, crop top-left, target size. */
export const TIME_IDS = 6;

export interface TextTimeInputs {
  readonly textEmbeds: Value;
  readonly timeIds: Value;
}

/**
 * SDXL's aug_emb: add_embedding(cat(text_embeds, add_time_proj(time_ids.flatten()).reshape(B, -1))).
 */
export function textTimeEmbedding(
  ctx: BuildContext,
  inputs: TextTimeInputs,
  timeEmbedDim: number,
  inputDim: number,
  outF: number,
  flipSinToCos: boolean,
  shift: number,
): Value {
  const root = ctx.root;
  const flat = root.op('Reshape', [inputs.timeIds, int64Const(root, [-1])], { allowzero: 0 });
  const features = timesteps(root.within('add_time_proj'), flat, timeEmbedDim, flipSinToCos, shift);
  const perSample = root.op('Reshape', [features, int64Const(root, [-1, TIME_IDS * timeEmbedDim])], { allowzero: 0 });
  const joined = root.op('Concat', [inputs.textEmbeds, perSample], { axis: -1 });
  return timestepEmbedding(ctx, 'add_embedding', joined, inputDim, outF);
}
