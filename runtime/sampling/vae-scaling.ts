/**
 * The arithmetic around a VAE decoder, as diffusers' pipelines do it, with no session and no file:
 * the UNet's latents are the VAE's times scaling_factor (from config.json), and the decoder's
 * `sample` in [-1, 1] maps to [0, 1]. Pure, so runtime/text-to-image/vae.ts (onnxruntime-node) and
 * the browser page (runtime/web/browser/vae-decoder.ts, onnxruntime-web) decode the same way.
 */
import { HollowcError } from '../../compiler/errors';

/** The decoder's input, [N, C, h, w] latents divided by the scaling factor. */
export const LATENT_SAMPLE = 'latent_sample';
/** The decoder's output, [N, 3, H, W] in [-1, 1]. */
export const DECODED_IMAGE = 'sample';

/** scaling_factor of a VAE's config.json: the decoder's, else the encoder's; `where` names the folder in the error. */
export function vaeScalingFactor(
  decoderConfig: Record<string, unknown>,
  encoderConfig: Record<string, unknown> = {},
  where?: string,
): number {
  const scaling = decoderConfig.scaling_factor ?? encoderConfig.scaling_factor;
  if (typeof scaling !== 'number' || !(scaling > 0))
    throw new HollowcError(`vae_decoder/config.json: scaling_factor ${JSON.stringify(scaling)} is not a positive number`, where);
  return scaling;
}

/** The UNet's latents as the decoder takes them: divided by the scaling factor. */
export function decoderInput(latents: Float32Array, scalingFactor: number): Float32Array {
  return latents.map((z) => z / scalingFactor);
}

/** A decoded value in [-1, 1] as a pixel value in [0, 1] (clamped). */
export function pixelValue(x: number): number {
  return Math.min(1, Math.max(0, x / 2 + 0.5));
}
