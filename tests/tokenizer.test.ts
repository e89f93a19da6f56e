/**
 * CLIP tokenization: tokenizer folders written from the real BPE file give the ids the Hub's
 * CLIPTokenizer gives, pad with the folder's own pad token, truncate to BOS + 75 + EOS, and the
 * two folder layouts (vocab.json + merges.txt, tokenizer.json) agree.
 */
import * as fs from 'fs';
import * as path from 'path';
import { HollowcError } from '../compiler/errors';
import { CLIP_MERGES, CLIP_VOCAB_SIZE } from '../models/clip-bpe';
import { writeTokenizerFolder } from '../models/tokenizer-folder';
import { ClipTokenizer, loadTokenizer } from '../runtime/text-to-image/tokenizer';
import { tempDir } from './support/fixture';

const BOS = 49406;
const EOS = 49407;

let root: string;
let sd15: ClipTokenizer; // pads with <|endoftext|>
let sd21: ClipTokenizer; // pads with "!"
let sd15Dir: string;
let fastDir: string;

beforeAll(() => {
  root = tempDir('hollowc-tokenizer-');
  sd15Dir = path.join(root, 'sd15');
  fastDir = path.join(root, 'fast');
  writeTokenizerFolder(sd15Dir, { padToken: '<|endoftext|>' });
  writeTokenizerFolder(path.join(root, 'sd21'), { padToken: '!' });
  writeTokenizerFolder(fastDir, { padToken: '<|endoftext|>', tokenizerJson: true });
  // a folder with only tokenizer.json (+ config): nothing to fall back on
  fs.rmSync(path.join(fastDir, 'vocab.json'));
  fs.rmSync(path.join(fastDir, 'merges.txt'));
  sd15 = loadTokenizer(sd15Dir);
  sd21 = loadTokenizer(path.join(root, 'sd21'));
});

afterAll(() => fs.rmSync(root, { recursive: true, force: true }));

const text = (t: ClipTokenizer, s: string) => {
  const ids = t.encode(s).inputIds;
  return ids.slice(1, ids.indexOf(EOS, 1));
};

describe('folder layout', () => {
  test('vocab.json and merges.txt as CLIPTokenizer saves them', () => {
    const vocab = JSON.parse(fs.readFileSync(path.join(sd15Dir, 'vocab.json'), 'utf8')) as Record<string, number>;
    expect(Object.keys(vocab)).toHaveLength(CLIP_VOCAB_SIZE);
    expect(CLIP_VOCAB_SIZE).toBe(49408);
    expect(vocab['!']).toBe(0);
    expect(vocab['a</w>']).toBe(320);
    expect(vocab['in']).toBe(512); // first merge "i n"
    expect(vocab['<|startoftext|>']).toBe(BOS);
    expect(vocab['<|endoftext|>']).toBe(EOS);
    expect(new Set(Object.values(vocab)).size).toBe(CLIP_VOCAB_SIZE);
    const merges = fs.readFileSync(path.join(sd15Dir, 'merges.txt'), 'utf8').split('\n');
    expect(merges[0]).toBe('#version: 0.2');
    expect(merges[1]).toBe('i n');
    expect(merges.filter((l) => l.length > 0)).toHaveLength(CLIP_MERGES + 1);
    const config = JSON.parse(fs.readFileSync(path.join(sd15Dir, 'tokenizer_config.json'), 'utf8'));
    expect(config).toMatchObject({ model_max_length: 77, pad_token: '<|endoftext|>', tokenizer_class: 'CLIPTokenizer' });
  });
});

