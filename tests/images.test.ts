/**
 * Image loading and saving. Every input is generated here with sharp (or, for headers sharp
 * will not write, by hand), so no binary test files are committed.
 */
import * as fs from 'fs';
import * as path from 'path';
import * as zlib from 'zlib';
import sharp, { type Sharp } from 'sharp';
import { HollowcError } from '../compiler/errors';
import { crc32 } from '../runtime/store/store';
import { encodePng, listImages, loadImage, loadImages, savePng } from '../runtime/formats/images';
import { tempDir } from './support/fixture';

let dir: string;
beforeAll(() => {
  dir = tempDir('hollowc-images-');
});
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

type Rgb = [number, number, number];

/** A w x h RGB(A) raw buffer filled per pixel by `colour(x, y)`. */
function raw(w: number, h: number, channels: 1 | 2 | 3 | 4, colour: (x: number, y: number) => number[]): Buffer {
  const out = Buffer.alloc(w * h * channels);
  for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) out.set(colour(x, y), (y * w + x) * channels);
  return out;
}

async function write(name: string, img: Sharp): Promise<string> {
  const file = path.join(dir, name);
  await img.toFile(file);
  return file;
}

/** The 8-bit RGB value of pixel (x, y) of a [1, 3, h, w] tensor in [-1, 1]. */
function pixel(t: { data: Float32Array; dims: readonly number[] }, x: number, y: number): Rgb {
  const [, , h, w] = t.dims;
  const at = (c: number) => Math.round((t.data[c * h * w + y * w + x] + 1) * 127.5);
  return [at(0), at(1), at(2)];
}

const near = (a: Rgb, b: Rgb, tol: number) => a.every((v, i) => Math.abs(v - b[i]) <= tol);

/** A PNG made by hand: sharp writes no 16-bit PNG from 16-bit raw input reliably, and no lying headers. */
function handPng(width: number, height: number, bitDepth: 8 | 16, colourType: 0 | 2, rows: Buffer | null): Buffer {
  const chunk = (type: string, data: Buffer) => {
    const body = Buffer.concat([Buffer.from(type, 'ascii'), data]);
    const len = Buffer.alloc(4);
    len.writeUInt32BE(data.length);
    const crc = Buffer.alloc(4);
    crc.writeUInt32BE(crc32(body) >>> 0);
    return Buffer.concat([len, body, crc]);
  };
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(width, 0);
  ihdr.writeUInt32BE(height, 4);
  ihdr[8] = bitDepth;
  ihdr[9] = colourType;
  const parts = [Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]), chunk('IHDR', ihdr)];
  if (rows) parts.push(chunk('IDAT', zlib.deflateSync(rows)));
  parts.push(chunk('IEND', Buffer.alloc(0)));
  return Buffer.concat(parts);
}

