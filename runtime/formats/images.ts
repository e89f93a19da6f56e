/**
 * Training images in, generated images out, with sharp (libvips). Decoding follows what SD
 * training scripts do with PIL (`exif_transpose`, `convert("RGB")`, centre crop, resize), with
 * the guards a user-facing tool needs: the header is read first and an image over the pixel cap
 * (a decompression bomb) or too small to mean anything is refused before any pixel is decoded.
 */
import * as fs from 'fs';
import * as path from 'path';
import sharp, { type Metadata, type OutputInfo } from 'sharp';
import { HollowcError } from '../../compiler/errors';
import { writeFileAtomic } from '../../compiler/atomic-files';

export const IMAGE_EXTENSIONS: readonly string[] = ['.jpg', '.jpeg', '.png', '.webp'];
const FORMATS: ReadonlySet<string> = new Set(['jpeg', 'png', 'webp']);

/** 20000 x 20000: far above any photo, far below what would exhaust memory when decoded (1.2 GB RGB). */
export const DEFAULT_MAX_PIXELS = 20000 * 20000;
/** Below this side length an image holds no usable content (and 1x1 is usually a tracking pixel). */
export const DEFAULT_MIN_SIDE = 8;

export interface ImageLoadOptions {
  readonly width: number;
  readonly height: number;
  readonly maxPixels?: number;
  readonly minSide?: number;
  /** what transparent pixels become (default white, as on a web page) */
  readonly background?: { r: number; g: number; b: number };
}

/** A float32 NCHW tensor's data and dims. */
export interface ImageTensor {
  readonly data: Float32Array;
  readonly dims: readonly [number, number, number, number];
}

function failure(e: unknown): string {
  return ((e as Error).message ?? String(e)).split('\n')[0];
}

async function readImageBytes(file: string): Promise<Buffer> {
  let bytes: Buffer;
  try {
    bytes = await fs.promises.readFile(file);
  } catch (e) {
    throw new HollowcError(`cannot read image: ${(e as NodeJS.ErrnoException).code ?? failure(e)}`, file);
  }
  if (bytes.byteLength === 0) throw new HollowcError('image file is empty (0 bytes)', file);
  return bytes;
}

/** Header checks: format, size within [minSide, maxPixels]. Reads no pixels. */
async function checkHeader(bytes: Buffer, file: string, maxPixels: number, minSide: number): Promise<Metadata> {
  let meta: Metadata;
  try {
    // the header alone: no pixel limit here (sharp's own default would refuse with a vaguer message)
    meta = await sharp(bytes, { limitInputPixels: false }).metadata();
  } catch (e) {
    throw new HollowcError(`not a decodable image (${failure(e)})`, file);
  }
  if (!meta.format || !FORMATS.has(meta.format)) {
    throw new HollowcError(`image format ${meta.format ?? 'unknown'} is not supported (expected JPEG, PNG or WebP)`, file);
  }
  const { width, height } = meta;
  if (!width || !height) throw new HollowcError('image header has no size', file);
  if (width * height > maxPixels) {
    throw new HollowcError(
      `image is ${width}x${height} = ${width * height} pixels, over the limit of ${maxPixels}; refusing to decode it`,
      file,
    );
  }
  if (Math.min(width, height) < minSide) {
    throw new HollowcError(`image is ${width}x${height}, too small (each side must be at least ${minSide} px)`, file);
  }
  return meta;
}

function checkSize(width: number, height: number): void {
  for (const [name, v] of [
    ['width', width],
    ['height', height],
  ] as const) {
    if (!Number.isInteger(v) || v < 1 || v > 16384) throw new HollowcError(`image ${name} must be an integer in 1..16384, got ${v}`);
  }
}

/**
 * An image file as float32 [1, 3, height, width] in [-1, 1] (the VAE encoder's input): EXIF
 * orientation applied, scaled to cover the target and centre-cropped, alpha composited onto
 * the background, any colour space (grey, CMYK, 16-bit) converted to 8-bit sRGB.
 */
