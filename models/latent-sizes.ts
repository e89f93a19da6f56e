/**
 * The latent sizes a UNet takes. Each down block with a downsampler halves the latent (a stride-2
 * convolution rounds an odd side up), and the up path doubles it back and joins each skip by
 * concatenation, which needs the sides to match: so a side must be a multiple of 2^(downsamplers),
 * or the UNet fails deep inside (onnxruntime: `Non-zero status code returned while running Concat
 * node`). SD 1.x/2.x (three downsamplers): latent sides multiples of 8, images multiples of 64.
 */
import { parseUNetConfig } from './config';
import { UNetLayout, buildLayout } from './layout';

/** 2^(down blocks with a downsampler): what every latent side must be a multiple of. */
export function latentMultipleOfLayout(layout: UNetLayout): number {
  return 2 ** layout.layers.filter((l) => l.role === 'downsampler').length;
}

/**
 * The same from a pipeline's `unet/config.json`; undefined when the config is not one hollowc can
 * read (then nothing is checked, rather than refusing a UNet for the check's sake).
 */
export function latentMultipleOfConfig(json: unknown, source: string): number | undefined {
  try {
    return latentMultipleOfLayout(buildLayout(parseUNetConfig(json, source)));
  } catch {
    return undefined;
  }
}

/**
 * One line saying which sizes work when `side` (what the user wrote, named by `label`) is not one
 * the UNet takes; undefined when it is. `imageFactor` (the VAE's, image side / latent side) when
 * `side` is in image pixels; absent when it is a latent side.
 *   --height 96: the UNet takes latent sides that are multiples of 8 (images: multiples of 64); nearest: 64 or 128
 */
export function sideProblem(label: string, side: number, latentMultiple: number, imageFactor?: number): string | undefined {
  const step = latentMultiple * (imageFactor ?? 1);
  if (Number.isInteger(side) && side > 0 && side % step === 0) return undefined;
  const below = Math.floor(side / step) * step;
  const nearest = below > 0 && below !== side ? `${below} or ${below + step}` : `${below + step}`;
  const images = imageFactor !== undefined ? ` (images: multiples of ${step})` : '';
  return `${label} ${side}: the UNet takes latent sides that are multiples of ${latentMultiple}${images}; nearest: ${nearest}`;
}

/** sideProblem for a latent shape's last two axes ([..., h, w]): `<what> height` first, then width. */
export function latentShapeProblem(what: string, shape: readonly number[], latentMultiple: number): string | undefined {
  if (shape.length < 2) return undefined;
  return (
    sideProblem(`${what} height`, shape[shape.length - 2], latentMultiple) ??
    sideProblem(`${what} width`, shape[shape.length - 1], latentMultiple)
  );
}