describe('ids', () => {
  test('known prompts', () => {
    expect(sd15.encode('a photo of a cat').inputIds.slice(0, 8)).toEqual([BOS, 320, 1125, 539, 320, 2368, EOS, EOS]);
    expect(text(sd15, 'sks')).toEqual([48136]);
    expect(text(sd15, 'a photo of sks dog')).toEqual([320, 1125, 539, 48136, 1929]);
  });

  test('padding uses the folder pad token', () => {
    const a = sd15.encode('a photo of a cat');
    const b = sd21.encode('a photo of a cat');
    expect(a.inputIds).toHaveLength(77);
    expect(b.inputIds).toHaveLength(77);
    expect(sd15.padTokenId).toBe(EOS);
    expect(sd21.padTokenId).toBe(0);
    expect(a.inputIds.slice(7)).toEqual(new Array(70).fill(EOS));
    expect(b.inputIds.slice(0, 7)).toEqual([BOS, 320, 1125, 539, 320, 2368, EOS]);
    expect(b.inputIds.slice(7)).toEqual(new Array(70).fill(0));
    expect(a.attentionMask.reduce((x, y) => x + y, 0)).toBe(7);
    expect(a.truncated).toBe(false);
  });

  test('empty prompt is BOS EOS pad', () => {
    expect(sd21.encode('').inputIds.slice(0, 3)).toEqual([BOS, EOS, 0]);
  });

  test('long prompts are cut to BOS + 75 + EOS', () => {
    const long = sd15.encode(Array(100).fill('cat').join(' '));
    expect(long.inputIds).toHaveLength(77);
    expect(long.inputIds[0]).toBe(BOS);
    expect(long.inputIds.slice(1, 76)).toEqual(new Array(75).fill(2368));
    expect(long.inputIds[76]).toBe(EOS);
    expect(long.truncated).toBe(true);
    const exact = sd21.encode(Array(75).fill('cat').join(' '));
    expect(exact.truncated).toBe(false);
    expect(exact.inputIds[76]).toBe(EOS);
    expect(sd21.encode(Array(76).fill('cat').join(' ')).truncated).toBe(true);
  });

  test('uppercase and whitespace runs normalise away', () => {
    const ref = text(sd15, 'a photo of a cat');
    expect(text(sd15, 'A PHOTO Of a CaT')).toEqual(ref);
    expect(text(sd15, '  a \t photo\n\nof   a cat ')).toEqual(ref);
  });

  test('punctuation and contractions split as CLIP does', () => {
    expect(sd15.tokenize("don't stop!!")).toEqual(['don</w>', "'t</w>", 'stop</w>', '!!</w>']);
    expect(sd15.tokenize('3.14')).toEqual(['3</w>', '.</w>', '1</w>', '4</w>']);
    expect(sd15.tokenize('red,blue')).toEqual(['red</w>', ',</w>', 'blue</w>']);
  });

  test('unicode: NFC, byte fallback for anything else', () => {
    expect(text(sd15, 'cafe\u0301')).toEqual(text(sd15, 'caf\u00e9'));
    const emoji = sd15.tokenize('🐱 東京');
    expect(emoji.length).toBeGreaterThan(1);
    const ids = text(sd15, '🐱 東京');
    expect(ids.every((id) => id >= 0 && id < BOS)).toBe(true);
    // the byte-level symbols of U+1F431 (f0 9f 90 b1) end the first word
    expect(emoji[0].endsWith('</w>')).toBe(true);
  });

  test('special tokens typed in the prompt stay special', () => {
    expect(text(sd15, 'x<|endoftext|>y').length).toBe(1);
    expect(sd15.encode('x<|endoftext|>y').inputIds.slice(0, 5)).toEqual([BOS, 343, EOS, 344, EOS]);
  });

  test('tokenizer.json folder and vocab.json folder agree', () => {
    const fast = loadTokenizer(fastDir);
    const prompts = [
      'a photo of sks dog',
      'CAFÉ 東京 🐱!!',
      "it's 3:45pm, ok?",
      '  tabs\tand\nnewlines  ',
      Array(90).fill('x').join(' '),
      '',
    ];
    for (const p of prompts) expect(fast.encode(p).inputIds).toEqual(sd15.encode(p).inputIds);
  });

  test('batch encoding is int64 row-major', () => {
    const batch = sd21.encodeBatch(['a', 'cat']);
    expect(batch).toBeInstanceOf(BigInt64Array);
    expect(batch.length).toBe(154);
    expect(Number(batch[77 + 1])).toBe(2368);
    expect(Number(batch[1])).toBe(320);
  });
});

describe('bad folders', () => {
  const oneLine = (fn: () => unknown): HollowcError => {
    try {
      fn();
    } catch (e) {
      expect(e).toBeInstanceOf(HollowcError);
      expect((e as Error).message).not.toContain('\n');
      return e as HollowcError;
    }
    throw new Error('expected a HollowcError');
  };

  test('no vocab.json names the folder', () => {
    const dir = path.join(root, 'empty');
    fs.mkdirSync(dir);
    fs.writeFileSync(path.join(dir, 'merges.txt'), '#version: 0.2\n');
    const e = oneLine(() => loadTokenizer(dir));
    expect(e.message).toContain(dir);
    expect(e.message).toContain('vocab.json');
  });

  test('missing folder, broken JSON, unknown pad token', () => {
    expect(oneLine(() => loadTokenizer(path.join(root, 'nope'))).message).toContain('not found');
    const dir = path.join(root, 'broken');
    writeTokenizerFolder(dir, { padToken: '!' });
    fs.writeFileSync(path.join(dir, 'tokenizer_config.json'), '{"pad_token": ');
    expect(oneLine(() => loadTokenizer(dir)).message).toContain('tokenizer_config.json is not valid JSON');
    fs.writeFileSync(path.join(dir, 'tokenizer_config.json'), '{"pad_token": "<pad>"}');
    expect(oneLine(() => loadTokenizer(dir)).message).toContain('pad token "<pad>"');
  });
});