export async function loadImage(file: string, options: ImageLoadOptions): Promise<ImageTensor> {
  const { width, height } = options;
  checkSize(width, height);
  const maxPixels = options.maxPixels ?? DEFAULT_MAX_PIXELS;
  const bytes = await readImageBytes(file);
  await checkHeader(bytes, file, maxPixels, options.minSide ?? DEFAULT_MIN_SIDE);
  let raw: { data: Buffer; info: OutputInfo };
  try {
    raw = await sharp(bytes, { limitInputPixels: maxPixels, failOn: 'error' })
      .rotate() // EXIF orientation
      .flatten({ background: options.background ?? { r: 255, g: 255, b: 255 } })
      .resize(width, height, { fit: 'cover', position: 'centre' })
      .toColourspace('srgb')
      .removeAlpha()
      .raw({ depth: 'uchar' })
      .toBuffer({ resolveWithObject: true });
  } catch (e) {
    throw new HollowcError(`not a decodable image (${failure(e)})`, file);
  }
  const { info, data } = raw;
  if (info.width !== width || info.height !== height || info.channels !== 3) {
    throw new HollowcError(`internal: decoded ${info.width}x${info.height}x${info.channels}, expected ${width}x${height}x3`, file);
  }
  // HWC uint8 -> CHW float in [-1, 1] (x / 127.5 - 1, as diffusers' Normalize([0.5], [0.5]))
  const plane = width * height;
  const out = new Float32Array(3 * plane);
  for (let i = 0; i < plane; i++) {
    out[i] = data[3 * i] / 127.5 - 1;
    out[plane + i] = data[3 * i + 1] / 127.5 - 1;
    out[2 * plane + i] = data[3 * i + 2] / 127.5 - 1;
  }
  return { data: out, dims: [1, 3, height, width] };
}

/** Several images stacked into one [N, 3, height, width] batch. */
export async function loadImages(files: readonly string[], options: ImageLoadOptions): Promise<ImageTensor> {
  const plane = 3 * options.width * options.height;
  const out = new Float32Array(files.length * plane);
  for (let i = 0; i < files.length; i++) out.set((await loadImage(files[i], options)).data, i * plane);
  return { data: out, dims: [files.length, 3, options.height, options.width] };
}

/** Images of one size stacked into one [N, C, H, W] batch. */
export function stackImages(images: readonly ImageTensor[]): ImageTensor {
  const [, c, h, w] = images[0].dims;
  const plane = c * h * w;
  const data = new Float32Array(images.length * plane);
  images.forEach((im, i) => data.set(im.data, i * plane));
  return { data, dims: [images.length, c, h, w] };
}

/** The mirror image (left-right) of a [1, C, H, W] image. */
export function mirrorImage(img: ImageTensor): ImageTensor {
  const [, c, h, w] = img.dims;
  const out = new Float32Array(img.data.length);
  for (let k = 0; k < c; k++)
    for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) out[(k * h + y) * w + x] = img.data[(k * h + y) * w + (w - 1 - x)];
  return { data: out, dims: img.dims };
}

/** PNG bytes of image `index` of a [N, 3, H, W] (or [3, H, W]) tensor with values in [0, 1] (clamped). */
export async function encodePng(data: Float32Array, dims: readonly number[], index = 0): Promise<Buffer> {
  const nchw = dims.length === 3 ? [1, ...dims] : [...dims];
  if (nchw.length !== 4 || nchw[1] !== 3) throw new HollowcError(`expected an image tensor [N, 3, H, W], got [${dims.join(', ')}]`);
  const [n, , h, w] = nchw;
  if (!(index >= 0 && index < n)) throw new HollowcError(`image index ${index} is out of range for a batch of ${n}`);
  const plane = h * w;
  if (data.length !== n * 3 * plane)
    throw new HollowcError(`tensor has ${data.length} values, [${dims.join(', ')}] needs ${n * 3 * plane}`);
  const base = index * 3 * plane;
  const rgb = Buffer.allocUnsafe(3 * plane);
  const byte = (v: number) => Math.round(Math.min(1, Math.max(0, Number.isNaN(v) ? 0 : v)) * 255);
  for (let i = 0; i < plane; i++) {
    rgb[3 * i] = byte(data[base + i]);
    rgb[3 * i + 1] = byte(data[base + plane + i]);
    rgb[3 * i + 2] = byte(data[base + 2 * plane + i]);
  }
  return sharp(rgb, { raw: { width: w, height: h, channels: 3 } })
    .png()
    .toBuffer();
}

/** Writes image `index` of a [0, 1] NCHW tensor as a PNG (atomically). */
export async function savePng(file: string, data: Float32Array, dims: readonly number[], index = 0): Promise<void> {
  writeFileAtomic(file, await encodePng(data, dims, index));
}

/** The images of a folder (by extension, not recursive, hidden files skipped), sorted by name. */
export function listImages(dir: string): string[] {
  let entries: fs.Dirent[];
  try {
    entries = fs.readdirSync(dir, { withFileTypes: true });
  } catch (e) {
    throw new HollowcError(`cannot list image folder: ${(e as NodeJS.ErrnoException).code ?? failure(e)}`, dir);
  }
  const files = entries
    .filter((e) => e.isFile() && !e.name.startsWith('.') && IMAGE_EXTENSIONS.includes(path.extname(e.name).toLowerCase()))
    .map((e) => e.name)
    .sort()
    .map((name) => path.join(dir, name));
  if (files.length === 0) throw new HollowcError(`no images in the folder (looked for ${IMAGE_EXTENSIONS.join(', ')})`, dir);
  return files;
}
