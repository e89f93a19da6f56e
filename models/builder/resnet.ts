/**
 * ResnetBlock2D, Downsample2D and Upsample2D (diffusers 0.21), as exported.
 */
import { Value } from '../../compiler/ir';
import { ModuleSpec } from '../layout';
import { BuildContext, CallCounter, conv2d, groupNorm, int64Const, linear2d, moduleBuilder, silu } from './nn';

/** The layout's description of a ResnetBlock2D (models/layout.ts is its one source). */
export type ResnetSpec = Omit<Extract<ModuleSpec, { kind: 'resnet' }>, 'kind'>;

/**
 * The time embedding after SiLU. Every resnet applies `nonlinearity(temb)`; torch's tracer
 * merges these identical calls into the first resnet's (`/down_blocks.0/resnets.0/nonlinearity_1`),
 * and the other resnets read that value. `TembState` reproduces this.
 */
export interface TembState {
  readonly temb: Value;
  activated?: Value;
}

export function resnetBlock(ctx: BuildContext, spec: ResnetSpec, x: Value, temb: TembState): Value {
  const b = moduleBuilder(ctx, spec.path);
  const calls = new CallCounter(b);
  const p = spec.path;

  let h = groupNorm(ctx, `${p}.norm1`, x, spec.inChannels, spec.groups, spec.eps);
  h = silu(calls.scope('nonlinearity'), h);
  h = conv2d(ctx, `${p}.conv1`, h, spec.inChannels, spec.outChannels, 3);

  if (!temb.activated) temb.activated = silu(calls.scope('nonlinearity'), temb.temb);
  let t = linear2d(ctx, `${p}.time_emb_proj`, temb.activated, spec.tembChannels, spec.outChannels);
  t = b.op('Unsqueeze', [t, int64Const(b, [2])]);
  t = b.op('Unsqueeze', [t, int64Const(b, [3])]);
  h = b.op('Add', [h, t]);

  h = groupNorm(ctx, `${p}.norm2`, h, spec.outChannels, spec.groups, spec.eps);
  h = silu(calls.scope('nonlinearity'), h);
  h = conv2d(ctx, `${p}.conv2`, h, spec.outChannels, spec.outChannels, 3);

  const shortcut = spec.convShortcut ? conv2d(ctx, `${p}.conv_shortcut`, x, spec.inChannels, spec.outChannels, 1) : x;
  // (output_scale_factor is 1 in every SD UNet: the exporter's `Div` by 1 is left out)
  return b.op('Add', [shortcut, h]);
}

/** Downsample2D(use_conv=True): a stride-2 3x3 conv; padding 0 means diffusers' (0,1,0,1) pad. */
export function downsample(ctx: BuildContext, path: string, x: Value, channels: number, padding: number): Value {
  if (padding === 0) {
    const b = moduleBuilder(ctx, path);
    x = b.op('Pad', [x, int64Const(b, [0, 0, 0, 0, 0, 0, 1, 1])], { mode: 'constant' });
  }
  return conv2d(ctx, `${path}.conv`, x, channels, channels, 3, { stride: 2, pad: padding });
}

/** Upsample2D(use_conv=True): nearest x2 Resize (the exporter's attributes), then a 3x3 conv. */
export function upsample(ctx: BuildContext, path: string, x: Value, channels: number): Value {
  const b = moduleBuilder(ctx, path);
  const scales = b.constant(Float32Array.of(1, 1, 2, 2), [4]);
  const up = b.op('Resize', [x, null, scales], {
    coordinate_transformation_mode: 'asymmetric',
    cubic_coeff_a: { f: -0.75 },
    mode: 'nearest',
    nearest_mode: 'floor',
  });
  return conv2d(ctx, `${path}.conv`, up, channels, channels, 3);
}
