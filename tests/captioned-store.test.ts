/**
 * A captioned set in the store (runtime/store/training-data.ts captionedTrainingData, precompute's
 * captions): what training a model from scratch needs, each latent with its own caption. Checked on
 * a `hollow none` compile of the tiny SD 1.5 with `train base "*"`: every record names its sample's
 * caption or, at the dropout rate, the empty one; the store keeps each caption's conditioning once,
 * by text; training reads them; bad captioned sets are refused naming what is wrong.
 */
import * as fs from 'fs';
import * as path from 'path';
import { compileSpec } from '../cli/api/compile-spec';
import { checkSpecFile } from '../cli/api/spec';
import { loadUNet } from '../cli/api/unet';
import { buildUNet } from '../models/builder';
import { FAMILIES } from '../models/families';
import { Rng, fillNormal } from '../models/random';
import type { Conditioning } from '../runtime/sampling/conditioning';
import { FIRST_CAPTION_COND, precompute } from '../runtime/store/precompute';
import { Store } from '../runtime/store/store';
import { Captions, Latent, captionedTrainingData } from '../runtime/store/training-data';
import { train } from '../runtime/train/train';
import { tempDir } from './support/fixture';

const v = FAMILIES.sd15.tiny;
const [tokens, width] = v.shapes.encoder_hidden_states.slice(1);

function conditioning(seed: number): Conditioning {
  const data = new Float32Array(tokens * width);
  fillNormal(new Rng(seed, 'caption'), data, 1);
  return { encoderHiddenStates: { shape: [tokens, width], data } };
}

function latents(n: number): Latent[] {
  return Array.from({ length: n }, (_, i) => {
    const data = new Float32Array(v.shapes.sample.slice(1).reduce((a, b) => a * b, 1));
    fillNormal(new Rng(i, 'latent'), data, 1);
    return { name: `scene ${i}`, file: 'world', shape: v.shapes.sample.slice(1), data };
  });
}

const TEXTS = ['a red star on a blue background', 'a small green ring on a white background', 'a large black cross on a cyan background', ''];
const captions = (ofSample: number[], rate = 0.25): Captions => ({
  table: TEXTS.map((_, k) => conditioning(k)),
  texts: TEXTS,
  ofSample,
  dropout: { index: 3, rate },
});

test('a captioned set is checked: one index per latent, in the table, a dropout rate below 1', () => {
  expect(() => captionedTrainingData(latents(3), captions([0, 1]), 'world')).toThrow('3 latents but 2 caption indices');
  expect(() => captionedTrainingData(latents(2), captions([0, 7]), 'world')).toThrow('caption index 7 is outside the 4 captions');
  expect(() => captionedTrainingData(latents(2), captions([0, 1], 1), 'world')).toThrow('the caption dropout rate must be in [0, 1), got 1');
  const a = captionedTrainingData(latents(2), captions([0, 1]), 'world');
  expect(captionedTrainingData(latents(2), captions([0, 1]), 'world').fingerprint).toBe(a.fingerprint);
  expect(captionedTrainingData(latents(2), captions([1, 0]), 'world').fingerprint).not.toBe(a.fingerprint);
  expect(captionedTrainingData(latents(2), captions([0, 1], 0.5), 'world').fingerprint).not.toBe(a.fingerprint);
});

describe('precompute and train on a captioned set (tiny SD 1.5, hollow none, train base "*")', () => {
  let out: string;
  const ofSample = Array.from({ length: 12 }, (_, i) => i % 3);
  beforeAll(async () => {
    const dir = tempDir('hollowc-captioned-');
    const file = (await buildUNet(v.config, { outDir: path.join(dir, 'model'), seed: 3 })).file;
    const spec = path.join(dir, 'scratch.hollow');
    fs.writeFileSync(
      spec,
      [
        'model sd15',
        'hollow none',
        `shape sample [2, ${v.shapes.sample.slice(1).join(', ')}]`,
        'shape timestep [2]',
        `shape encoder_hidden_states [2, ${tokens}, ${width}]`,
        'train base "*"',
        'loss mse epsilon',
        'optimizer adamw lr 1e-3 weight_decay 0',
        'emit grads',
        '',
      ].join('\n'),
    );
    out = path.join(dir, 'out');
    const unet = loadUNet(file);
    compileSpec(unet, checkSpecFile(unet, spec), { out });
    await precompute({ out, data: captionedTrainingData(latents(12), captions(ofSample), 'world'), count: 200 });
  }, 300_000);

  test('each record trains on its sample’s caption, or on the empty one at about the dropout rate', () => {
    const { store } = Store.open(path.join(out, 'store'), { readOnly: true });
    try {
      expect(store.header.conditionings.filter((c) => c.role === 'caption').map((c) => c.source)).toEqual(TEXTS);
      let dropped = 0;
      for (let i = 0; i < store.count; i++) {
        const r = store.read(i);
        expect(r.sampleId).toBe(i % 12);
        if (r.condId === FIRST_CAPTION_COND + 3) dropped++;
        else expect(r.condId).toBe(FIRST_CAPTION_COND + ofSample[r.sampleId]);
      }
      // 200 draws at 0.25: 50 expected, sd 6.1
      expect(dropped).toBeGreaterThan(30);
      expect(dropped).toBeLessThan(70);
      const table = captions(ofSample).table;
      TEXTS.forEach((_, k) => expect(store.conditioning(FIRST_CAPTION_COND + k).encoderHiddenStates.data).toEqual(table[k].encoderHiddenStates.data));
    } finally {
      store.close();
    }
  });

  test('training from the random init lowers the loss', async () => {
    const r = await train({ out, steps: 30 });
    const losses = r.losses.map((l) => l.loss);
    const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
    expect(mean(losses.slice(-10))).toBeLessThan(0.9 * mean(losses.slice(0, 10)));
  }, 300_000);
});
