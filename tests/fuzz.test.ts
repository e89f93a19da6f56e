/**
 * Property tests (fast-check, fixed seeds, bounded runs): whatever bytes or text a user hands
 * hollowc, the readers answer with a result or a HollowcError (specs: a SpecError with a line and
 * column inside the text), never a raw exception, and quickly (no hang, no header-sized
 * allocation). A failure prints the seed and the shrunk input; rerun with the same seed.
 */
import * as fs from 'fs';
import * as path from 'path';
import fc from 'fast-check';
import { HollowcError } from '../compiler/errors';
import { buildUNet } from '../models/builder';
import { FAMILIES } from '../models/families';
import { analyzeUNet } from '../passes/lib/analyze-unet';
import { loadModel, saveModel } from '../compiler/serde';
import { checkSpec, parseSpec, SpecError } from '../dsl';
import { readNpy, writeNpy } from '../runtime/formats/npy';
import { float32Tensor, readSafetensors, writeSafetensors } from '../runtime/formats/safetensors';
import { Store } from '../runtime/store/store';
import { toySd15 } from './dsl-toy-model';
import { tempDir } from './support/fixture';
import { toyUNet } from './support/toy-unet';
import { tinyCompiled, writeData } from './runtime-fake-train';
import { precompute } from '../runtime/store/precompute';
import { loadTrainingData } from '../runtime/store/training-data';

const SEED = 20261201;
const RUNS = Number(process.env.HOLLOWC_FUZZ_RUNS ?? 1000);
/** Any one input must be answered well within this (a hang or a giant allocation shows here). */
const PER_INPUT_MS = 2000;

const VALID_SPEC = [
  'model sd15',
  'hollow preset "39.2%"',
  'shape sample [1, 4, 64, 64]',
  'lora rank 8 alpha 16',
  'lora targets "attn1.to_q" "attn2.*"',
  'lora init gaussian 0.02',
  'loss mse epsilon',
  'loss prior_weight 1.0',
  'optimizer adamw lr 1e-4 betas 0.9 0.999 eps 1e-8 weight_decay 0.01',
  'train steps 100 batch 1 checkpoint_every 50',
  'seed 7',
  'emit precompute train infer',
  '',
].join('\n');

const WORDS = [
  'model',
  'sd15',
  'sd21',
  'sdxl',
  'auto',
  'base',
  'int8',
  'recompute',
  'cheap',
  'chunks',
  'attention',
  'infer_attention',
  '4MiB',
  '1KiB',
  'hollow',
  'preset',
  'blocks',
  'after',
  'none',
  'shape',
  'sample',
  'lora',
  'rank',
  'alpha',
  'targets',
  'init',
  'gaussian',
  'from',
  'loss',
  'mse',
  'epsilon',
  'v_prediction',
  'prior_weight',
  'optimizer',
  'adamw',
  'adamw8bit',
  'lr',
  'betas',
  'eps',
  'weight_decay',
  'emit',
  'precompute',
  'train',
  'grads',
  'infer',
  'seed',
  'steps',
  'batch',
  'checkpoint_every',
  '"39.2%"',
  '"attn1.*"',
  '"up_blocks.*"',
  '3-3',
  '..',
  '6-4',
  '5-1',
  ',',
  '[',
  ']',
  '1',
  '0',
  '-1',
  '1e-4',
  '64',
  '1e400',
  'NaN',
  '#',
  '"',
  '\\',
  '%',
  '\t',
  ' ',
  '\n',
  '\r\n',
  'é',
  '\u0000',
  '\u202e',
];

/** Runs `fn` and classifies what happened; anything but a result or a HollowcError fails. */
function answered(fn: () => unknown, what: string): void {
  const started = Date.now();
  try {
    fn();
  } catch (e) {
    if (!(e instanceof HollowcError)) throw new Error(`${what}: raw ${(e as Error)?.constructor?.name}: ${(e as Error)?.message}`);
  }
  const ms = Date.now() - started;
  if (ms > PER_INPUT_MS) throw new Error(`${what}: took ${ms} ms`);
}

