/**
 * Transformer2DModel -> BasicTransformerBlock -> Attention / FeedForward(GEGLU), as exported.
 *
 * Attention follows diffusers' AttnProcessor (the one torch.onnx.export traces): heads are moved
 * into the batch with Reshape [B,S,h,d] -> Transpose -> Reshape [B*h,S,d], scores are
 * MatMul(q, Transpose(k)) * scale, Softmax, MatMul with v, and the heads are moved back the same
 * way. Left out as no-ops: baddbmm's `0 * empty` bias (ConstantOfShape, Mul, Add), the Cast back
 * to float32 after Softmax, and the `Div` by rescale_output_factor (1).
 */
import { GraphBuilder } from '../../compiler/builder';
import { Value } from '../../compiler/ir';
import { ModuleSpec } from '../layout';
import { BuildContext, conv2d, floatScalar, groupNorm, int64Const, layerNorm, linear3d, moduleBuilder } from './nn';

/** The layout's description of a Transformer2DModel (models/layout.ts is its one source). */
export type TransformerSpec = Omit<Extract<ModuleSpec, { kind: 'transformer' }>, 'kind'>;

/** Transformer2DModel's GroupNorm uses eps 1e-6, whatever the UNet's norm_eps. */
const TRANSFORMER_NORM_EPS = 1e-6;

/** [B, S, h*d] -> [B*h, S, d] (diffusers head_to_batch_dim). `target` = [-1, S, d]. */
function headsToBatch(b: GraphBuilder, x: Value, heads: number, headDim: number, target: Value): Value {
  const split = b.op('Reshape', [x, int64Const(b, [0, 0, heads, headDim])], { allowzero: 0 });
  const moved = b.op('Transpose', [split], { perm: [0, 2, 1, 3] });
  return b.op('Reshape', [moved, target], { allowzero: 0 });
}

/** [-1, S, d] for the sequence length of x ([B, S, C]). */
function batchedHeadShape(b: GraphBuilder, x: Value, prefix: number[], suffix: number[]): Value {
  const seq = b.op('Shape', [x], { start: 1, end: 2 });
  return b.op('Concat', [int64Const(b, prefix), seq, int64Const(b, suffix)], { axis: 0 });
}

export function attention(
  ctx: BuildContext,
  path: string,
  x: Value,
  context: Value | null,
  dim: number,
  heads: number,
  headDim: number,
  contextDim: number,
): Value {
  const b = moduleBuilder(ctx, path);
  const inner = heads * headDim;
  const kv = context ?? x;
  const kvDim = context ? contextDim : dim;
  const q = linear3d(ctx, `${path}.to_q`, x, dim, inner, false);
  const k = linear3d(ctx, `${path}.to_k`, kv, kvDim, inner, false);
  const v = linear3d(ctx, `${path}.to_v`, kv, kvDim, inner, false);

  const qTarget = batchedHeadShape(b, q, [-1], [headDim]);
  const q3 = headsToBatch(b, q, heads, headDim, qTarget);
  const kvTarget = context ? batchedHeadShape(b, k, [-1], [headDim]) : qTarget;
  const k3 = headsToBatch(b, k, heads, headDim, kvTarget);
  const v3 = headsToBatch(b, v, heads, headDim, kvTarget);

  const kT = b.op('Transpose', [k3], { perm: [0, 2, 1] });
  const scores = b.op('MatMul', [q3, kT]);
  const scaled = b.op('Mul', [scores, floatScalar(b, Math.fround(headDim ** -0.5))]);
  const probs = b.op('Softmax', [scaled], { axis: -1 });
  const out = b.op('MatMul', [probs, v3]);

  // [B*h, S, d] -> [B, h, S, d] -> [B, S, h, d] -> [B, S, h*d] (batch_to_head_dim)
  const unbatched = b.op('Reshape', [out, batchedHeadShape(b, q, [-1, heads], [headDim])], { allowzero: 0 });
  const moved = b.op('Transpose', [unbatched], { perm: [0, 2, 1, 3] });
  const merged = b.op('Reshape', [moved, int64Const(b, [0, 0, inner])], { allowzero: 0 });
  return linear3d(ctx, `${path}.to_out.0`, merged, inner, dim);
}

