/**
 * `hollowc encode` and `hollowc decode` on a tiny builder pipeline: encode gives the latents of
 * personalize's photos stage bit for bit, decode gives the PNG `generate` writes for the same
 * latents, encode's folder (with `embed`'s prompts) is a data folder precompute takes as it is,
 * and bad input is one line with nothing written.
 */
import * as crypto from 'crypto';
import * as fs from 'fs';
import * as path from 'path';
import sharp from 'sharp';
import { drawDemoPhotos } from '../cli/demo';
import { buildPipeline } from '../models/builder/pipeline';
import { readNpy, writeNpy } from '../runtime/formats/npy';
import { StageKeys } from '../runtime/personalize/keys';
import { runFolder } from '../runtime/personalize/run-folder';
import { resolveSettings } from '../runtime/personalize/settings';
import { photosStage } from '../runtime/personalize/stages/photos';
import { Store } from '../runtime/store/store';
import { runCli } from './support/cli';
import { tempDir } from './support/fixture';

jest.setTimeout(240_000);
const root = tempDir('hollowc-encode-decode-');
const pipe = path.join(root, 'pipe');
const photos = path.join(root, 'photos');

beforeAll(async () => {
  await buildPipeline('sd15', 'tiny', pipe, { seed: 0 });
  await drawDemoPhotos(photos, 3, 48); // not square at the size asked for: resize and crop both matter
  // one photo of another aspect ratio: the centre crop takes a part of it
  await sharp(path.join(photos, fs.readdirSync(photos)[0]))
    .resize(80, 48, { fit: 'fill' })
    .png()
    .toFile(path.join(photos, 'wide.png'));
});

/** The latents personalize's photos stage writes to run/data/latents/ for these settings. */
async function personalizeLatents(name: string, o: { resolution?: number; seed?: number; flip?: boolean }): Promise<Buffer[]> {
  const out = path.join(root, name);
  const s = await resolveSettings(
    { model: pipe, photos, prompt: 'a photo of sks face', classPrompt: 'a photo of a face', out, ...o },
    () => undefined,
  );
  const dirs = runFolder(out);
  const stage = photosStage({
    s,
    dirs,
    keys: { photos: 'test' } as StageKeys,
    progress: { write: () => true },
    compile: () => {
      throw new Error('not used');
    },
    exportUnet: () => {
      throw new Error('not used');
    },
    findings: {},
  });
  await (stage.run as () => Promise<unknown>)(); // the photos stage reads none of the runner's arguments
  const dir = path.join(dirs.data, 'latents');
  return fs
    .readdirSync(dir)
    .sort((a, b) => parseInt(a) - parseInt(b))
    .map((f) => fs.readFileSync(path.join(dir, f)));
}

const files = (dir: string) =>
  fs
    .readdirSync(dir)
    .sort((a, b) => parseInt(a) - parseInt(b))
    .map((f) => fs.readFileSync(path.join(dir, f)));

const encodeCases: [string, string[], { resolution?: number; seed?: number; flip?: boolean }][] = [
  ['defaults', [], {}],
  ['--resolution 64 --seed 5 --flip', ['--resolution', '64', '--seed', '5', '--flip'], { resolution: 64, seed: 5, flip: true }],
];
test.each(encodeCases)('encode %s: the latents of personalize (photos stage) bit for bit', async (name, flags, settings) => {
  const out = path.join(root, `encoded-${name.replace(/\W+/g, '')}`);
  const r = await runCli(['encode', photos, '--model', pipe, '-o', out, ...flags]);
  expect(r.stderr).not.toContain('error');
  expect(r.code).toBe(0);
  const want = await personalizeLatents(`run-${name.replace(/\W+/g, '')}`, settings);
  expect(want.length).toBe(settings.flip ? 8 : 4);
  const got = files(out);
  expect(got.length).toBe(want.length);
  got.forEach((bytes, i) => expect(bytes.equals(want[i])).toBe(true));
  // and the values are the VAE's, not zeros
  expect(readNpy(path.join(out, '0.npy')).data.some((v) => v !== 0)).toBe(true);
  expect(r.stdout).toContain(`latents [${want.length}, 4,`);
});

test('encode to a .npy file: one batch [N, C, h, w] with the same values as the folder', async () => {
  const folder = path.join(root, 'enc-folder');
  const file = path.join(root, 'enc-batch', 'latents.npy');
  expect((await runCli(['encode', photos, '--model', pipe, '-o', folder, '--resolution', '64'])).code).toBe(0);
  expect((await runCli(['encode', photos, '--model', pipe, '-o', file, '--resolution', '64'])).code).toBe(0);
  const batch = readNpy(file);
  expect(batch.shape.slice(0, 2)).toEqual([4, 4]);
  const per = batch.data.length / 4;
  for (let i = 0; i < 4; i++) {
    const one = readNpy(path.join(folder, `${i}.npy`));
    expect(
      Buffer.from((one.data as Float32Array).buffer).equals(Buffer.from((batch.data as Float32Array).slice(i * per, (i + 1) * per).buffer)),
    ).toBe(true);
  }
});