describe('loading', () => {
  test('JPEG, PNG and WebP give [1, 3, h, w] in [-1, 1]', async () => {
    const src = raw(32, 32, 3, () => [255, 0, 0]);
    for (const [name, fmt] of [
      ['red.jpg', 'jpeg'],
      ['red.png', 'png'],
      ['red.webp', 'webp'],
    ] as const) {
      const file = await write(name, sharp(src, { raw: { width: 32, height: 32, channels: 3 } }).toFormat(fmt));
      const t = await loadImage(file, { width: 16, height: 24 });
      expect(t.dims).toEqual([1, 3, 24, 16]);
      expect(t.data.length).toBe(3 * 24 * 16);
      expect(Math.max(...t.data)).toBeLessThanOrEqual(1);
      expect(Math.min(...t.data)).toBeGreaterThanOrEqual(-1);
      expect(near(pixel(t, 8, 12), [255, 0, 0], fmt === 'png' ? 0 : 12)).toBe(true);
    }
  });

  test('centre crop keeps the middle band', async () => {
    // 60x20: red | green | blue bands of 20 px; a 20x20 crop is the green band
    const src = raw(60, 20, 3, (x) => (x < 20 ? [255, 0, 0] : x < 40 ? [0, 255, 0] : [0, 0, 255]));
    const file = await write('bands.png', sharp(src, { raw: { width: 60, height: 20, channels: 3 } }).png());
    const t = await loadImage(file, { width: 10, height: 10 });
    for (const x of [1, 5, 8]) expect(near(pixel(t, x, 5), [0, 255, 0], 20)).toBe(true);
  });

  test('EXIF orientation is applied', async () => {
    // stored 40x20, left red, right blue, EXIF 6 (display rotated 90 degrees clockwise): shown 20x40, red on top
    const src = raw(40, 20, 3, (x) => (x < 20 ? [255, 0, 0] : [0, 0, 255]));
    const file = await write(
      'rotated.jpg',
      sharp(src, { raw: { width: 40, height: 20, channels: 3 } })
        .jpeg({ quality: 95 })
        .withMetadata({ orientation: 6 }),
    );
    const t = await loadImage(file, { width: 20, height: 40 });
    expect(near(pixel(t, 2, 2), [255, 0, 0], 30)).toBe(true);
    expect(near(pixel(t, 2, 37), [0, 0, 255], 30)).toBe(true);
  });

  test('alpha is composited onto white (or the given background)', async () => {
    const src = raw(16, 16, 4, (x) => (x < 8 ? [255, 0, 0, 0] : [0, 0, 255, 255]));
    const file = await write('alpha.png', sharp(src, { raw: { width: 16, height: 16, channels: 4 } }).png());
    const t = await loadImage(file, { width: 16, height: 16 });
    expect(pixel(t, 2, 8)).toEqual([255, 255, 255]);
    expect(pixel(t, 13, 8)).toEqual([0, 0, 255]);
    const black = await loadImage(file, { width: 16, height: 16, background: { r: 0, g: 0, b: 0 } });
    expect(pixel(black, 2, 8)).toEqual([0, 0, 0]);
  });

  test('grayscale, grayscale + alpha, CMYK and 16-bit become 8-bit RGB', async () => {
    const grey = await write(
      'grey.png',
      sharp(
        raw(16, 16, 1, () => [64]),
        { raw: { width: 16, height: 16, channels: 1 } },
      )
        .toColourspace('b-w')
        .png(),
    );
    expect((await sharp(grey).metadata()).channels).toBe(1);
    expect(pixel(await loadImage(grey, { width: 16, height: 16 }), 4, 4)).toEqual([64, 64, 64]);

    const greyAlpha = await write(
      'grey-alpha.png',
      sharp(
        raw(16, 16, 2, () => [0, 0]),
        { raw: { width: 16, height: 16, channels: 2 } },
      ).png(),
    );
    expect(pixel(await loadImage(greyAlpha, { width: 16, height: 16 }), 4, 4)).toEqual([255, 255, 255]);

    const rgb = raw(16, 16, 3, () => [200, 50, 20]);
    const cmyk = await write(
      'cmyk.jpg',
      sharp(rgb, { raw: { width: 16, height: 16, channels: 3 } })
        .toColourspace('cmyk')
        .jpeg({ quality: 100 }),
    );
    expect((await sharp(cmyk).metadata()).space).toBe('cmyk');
    expect(near(pixel(await loadImage(cmyk, { width: 16, height: 16 }), 8, 8), [200, 50, 20], 30)).toBe(true);

    // 16-bit RGB: high bytes 0xc0 / 0x40 / 0x10; read as 8-bit without conversion, the low bytes (0xff) would show
    const rows = Buffer.alloc(16 * (1 + 16 * 6));
    for (let y = 0; y < 16; y++) {
      const row = y * (1 + 16 * 6);
      for (let x = 0; x < 16; x++) Buffer.from([0xc0, 0xff, 0x40, 0xff, 0x10, 0xff]).copy(rows, row + 1 + x * 6);
    }
    const deep = path.join(dir, 'deep.png');
    fs.writeFileSync(deep, handPng(16, 16, 16, 2, rows));
    expect((await sharp(deep).metadata()).depth).toBe('ushort');
    expect(near(pixel(await loadImage(deep, { width: 16, height: 16 }), 3, 3), [0xc1, 0x41, 0x11], 1)).toBe(true);
  });

  test('a batch stacks images', async () => {
    const a = await write(
      'a.png',
      sharp(
        raw(16, 16, 3, () => [0, 0, 0]),
        { raw: { width: 16, height: 16, channels: 3 } },
      ).png(),
    );
    const b = await write(
      'b.png',
      sharp(
        raw(16, 16, 3, () => [255, 255, 255]),
        { raw: { width: 16, height: 16, channels: 3 } },
      ).png(),
    );
    const t = await loadImages([a, b], { width: 8, height: 8 });
    expect(t.dims).toEqual([2, 3, 8, 8]);
    expect(t.data[0]).toBe(-1);
    expect(t.data[3 * 64]).toBe(1);
  });
});

