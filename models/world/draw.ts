/**
 * Pixels of the world: figures on a plain background, as an SVG that sharp (librsvg) renders to
 * RGB. Images are square and any size; the world's images are `size * size * 3` bytes, row-major
 * RGB (HWC), the layout the scorers read.
 */
import sharp from 'sharp';
import { type ColorName, PALETTE } from './palette';
import { type Figure, figureSvg, type Placement } from './figures';
import { HollowcError } from '../../compiler/errors';

export interface PlacedFigure {
  readonly figure: Figure;
  readonly placement: Placement;
}

const rgbOf = (c: ColorName) => `rgb(${PALETTE[c].join(',')})`;

export function svgOf(background: ColorName, figures: readonly PlacedFigure[], size: number): string {
  const body = figures.map((f) => figureSvg(f.figure, f.placement, size, rgbOf)).join('');
  return (
    `<svg xmlns="http://www.w3.org/2000/svg" width="${size}" height="${size}" viewBox="0 0 ${size} ${size}">` +
    `<rect width="${size}" height="${size}" fill="${rgbOf(background)}"/>${body}</svg>`
  );
}

/** RGB bytes (HWC) of `figures` on `background`, `size` pixels square. */
export async function drawFigures(background: ColorName, figures: readonly PlacedFigure[], size: number): Promise<Uint8Array> {
  if (!(Number.isInteger(size) && size >= 8)) throw new HollowcError(`image size must be an integer >= 8, got ${size}`);
  const { data, info } = await sharp(Buffer.from(svgOf(background, figures, size)))
    .removeAlpha()
    .raw()
    .toBuffer({ resolveWithObject: true });
  if (info.width !== size || info.height !== size || info.channels !== 3)
    throw new HollowcError(`sharp rendered ${info.width}x${info.height}x${info.channels}, expected ${size}x${size}x3`);
  return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
}

/** PNG bytes of a world image. */
export function pngOf(pixels: Uint8Array, size: number): Promise<Buffer> {
  return sharp(Buffer.from(pixels.buffer, pixels.byteOffset, pixels.byteLength), { raw: { width: size, height: size, channels: 3 } })
    .png()
    .toBuffer();
}

/** RGB bytes (HWC) of image `index` of an [N, 3, H, W] float tensor in [0, 1] (what a VAE decode returns). */
export function pixelsOfTensor(data: Float32Array, dims: readonly number[], index = 0): Uint8Array {
  const [n, c, h, w] = dims;
  if (dims.length !== 4 || c !== 3 || h !== w || index < 0 || index >= n || data.length !== n * 3 * h * w)
    throw new HollowcError(
      `expected a square image tensor [N, 3, S, S] with image ${index}, got [${dims.join(', ')}] (${data.length} values)`,
    );
  const plane = h * w;
  // a Uint8ClampedArray clamps and rounds on store (NaN becomes 0)
  const out = new Uint8ClampedArray(3 * plane);
  const base = index * 3 * plane;
  for (let i = 0; i < plane; i++) for (let k = 0; k < 3; k++) out[3 * i + k] = data[base + k * plane + i] * 255;
  return new Uint8Array(out.buffer);
}