function specAnswered(text: string): void {
  const started = Date.now();
  try {
    checkSpec(parseSpec(text, 'fuzz.hollow'), toySd15());
  } catch (e) {
    if (!(e instanceof SpecError)) throw new Error(`raw ${(e as Error)?.constructor?.name}: ${(e as Error)?.message}`);
    const lines = text.split(/\r?\n/);
    for (const d of e.all) {
      // Every diagnostic points into the text: a real line (0 = the whole file, e.g. a missing
      // statement), a column on or just after it.
      expect(d.line).toBeGreaterThanOrEqual(0);
      expect(d.line).toBeLessThanOrEqual(Math.max(1, lines.length));
      if (d.line > 0) {
        expect(d.col).toBeGreaterThanOrEqual(1);
        expect(d.col).toBeLessThanOrEqual((lines[d.line - 1] ?? '').length + 2);
      }
    }
    // file:line:col, or file: alone for a whole-file problem (line 0: a required statement missing).
    expect(e.formatAll()).toMatch(e.line > 0 ? /^fuzz\.hollow:\d+:\d+: error: / : /^fuzz\.hollow: error: /);
  }
  expect(Date.now() - started).toBeLessThan(PER_INPUT_MS);
}

/** Byte-level mutations of a valid file: flips, overwrites, truncation, insertion, deletion. */
const mutation = (size: number) =>
  fc.oneof(
    fc.record({ kind: fc.constant('flip' as const), at: fc.nat(size - 1), bit: fc.nat(7) }),
    fc.record({ kind: fc.constant('set' as const), at: fc.nat(size - 1), bytes: fc.uint8Array({ minLength: 1, maxLength: 8 }) }),
    fc.record({ kind: fc.constant('truncate' as const), at: fc.nat(size - 1) }),
    fc.record({ kind: fc.constant('insert' as const), at: fc.nat(size - 1), bytes: fc.uint8Array({ minLength: 1, maxLength: 16 }) }),
    fc.record({ kind: fc.constant('delete' as const), at: fc.nat(size - 1), count: fc.integer({ min: 1, max: 64 }) }),
  );
type Mutation = ReturnType<typeof mutation> extends fc.Arbitrary<infer M> ? M : never;

function mutate(original: Buffer, ms: Mutation[]): Buffer {
  let b = Buffer.from(original);
  for (const m of ms) {
    const at = Math.min(m.at, Math.max(0, b.length - 1));
    if (m.kind === 'flip') b[at] ^= 1 << m.bit;
    else if (m.kind === 'set') b.set(m.bytes.subarray(0, b.length - at), at);
    else if (m.kind === 'truncate') b = b.subarray(0, at);
    else if (m.kind === 'insert') b = Buffer.concat([b.subarray(0, at), Buffer.from(m.bytes), b.subarray(at)]);
    else b = Buffer.concat([b.subarray(0, at), b.subarray(at + m.count)]);
  }
  return b;
}

function fuzzFile(original: Buffer, target: string, read: (file: string) => unknown, label: string): void {
  fc.assert(
    fc.property(fc.array(mutation(original.length), { minLength: 1, maxLength: 4 }), (ms) => {
      fs.writeFileSync(target, mutate(original, ms));
      answered(() => read(target), label);
    }),
    { seed: SEED, numRuns: RUNS },
  );
}