/** FeedForward with GEGLU: proj to 2 x 4*dim, value * gelu(gate) (exact GELU via Erf), proj back. */
export function feedForward(ctx: BuildContext, path: string, x: Value, dim: number): Value {
  const inner = 4 * dim;
  const proj = linear3d(ctx, `${path}.net.0.proj`, x, dim, 2 * inner);
  const b = moduleBuilder(ctx, `${path}.net.0`);
  const axis = int64Const(b, [-1]);
  const value = b.op('Slice', [proj, int64Const(b, [0]), int64Const(b, [inner]), axis]);
  const gate = b.op('Slice', [proj, int64Const(b, [inner]), int64Const(b, [2 * inner]), axis]);
  const erf = b.op('Erf', [b.op('Div', [gate, floatScalar(b, Math.fround(Math.SQRT2))])]);
  const gelu = b.op('Mul', [b.op('Mul', [gate, b.op('Add', [erf, floatScalar(b, 1)])]), floatScalar(b, 0.5)]);
  const gated = b.op('Mul', [value, gelu]);
  return linear3d(ctx, `${path}.net.2`, gated, inner, dim);
}

export function basicTransformerBlock(
  ctx: BuildContext,
  path: string,
  x: Value,
  context: Value,
  dim: number,
  spec: TransformerSpec,
): Value {
  const b = moduleBuilder(ctx, path);
  let h = x;
  const a1 = attention(ctx, `${path}.attn1`, layerNorm(ctx, `${path}.norm1`, h, dim), null, dim, spec.heads, spec.headDim, dim);
  h = b.op('Add', [a1, h]);
  const a2 = attention(
    ctx,
    `${path}.attn2`,
    layerNorm(ctx, `${path}.norm2`, h, dim),
    context,
    dim,
    spec.heads,
    spec.headDim,
    spec.crossAttentionDim,
  );
  h = b.op('Add', [a2, h]);
  const ff = feedForward(ctx, `${path}.ff`, layerNorm(ctx, `${path}.norm3`, h, dim), dim);
  return b.op('Add', [ff, h]);
}

export function transformer2d(ctx: BuildContext, spec: TransformerSpec, x: Value, context: Value): Value {
  const p = spec.path;
  const b = moduleBuilder(ctx, p);
  const inner = spec.heads * spec.headDim;
  const residual = x;
  let h = groupNorm(ctx, `${p}.norm`, x, spec.channels, spec.groups, TRANSFORMER_NORM_EPS);
  // [B, C, H, W] -> [B, H*W, C]
  const toTokens = (v: Value, c: number) =>
    b.op('Reshape', [b.op('Transpose', [v], { perm: [0, 2, 3, 1] }), int64Const(b, [0, -1, c])], { allowzero: 0 });
  if (spec.linearProjection) {
    h = toTokens(h, spec.channels);
    h = linear3d(ctx, `${p}.proj_in`, h, spec.channels, inner);
  } else {
    h = conv2d(ctx, `${p}.proj_in`, h, spec.channels, inner, 1);
    h = toTokens(h, inner);
  }
  for (let i = 0; i < spec.layers; i++) h = basicTransformerBlock(ctx, `${p}.transformer_blocks.${i}`, h, context, inner, spec);
  // [B, H*W, C] -> [B, H, W, C] -> [B, C, H, W], H and W read from the block input
  const toImage = (v: Value) => {
    const hw = b.op('Shape', [residual], { start: 2 });
    const target = b.op('Concat', [int64Const(b, [0]), hw, int64Const(b, [-1])], { axis: 0 });
    return b.op('Transpose', [b.op('Reshape', [v, target], { allowzero: 0 })], { perm: [0, 3, 1, 2] });
  };
  if (spec.linearProjection) {
    h = linear3d(ctx, `${p}.proj_out`, h, inner, spec.channels);
    h = toImage(h);
  } else {
    h = toImage(h);
    h = conv2d(ctx, `${p}.proj_out`, h, inner, spec.channels, 1);
  }
  return b.op('Add', [h, residual]);
}