/** RGB bytes of a PNG. */
const pixels = async (file: string) => (await sharp(file).raw().toBuffer()).toString('hex');

test("decode: the PNG generate writes for the latents it wrote, pixel for pixel, from generate's --latents-out and from a folder", async () => {
  const gen = path.join(root, 'gen', 'g.png');
  const latents = path.join(root, 'gen', 'z.npy');
  const g = await runCli([
    'generate',
    '--model',
    pipe,
    '--prompt',
    'a photo of a face',
    '--steps',
    '2',
    '--num-images',
    '2',
    '--seed',
    '3',
    '-o',
    gen,
    '--latents-out',
    latents,
  ]);
  expect(g.stderr).not.toContain('error');
  expect(g.code).toBe(0);
  const dec = path.join(root, 'dec', 'd.png');
  const r = await runCli(['decode', latents, '--model', pipe, '-o', dec]);
  expect(r.code).toBe(0);
  for (const i of [0, 1]) {
    const want = await pixels(path.join(root, 'gen', `g-${i}.png`));
    expect(await pixels(path.join(root, 'dec', `d-${i}.png`))).toBe(want);
    expect(new Set(want.match(/../g)).size).toBeGreaterThan(1); // an image, not one flat colour
  }
  // the same latents as a folder of .npy (a data folder's latents/): the same images
  const z = readNpy(latents);
  const folder = path.join(root, 'dec-in');
  fs.mkdirSync(folder);
  const per = z.data.length / 2;
  for (const i of [0, 1])
    writeNpy(path.join(folder, `${i}.npy`), {
      dtype: 'float32',
      shape: z.shape.slice(1),
      data: (z.data as Float32Array).slice(i * per, (i + 1) * per),
    });
  expect((await runCli(['decode', folder, '--model', pipe, '-o', path.join(root, 'dec2', 'e.png')])).code).toBe(0);
  for (const i of [0, 1])
    expect(await pixels(path.join(root, 'dec2', `e-${i}.png`))).toBe(await pixels(path.join(root, 'gen', `g-${i}.png`)));
});

test('photos -> encode + embed -> a data folder that precompute takes as it is', async () => {
  const data = path.join(root, 'data');
  expect((await runCli(['encode', photos, '--model', pipe, '-o', path.join(data, 'latents'), '--resolution', '64'])).code).toBe(0);
  for (const [prompt, file] of [
    ['a photo of sks face', 'instance_prompt.npy'],
    ['a photo of a face', 'class_prompt.npy'],
  ])
    expect((await runCli(['embed', '--model', pipe, '--prompt', prompt, '-o', path.join(data, file)])).code).toBe(0);
  const latent = readNpy(path.join(data, 'latents', '0.npy')).shape;
  const [, tokens, width] = readNpy(path.join(data, 'instance_prompt.npy')).shape;
  const spec = path.join(root, 'round-trip.hollow');
  fs.writeFileSync(
    spec,
    [
      'model sd15',
      'hollow preset "39.2%"',
      `shape sample [1, ${latent.join(', ')}]`,
      `shape encoder_hidden_states [1, ${tokens}, ${width}]`,
      'lora rank 2',
      'lora targets "attn1.to_q"',
      'emit precompute infer',
      '',
    ].join('\n'),
  );
  const out = path.join(root, 'compiled');
  const c = await runCli(['compile', path.join(pipe, 'unet', 'model.onnx'), spec, '-o', out]);
  expect(c.stderr).not.toContain('error');
  expect(c.code).toBe(0);
  const p = await runCli(['precompute', out, '--data', data, '--count', '6']);
  expect(p.stderr).not.toContain('error');
  expect(p.code).toBe(0);
  const { store } = Store.open(path.join(out, 'store'), { readOnly: true });
  try {
    store.verify();
    expect(store.count).toBe(6);
    expect(store.header.latentShape).toEqual(latent);
    expect(store.header.instanceSamples).toEqual(['0.npy', '1.npy', '2.npy', '3.npy']);
  } finally {
    store.close();
  }
});

/** Every file under `dir` with its sha256, or null when `dir` does not exist. */
function snapshot(dir: string): Record<string, string> | null {
  if (!fs.existsSync(dir)) return null;
  const out: Record<string, string> = {};
  for (const f of fs.readdirSync(dir, { recursive: true }) as string[]) {
    const p = path.join(dir, f);
    if (fs.statSync(p).isFile()) out[f] = crypto.createHash('sha256').update(fs.readFileSync(p)).digest('hex');
  }
  return out;
}