describe(`fuzzing (seed ${SEED}, ${RUNS} runs per property)`, () => {
  test('token soups of .hollow words give a checked spec or a positioned diagnostic', () => {
    fc.assert(
      fc.property(fc.array(fc.constantFrom(...WORDS), { maxLength: 60 }), (tokens) =>
        specAnswered(tokens.join(' ').replace(/ ?\n ?/g, '\n')),
      ),
      { seed: SEED, numRuns: RUNS },
    );
  });

  test('character mutations of a valid spec give a checked spec or a positioned diagnostic', () => {
    const original = Buffer.from(VALID_SPEC);
    fc.assert(
      fc.property(fc.array(mutation(original.length), { minLength: 1, maxLength: 4 }), (ms) =>
        specAnswered(mutate(original, ms).toString('utf8')),
      ),
      { seed: SEED + 1, numRuns: RUNS },
    );
  });

  test('line-level edits of a valid spec (duplicated, dropped, swapped words)', () => {
    const lines = VALID_SPEC.split('\n');
    fc.assert(
      fc.property(fc.array(fc.tuple(fc.nat(lines.length - 1), fc.constantFrom(...WORDS)), { minLength: 1, maxLength: 6 }), (edits) => {
        const out = [...lines];
        for (const [i, w] of edits) out.splice(i, w === '\n' ? 1 : 0, ...(w === '\n' ? [] : [`${out[i] ?? ''} ${w}`.trim()]));
        specAnswered(out.join('\n'));
      }),
      { seed: SEED + 2, numRuns: RUNS },
    );
  });

  const dir = tempDir('hollowc-fuzz-');

  test('byte mutations of an .onnx file', () => {
    const file = path.join(dir, 'toy.onnx');
    saveModel(toyUNet(), file);
    fuzzFile(fs.readFileSync(file), path.join(dir, 'mutated.onnx'), (f) => loadModel(f), 'onnx');
  });

  test('byte mutations of a builder UNet graph, loaded and analysed', async () => {
    const built = await buildUNet(FAMILIES.sd15.tiny.config, { outDir: path.join(dir, 'unet'), seed: 4 });
    const target = path.join(dir, 'unet', 'mutated.onnx');
    const original = fs.readFileSync(built.file);
    // Larger file, slower reads: fewer runs, each one a full load and UNet analysis.
    fc.assert(
      fc.property(fc.array(mutation(original.length), { minLength: 1, maxLength: 3 }), (ms) => {
        fs.writeFileSync(target, mutate(original, ms));
        answered(() => analyzeUNet(loadModel(target).graph, target), 'unet onnx');
      }),
      { seed: SEED + 3, numRuns: Math.max(10, Math.round(RUNS / 5)) },
    );
  });

  test('byte mutations of a .safetensors file', () => {
    const file = path.join(dir, 'lora.safetensors');
    writeSafetensors(
      file,
      new Map([
        ['a.lora_A.weight', float32Tensor([2, 3], Float32Array.of(1, 2, 3, 4, 5, 6))],
        ['a.lora_B.weight', float32Tensor([3, 2], Float32Array.of(6, 5, 4, 3, 2, 1))],
      ]),
      { format: 'pt' },
    );
    fuzzFile(fs.readFileSync(file), path.join(dir, 'mutated.safetensors'), (f) => readSafetensors(f), 'safetensors');
  });

  test('byte mutations of an .npy file', () => {
    const file = path.join(dir, 'latent.npy');
    writeNpy(file, { dtype: 'float32', shape: [4, 3, 3], data: Float32Array.from({ length: 36 }, (_, i) => i) });
    fuzzFile(fs.readFileSync(file), path.join(dir, 'mutated.npy'), (f) => readNpy(f), 'npy');
  });

  describe('store files', () => {
    let store: string;
    beforeAll(async () => {
      const f = await tinyCompiled(path.join(dir, 'tiny'), 'sd15', {
        batch: 1,
        preset: '39.2%',
        extraSpec: 'lora targets "attn1.to_q"',
        train: false,
      });
      await precompute({
        out: f.out,
        data: loadTrainingData(writeData(path.join(dir, 'data'), 'sd15', { instances: 2, classes: 1 })),
        count: 3,
      });
      store = path.join(f.out, 'store');
    });
    const readAll = (dirName: string) => {
      const { store: s } = Store.open(dirName, { readOnly: true });
      try {
        s.verify();
        for (let i = 0; i < s.count; i++) s.read(i);
      } finally {
        s.close();
      }
    };
    test.each(['store.json', 'records.bin', 'conditioning.safetensors'])('byte mutations of %s', (name) => {
      const copy = path.join(dir, `store-${name}`);
      fs.cpSync(store, copy, { recursive: true });
      fuzzFile(fs.readFileSync(path.join(store, name)), path.join(copy, name), () => readAll(copy), name);
    });
  });
});
