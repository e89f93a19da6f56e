/**
 * The VAE of a pipeline folder, as diffusers' pipelines use it:
 *
 *   encode  image [N, 3, H, W] in [-1, 1] -> `latent_parameters` (mean ‖ logvar, newer optimum)
 *           -> clamp(logvar, -30, 20), z = mean + exp(logvar / 2)·ε  (DiagonalGaussianDistribution)
 *           or `latent_sample` (older exports: already sampled) -> z · scaling_factor
 *   decode  latents / scaling_factor -> `latent_sample` -> `sample` -> clamp(x / 2 + 0.5, 0, 1)
 *
 * ε is N(0, 1) from the stream `vae/encode` of the seed (one draw for the whole batch). Each call
 * opens its session and releases it before returning; images go through one at a time (optimum's
 * ONNX pipeline decodes one by one too), which bounds the activation memory by one image.
 */
import * as ort from 'onnxruntime-node';
import { HollowcError } from '../../compiler/errors';
import { Rng, fillNormal } from '../../models/random';
import { floatValues, tensorFor } from '../ort/artifacts';
import type { ModelComponent, PipelineFolder } from './pipeline-folder';
import { SessionOptions, createSession } from '../ort/session';
import { releaseSession } from '../ort/session-pool';
import { DECODED_IMAGE, LATENT_SAMPLE, decoderInput, pixelValue } from '../sampling/vae-scaling';

export { LATENT_SAMPLE };
export const LATENT_PARAMETERS = 'latent_parameters';
const IMAGE = 'sample';

export interface LatentBatch {
  data: Float32Array;
  /** [N, C, h, w] */
  shape: number[];
}

function input(c: ModelComponent, name: string) {
  const i = c.inputs.find((x) => x.name === name);
  if (!i) throw new HollowcError(`${c.name} graph has no input ${name}`, c.model);
  return i;
}

async function withSession<T>(c: ModelComponent, options: SessionOptions, use: (s: ort.InferenceSession) => Promise<T>): Promise<T> {
  const session = await createSession(c.model, options);
  try {
    return await use(session);
  } finally {
    await releaseSession(session);
  }
}

export interface EncodeOptions {
  session?: SessionOptions;
  /** seed of ε (default 0) */
  seed?: number;
}

/** Images [N, 3, H, W] in [-1, 1] -> scaled latents [N, C, H/f, W/f]. */
export async function encodeImages(
  folder: PipelineFolder,
  images: { data: Float32Array; dims: readonly number[] },
  options: EncodeOptions = {},
): Promise<LatentBatch> {
  const enc = folder.vaeEncoder;
  const [n, c, h, w] = images.dims;
  if (images.dims.length !== 4 || c !== 3) throw new HollowcError(`expected images [N, 3, H, W], got [${images.dims.join(', ')}]`);
  const outputName = enc.outputs.some((o) => o.name === LATENT_PARAMETERS)
    ? LATENT_PARAMETERS
    : enc.outputs.some((o) => o.name === LATENT_SAMPLE)
      ? LATENT_SAMPLE
      : undefined;
  if (!outputName)
    throw new HollowcError(
      `vae_encoder has neither ${LATENT_PARAMETERS} nor ${LATENT_SAMPLE} among its outputs (${enc.outputs.map((o) => o.name).join(', ')})`,
      enc.model,
    );
  const desc = input(enc, IMAGE);
  const plane = 3 * h * w;
  const parts: Float32Array[] = [];
  let latentShape: number[] = [];
  await withSession(enc, options.session ?? {}, async (session) => {
    for (let i = 0; i < n; i++) {
      const r = await session.run({ [IMAGE]: tensorFor(desc, images.data.subarray(i * plane, (i + 1) * plane), [1, 3, h, w]) }, [
        outputName,
      ]);
      parts.push(Float32Array.from(floatValues(r[outputName], outputName)));
      latentShape = [...r[outputName].dims];
    }
  });
  const channels = outputName === LATENT_PARAMETERS ? latentShape[1] / 2 : latentShape[1];
  if (!Number.isInteger(channels))
    throw new HollowcError(`${LATENT_PARAMETERS} has ${latentShape[1]} channels, expected mean and logvar (an even count)`, enc.model);
  const [lh, lw] = latentShape.slice(2);
  const size = channels * lh * lw;
  const out = new Float32Array(n * size);
  const eps = new Float32Array(outputName === LATENT_PARAMETERS ? n * size : 0);
  if (eps.length) fillNormal(new Rng(options.seed ?? 0, 'vae/encode'), eps, 1);
  const s = folder.scalingFactor;
  for (let i = 0; i < n; i++) {
    const p = parts[i];
    for (let k = 0; k < size; k++) {
      let z: number;
      if (outputName === LATENT_PARAMETERS) {
        const logvar = Math.min(20, Math.max(-30, p[size + k]));
        z = p[k] + Math.exp(0.5 * logvar) * eps[i * size + k];
      } else z = p[k];
      out[i * size + k] = z * s;
    }
  }
  return { data: out, shape: [n, channels, lh, lw] };
}

/** Latents [N, C, h, w] (times the scaling factor, as the UNet sees them) -> images [N, 3, H, W] in [0, 1]. */
export async function decodeLatents(
  folder: PipelineFolder,
  latents: LatentBatch,
  session: SessionOptions = {},
): Promise<{ data: Float32Array; dims: number[] }> {
  const dec = folder.vaeDecoder;
  const desc = input(dec, LATENT_SAMPLE);
  if (!dec.outputs.some((o) => o.name === DECODED_IMAGE))
    throw new HollowcError(`vae_decoder has no output ${DECODED_IMAGE} (has ${dec.outputs.map((o) => o.name).join(', ')})`, dec.model);
  const [n, c, h, w] = latents.shape;
  const size = c * h * w;
  let out: Float32Array | undefined;
  let dims: number[] = [];
  await withSession(dec, session, async (s) => {
    for (let i = 0; i < n; i++) {
      const z = decoderInput(latents.data.subarray(i * size, (i + 1) * size), folder.scalingFactor);
      const r = await s.run({ [LATENT_SAMPLE]: tensorFor(desc, z, [1, c, h, w]) }, [DECODED_IMAGE]);
      const x = floatValues(r[DECODED_IMAGE], DECODED_IMAGE);
      if (!out) {
        dims = [n, ...r[DECODED_IMAGE].dims.slice(1)];
        out = new Float32Array(n * x.length);
      }
      for (let k = 0; k < x.length; k++) out[i * x.length + k] = pixelValue(x[k]);
    }
  });
  return { data: out ?? new Float32Array(0), dims };
}
