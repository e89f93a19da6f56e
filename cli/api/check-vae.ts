/**
 * Did the VAE learn? decode(encode(image)) of held-out world scenes through the pipeline folder's
 * vae_encoder and vae_decoder, as runtime/text-to-image runs them (z sampled from mean and logvar,
 * times scaling_factor and back), read by the world's pixel scorers: the share of reconstructions
 * whose background, object color and object kind describeImage reads as the scene has them.
 */
import { Description, Scene, describeImage, pixelsOfTensor, sampleScene } from '../../models/world';
import { openPipelineFolder } from '../../runtime/text-to-image/pipeline-folder';
import { decodeLatents, encodeImages } from '../../runtime/text-to-image/vae';
import { HELD_OUT_SEED, drawScenes } from './train-vae';

export interface VaeCheckOptions {
  /** Held-out scenes (default 100), seeds HELD_OUT_SEED, HELD_OUT_SEED + 1, ... */
  count?: number;
  /** Image side (default 64). */
  size?: number;
  /** Seed of the encode's sampled ε. */
  seed?: number;
}

export interface VaeReconstruction {
  scene: Scene;
  /** RGB bytes (HWC) of the drawn scene and of its reconstruction. */
  original: Uint8Array;
  reconstruction: Uint8Array;
  read: Description;
}

export interface VaeCheck {
  count: number;
  /** Shares in [0, 1] of reconstructions read right. */
  background: number;
  objectColor: number;
  objectKind: number;
  /** Shares of the drawn originals read right (the scorer's own ceiling at this size). */
  originals: { background: number; objectColor: number; objectKind: number };
  /** mean((x̂ − x)²) over the held-out images in [-1, 1], as the training loss measures it. */
  mse: number;
  images: VaeReconstruction[];
}

function share(descriptions: readonly Description[], scenes: readonly Scene[]) {
  const n = scenes.length;
  const count = (ok: (d: Description, s: Scene) => boolean) => descriptions.filter((d, i) => ok(d, scenes[i])).length / n;
  return {
    background: count((d, s) => d.background === s.background),
    objectColor: count((d, s) => d.color === s.color),
    objectKind: count((d, s) => d.kind === s.kind),
  };
}

export async function checkVae(pipelineDir: string, o: VaeCheckOptions = {}): Promise<VaeCheck> {
  const count = o.count ?? 100;
  const size = o.size ?? 64;
  const folder = openPipelineFolder(pipelineDir);
  const scenes = Array.from({ length: count }, (_, i) => sampleScene(HELD_OUT_SEED + i));
  const images = await drawScenes(scenes, size);
  const dims = [count, 3, size, size];
  const latents = await encodeImages(folder, { data: images, dims }, { seed: o.seed ?? 0 });
  const decoded = await decodeLatents(folder, latents);
  let sq = 0;
  for (let k = 0; k < images.length; k++) sq += (decoded.data[k] * 2 - 1 - images[k]) ** 2;
  const unit = images.map((v) => (v + 1) / 2);
  const originals = scenes.map((_, i) => pixelsOfTensor(unit, dims, i));
  const reconstructions = scenes.map((_, i) => pixelsOfTensor(decoded.data, decoded.dims, i));
  const read = reconstructions.map((p) => describeImage(p, size));
  return {
    count,
    ...share(read, scenes),
    originals: share(
      originals.map((p) => describeImage(p, size)),
      scenes,
    ),
    mse: sq / images.length,
    images: scenes.map((scene, i) => ({ scene, original: originals[i], reconstruction: reconstructions[i], read: read[i] })),
  };
}