describe('refusals', () => {
  const refuses = async (p: Promise<unknown>, file: string, text: string) => {
    const e = await p.then(
      () => undefined,
      (err: unknown) => err,
    );
    expect(e).toBeInstanceOf(HollowcError);
    const message = (e as Error).message;
    expect(message).not.toContain('\n');
    expect(message).toContain(file);
    expect(message).toContain(text);
  };

  test('a header over the pixel cap is refused before decoding', async () => {
    const bomb = path.join(dir, 'bomb.png');
    // 30000 x 30000 claimed, 64 bytes of pixel data: decoding would fail, the header check comes first
    fs.writeFileSync(bomb, handPng(30000, 30000, 8, 2, Buffer.alloc(64)));
    await refuses(loadImage(bomb, { width: 64, height: 64 }), bomb, 'over the limit of 400000000');
    const big = await write(
      'big.png',
      sharp(
        raw(300, 300, 3, () => [9, 9, 9]),
        { raw: { width: 300, height: 300, channels: 3 } },
      ).png(),
    );
    await refuses(loadImage(big, { width: 64, height: 64, maxPixels: 200 * 200 }), big, '300x300');
  });

  test('tiny, empty, broken and unsupported files', async () => {
    const tiny = await write(
      'tiny.png',
      sharp(
        raw(1, 1, 3, () => [1, 2, 3]),
        { raw: { width: 1, height: 1, channels: 3 } },
      ).png(),
    );
    await refuses(loadImage(tiny, { width: 64, height: 64 }), tiny, 'too small');
    const empty = path.join(dir, 'empty.jpg');
    fs.writeFileSync(empty, '');
    await refuses(loadImage(empty, { width: 64, height: 64 }), empty, 'empty');
    const broken = path.join(dir, 'broken.png');
    fs.writeFileSync(broken, 'this is not a picture');
    await refuses(loadImage(broken, { width: 64, height: 64 }), broken, 'not a decodable image');
    const truncated = path.join(dir, 'truncated.jpg');
    const jpeg = await sharp(
      raw(64, 64, 3, (x, y) => [x * 4, y * 4, 0]),
      { raw: { width: 64, height: 64, channels: 3 } },
    )
      .jpeg()
      .toBuffer();
    fs.writeFileSync(truncated, jpeg.subarray(0, jpeg.length >> 1));
    await refuses(loadImage(truncated, { width: 64, height: 64 }), truncated, 'not a decodable image');
    const tiff = await write(
      'photo.tiff',
      sharp(
        raw(16, 16, 3, () => [1, 2, 3]),
        { raw: { width: 16, height: 16, channels: 3 } },
      ).tiff(),
    );
    await refuses(loadImage(tiff, { width: 64, height: 64 }), tiff, 'format tiff is not supported');
    const missing = path.join(dir, 'missing.png');
    await refuses(loadImage(missing, { width: 64, height: 64 }), missing, 'ENOENT');
  });
});

describe('saving and listing', () => {
  test('PNG out round-trips [0, 1] NCHW (clamped)', async () => {
    const h = 4;
    const w = 5;
    const data = new Float32Array(2 * 3 * h * w);
    for (let i = 0; i < data.length; i++) data[i] = ((i * 37) % 101) / 100;
    data[0] = -3; // clamps to 0
    data[1] = 7; // clamps to 1
    const file = path.join(dir, 'out.png');
    await savePng(file, data, [2, 3, h, w], 1);
    const back = await sharp(file).raw().toBuffer({ resolveWithObject: true });
    expect([back.info.width, back.info.height, back.info.channels]).toEqual([w, h, 3]);
    for (let c = 0; c < 3; c++) {
      for (let i = 0; i < h * w; i++) expect(back.data[3 * i + c]).toBe(Math.round(data[3 * h * w + c * h * w + i] * 255));
    }
    const first = await sharp(await encodePng(data, [2, 3, h, w], 0))
      .raw()
      .toBuffer();
    expect([first[0], first[3]]).toEqual([0, 255]);
    await expect(encodePng(data, [2, 4, h, w])).rejects.toThrow('[N, 3, H, W]');
  });

  test('listImages: sorted images only; none is an error naming the folder', async () => {
    const folder = path.join(dir, 'list');
    fs.mkdirSync(folder);
    for (const name of ['b.PNG', 'a.jpg', 'c.webp', 'notes.txt', '.hidden.png', 'd.jpeg']) fs.writeFileSync(path.join(folder, name), 'x');
    fs.mkdirSync(path.join(folder, 'sub.png'));
    expect(listImages(folder).map((f) => path.basename(f))).toEqual(['a.jpg', 'b.PNG', 'c.webp', 'd.jpeg']);
    const none = path.join(dir, 'none');
    fs.mkdirSync(none);
    fs.writeFileSync(path.join(none, 'readme.md'), 'x');
    expect(() => listImages(none)).toThrow(HollowcError);
    expect(() => listImages(none)).toThrow(`${none}: no images`);
    expect(() => listImages(path.join(dir, 'absent'))).toThrow('ENOENT');
  });
});
