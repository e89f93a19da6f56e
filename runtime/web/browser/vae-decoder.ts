/**
 * The sample decoded to pixels in the page, when `hollowc web --model <pipeline folder>` serves
 * that pipeline's vae_decoder/ (the server's /model.json says so): latents / scaling_factor ->
 * vae_decoder -> clamp(x / 2 + 0.5), as runtime/text-to-image/vae.ts decodes under onnxruntime-node
 * (runtime/sampling/vae-scaling.ts holds the arithmetic both use).
 */
import type * as Ort from 'onnxruntime-web';
import { DECODED_IMAGE, LATENT_SAMPLE, decoderInput, pixelValue, vaeScalingFactor } from '../../sampling/vae-scaling';
import { fetchBytes } from './folder';
import { OrtModule, floatOutput, webTensor } from './tensors';
import { fetchServedModelJson } from './served-conditionings';

export interface WebVaeDecoder {
  model: Uint8Array;
  /** model.onnx_data and the like, given to the session as externalData. */
  weights: { path: string; data: Uint8Array }[];
  scalingFactor: number;
}

/** A decoded image: `rgb` planar [3, height, width], values in [0, 1]. */
export interface DecodedImage {
  width: number;
  height: number;
  rgb: Float32Array;
}

/** The served VAE decoder, or undefined when the server has none (no --model). `site` is the page's own URL. */
export async function loadVaeDecoder(site: string, onProgress: (what: string) => void = () => {}): Promise<WebVaeDecoder | undefined> {
  // a static host without hollowc's server, or no --model: no decoder, the page keeps its latent preview
  const served = (await fetchServedModelJson(site)).vae_decoder;
  if (!served) return undefined;
  const dir = new URL('model/vae_decoder/', site).href;
  onProgress('vae_decoder/config.json');
  const config = JSON.parse(new TextDecoder().decode(await fetchBytes(dir + 'config.json'))) as Record<string, unknown>;
  const scalingFactor = vaeScalingFactor(config, {}, dir);
  onProgress('vae_decoder/model.onnx');
  const model = await fetchBytes(dir + 'model.onnx');
  const weights: WebVaeDecoder['weights'] = [];
  for (const w of served.weights) {
    onProgress(`vae_decoder/${w}`);
    weights.push({ path: w, data: await fetchBytes(dir + w) });
  }
  return { model, weights, scalingFactor };
}

/** One sample's latents [C, h, w] (as the UNet sees them) decoded to an image. */
export async function decodeSample(
  ort: OrtModule,
  session: Ort.InferenceSession,
  vae: WebVaeDecoder,
  latents: Float32Array,
  shape: readonly number[],
): Promise<DecodedImage> {
  const meta = session.inputMetadata.find((m) => m.name === LATENT_SAMPLE);
  if (!meta) throw new Error(`vae_decoder has no input ${LATENT_SAMPLE} (has ${session.inputNames.join(', ')})`);
  // an fp16 export's decoder takes float16 latents
  const dtype = meta.isTensor ? meta.type : 'float32';
  const result = await session.run(
    { [LATENT_SAMPLE]: webTensor(ort, { name: LATENT_SAMPLE, dtype }, decoderInput(latents, vae.scalingFactor), [1, ...shape]) },
    [DECODED_IMAGE],
  );
  const out = result[DECODED_IMAGE];
  const x = floatOutput(out, DECODED_IMAGE);
  const [, channels, height, width] = out.dims;
  if (channels !== 3) throw new Error(`vae_decoder gave ${channels} channels, expected RGB`);
  return { width, height, rgb: x.map(pixelValue) };
}

/** RGBA bytes of a decoded image, for a canvas. */
export function imageRgba(image: DecodedImage): Uint8ClampedArray {
  const plane = image.width * image.height;
  const rgba = new Uint8ClampedArray(4 * plane);
  for (let p = 0; p < plane; p++) {
    for (let k = 0; k < 3; k++) rgba[4 * p + k] = Math.round(255 * image.rgb[k * plane + p]);
    rgba[4 * p + 3] = 255;
  }
  return rgba;
}