describe('bad input: one line naming the file, exit 1, nothing written', () => {
  const bad = (name: string) => path.join(root, 'bad', name);
  const write = (name: string, content: string | Buffer) => {
    const file = bad(name);
    fs.mkdirSync(path.dirname(file), { recursive: true });
    fs.writeFileSync(file, content);
    return file;
  };
  /** The pipeline without one component. */
  const pipeWithout = (component: string) => {
    const dir = bad(`pipe-without-${component}`);
    fs.cpSync(pipe, dir, { recursive: true });
    fs.rmSync(path.join(dir, component), { recursive: true });
    return dir;
  };
  const latentsOf = (name: string, shapes: number[][]) => {
    const dir = bad(name);
    fs.mkdirSync(dir, { recursive: true });
    shapes.forEach((s, i) =>
      writeNpy(path.join(dir, `${i}.npy`), { dtype: 'float32', shape: s, data: new Float32Array(s.reduce((a, b) => a * b, 1)) }),
    );
    return dir;
  };
  const newOut = (name: string) => bad(`out-${name}`);
  const cases: [string, () => string[], string | RegExp, string][] = [
    [
      'encode: a file that is not an image',
      () => {
        const dir = bad('not-images');
        fs.cpSync(photos, dir, { recursive: true });
        write('not-images/zz.png', 'hello');
        return ['encode', dir, '--model', pipe, '-o', newOut('not-image')];
      },
      /zz\.png: not a decodable image/,
      newOut('not-image'),
    ],
    [
      'encode: an output folder that holds latents already',
      () => {
        write('held/0.npy', 'x');
        return ['encode', photos, '--model', pipe, '-o', bad('held')];
      },
      /held: already holds 1 file/,
      bad('held'),
    ],
    [
      'encode: a size the VAE cannot take',
      () => ['encode', photos, '--model', pipe, '-o', newOut('size'), '--resolution', '30'],
      '--resolution 30: the UNet takes latent sides that are multiples of 8 (images: multiples of 64); nearest: 64',
      newOut('size'),
    ],
    [
      // the VAE would take 96 (12x12 latents), the UNet's up path would not: refused before encoding
      'encode: a size the UNet cannot train on',
      () => ['encode', photos, '--model', pipe, '-o', newOut('size96'), '--resolution', '96'],
      '--resolution 96: the UNet takes latent sides that are multiples of 8 (images: multiples of 64); nearest: 64 or 128',
      newOut('size96'),
    ],
    [
      'encode: a pipeline folder without its VAE encoder',
      () => ['encode', photos, '--model', pipeWithout('vae_encoder'), '-o', newOut('vae')],
      /pipe-without-vae_encoder: pipeline folder has no vae_encoder\/model\.onnx/,
      newOut('vae'),
    ],
    [
      'encode: no images there',
      () => ['encode', bad('nothing-here'), '--model', pipe, '-o', newOut('none')],
      /nothing-here: no such image file or folder/,
      newOut('none'),
    ],
    [
      'decode: latents of another channel count',
      () => ['decode', latentsOf('three-channels', [[3, 4, 4]]), '--model', pipe, '-o', path.join(newOut('channels'), 'x.png')],
      /three-channels\/0\.npy: latents are \[3, 4, 4\]: this VAE decodes 4 channels, found 3/,
      newOut('channels'),
    ],
    [
      'decode: a folder of latents of two sizes',
      () => [
        'decode',
        latentsOf('two-sizes', [
          [4, 4, 4],
          [4, 8, 8],
        ]),
        '--model',
        pipe,
        '-o',
        path.join(newOut('sizes'), 'x.png'),
      ],
      /two-sizes\/1\.npy: latent 1\.npy is \[4, 8, 8\], the first \[4, 4, 4\]/,
      newOut('sizes'),
    ],
    [
      'decode: an image given as latents',
      () => ['decode', path.join(photos, 'wide.png'), '--model', pipe, '-o', path.join(newOut('image'), 'x.png')],
      /wide\.png: is an image, not a latent: turn images into latents with hollowc encode/,
      newOut('image'),
    ],
    [
      'decode: a pipeline folder without its VAE decoder',
      () => ['decode', latentsOf('fine', [[4, 4, 4]]), '--model', pipeWithout('vae_decoder'), '-o', path.join(newOut('dec'), 'x.png')],
      /pipeline folder has no vae_decoder\/model\.onnx/,
      newOut('dec'),
    ],
    [
      'decode: an output that is not a .png',
      () => ['decode', latentsOf('fine2', [[4, 4, 4]]), '--model', pipe, '-o', path.join(newOut('ext'), 'x.jpg')],
      /x\.jpg: the output must be a \.png file/,
      newOut('ext'),
    ],
  ];
  test.each(cases)('%s', async (_name, args, message, watched) => {
    const argv = args();
    const before = snapshot(watched);
    const r = await runCli(argv);
    expect({ code: r.code, stdout: r.stdout }).toEqual({ code: 1, stdout: '' });
    const lines = r.stderr.trimEnd().split('\n');
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(/^hollowc: error: /);
    if (typeof message === 'string') expect(lines[0]).toContain(message);
    else expect(lines[0]).toMatch(message);
    expect(snapshot(watched)).toEqual(before);
  });
});
