/**
 * `hollowc encode` and `hollowc decode`: photos to the latents `precompute --data` reads, and
 * latents (generate's `--latents-out`, a data folder's latents/) back to images, through a
 * pipeline folder's VAE. Encoding is personalize's photos stage step for step: the same decoding,
 * resize and centre crop (formats/images.ts loadImage), the mirror images after their photos,
 * one batch and one ε stream (vae.ts encodeImages), so the same photos, resolution and seed give
 * the same latents bit for bit. Everything is read and checked before the first write.
 */
import * as fs from 'fs';
import * as path from 'path';
import { tempSibling } from '../../compiler/atomic-files';
import { HollowcError } from '../../compiler/errors';
import { latentMultipleOfConfig, sideProblem } from '../../models/latent-sizes';
import { ImageTensor, listImages, loadImage, mirrorImage, stackImages } from '../formats/images';
import { writeNpy } from '../formats/npy';
import type { SessionOptions } from '../ort/session';
import { Latent, readLatents, writeLatents } from '../store/training-data';
import { PipelineFolder, openPipelineFolder } from './pipeline-folder';
import { defaultImageSize, latentChannels, vaeScaleFactor } from './text-to-image';
import { LatentBatch, decodeLatents, encodeImages } from './vae';

export interface EncodeOptions {
  /** A pipeline folder (optimum's ONNX layout). */
  model: string;
  /** An image file or a folder of images (JPEG, PNG, WebP; taken in name order). */
  images: string;
  /**
   * A `.npy` file (one batch [N, C, h, w]) or a new folder: one `<i>.npy` [C, h, w] per image in
   * name order, the `latents/` (or `class_latents/`) of a precompute data folder.
   */
  output: string;
  /** Square side the images are resized and centre-cropped to (default: the UNet's sample_size x the VAE factor). */
  resolution?: number;
  /** Also each image's mirror image, right after it (personalize --flip). */
  flip?: boolean;
  /** Seed of the VAE's sampling noise (personalize passes its --seed; default 0). */
  seed?: number;
  session?: SessionOptions;
}

export interface EncodeResult {
  folder: PipelineFolder;
  images: string[];
  resolution: number;
  /** [N, C, h, w] */
  shape: number[];
  /** The files written, in sample order. */
  written: string[];
}

/** The VAE encoder's input batch of personalize's photos stage: each photo, then its mirror image with --flip. */
export function photoBatch(photos: readonly ImageTensor[], flip: boolean): ImageTensor {
  return stackImages(flip ? photos.flatMap((p) => [p, mirrorImage(p)]) : photos);
}

/**
 * Throws unless the pipeline can take square images of side `resolution`: a multiple of the UNet's
 * downsampling (read off unet/config.json) times the VAE's factor, so that encoded latents are ones
 * the UNet can train on. One line naming the sizes that work.
 */
export function checkResolution(folder: PipelineFolder, resolution: number): void {
  const multiple = latentMultipleOfConfig(folder.unet.config, path.join(folder.dir, 'unet', 'config.json')) ?? 1;
  const problem = sideProblem('--resolution', resolution, multiple, vaeScaleFactor(folder));
  if (problem) throw new HollowcError(problem);
}

/** Where encode may write: a .npy file, or a folder that does not exist yet or is empty. */
function checkEncodeOutput(output: string): 'file' | 'folder' {
  const stat = fs.statSync(output, { throwIfNoEntry: false });
  if (output.endsWith('.npy')) {
    if (stat?.isDirectory()) throw new HollowcError('is a folder: give a .npy file name or a folder without the extension', output);
    return 'file';
  }
  if (stat && !stat.isDirectory()) throw new HollowcError('exists and is not a folder: give a new folder (or a .npy file name)', output);
  const held = stat ? fs.readdirSync(output) : [];
  if (held.length)
    throw new HollowcError(
      `already holds ${held.length} file(s) (${held.slice(0, 2).join(', ')}): give a new or empty folder, so that no latents of another run mix in`,
      output,
    );
  return 'folder';
}

/** Images -> VAE latents (times the scaling factor) in `output`. */
export async function encodeImageFiles(o: EncodeOptions): Promise<EncodeResult> {
  const folder = openPipelineFolder(o.model);
  const resolution = o.resolution ?? defaultImageSize(folder);
  checkResolution(folder, resolution);
  const kind = checkEncodeOutput(o.output);
  const stat = fs.statSync(o.images, { throwIfNoEntry: false });
  if (!stat) throw new HollowcError('no such image file or folder', o.images);
  const files = stat.isDirectory() ? listImages(o.images) : [o.images];
  const size = { width: resolution, height: resolution };
  const photos: ImageTensor[] = [];
  for (const f of files) photos.push(await loadImage(f, size)); // a file that is no image fails here, naming it
  const z = await encodeImages(folder, photoBatch(photos, o.flip ?? false), { session: o.session, seed: o.seed ?? 0 });
  const written = kind === 'file' ? writeBatch(o.output, z) : writeFolder(o.output, z);
  return { folder, images: files, resolution, shape: z.shape, written };
}

function writeBatch(file: string, z: LatentBatch): string[] {
  fs.mkdirSync(path.dirname(path.resolve(file)), { recursive: true });
  writeNpy(file, { dtype: 'float32', shape: z.shape, data: z.data });
  return [file];
}

/** The latents as one .npy per sample, written beside `dir` and renamed into place: all or none. */
function writeFolder(dir: string, z: LatentBatch): string[] {
  const tmp = tempSibling(dir);
  try {
    writeLatents(tmp, z);
    if (fs.existsSync(dir)) fs.rmdirSync(dir); // empty: checked before encoding
    fs.renameSync(tmp, dir);
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
  return Array.from({ length: z.shape[0] }, (_, i) => path.join(dir, `${i}.npy`));
}

export interface DecodeOptions {
  /** A pipeline folder (optimum's ONNX layout). */
  model: string;
  /** What precompute reads: a folder of .npy latents, or one batch (.npy [N, C, h, w] or .safetensors). */
  latents: string;
  session?: SessionOptions;
}

export interface DecodeResult {
  folder: PipelineFolder;
  latents: Latent[];
  /** [N, 3, H, W] in [0, 1] */
  images: { data: Float32Array; dims: number[] };
}

/** Latents (times the scaling factor, as the UNet sees them) -> images, as generate decodes its latents. */
export async function decodeLatentFiles(o: DecodeOptions): Promise<DecodeResult> {
  const folder = openPipelineFolder(o.model);
  const latents = readLatents(o.latents);
  const [c, h, w] = latents[0].shape;
  const odd = latents.find((l) => l.shape.join() !== latents[0].shape.join());
  if (odd)
    throw new HollowcError(
      `latent ${odd.name} is [${odd.shape.join(', ')}], the first [${c}, ${h}, ${w}]: decode one size at a time`,
      odd.file,
    );
  const channels = latentChannels(folder);
  if (c !== channels)
    throw new HollowcError(
      `latents are [${latents[0].shape.join(', ')}]: this VAE decodes ${channels} channels, found ${c}`,
      latents[0].file,
    );
  const size = c * h * w;
  const data = new Float32Array(latents.length * size);
  latents.forEach((l, i) => data.set(l.data, i * size));
  const images = await decodeLatents(folder, { data, shape: [latents.length, c, h, w] }, o.session);
  return { folder, latents, images };
}
