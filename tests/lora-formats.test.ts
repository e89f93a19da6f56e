/**
 * LoRA files that load elsewhere, with alpha ≠ rank: each format read the way diffusers 0.21 and
 * current diffusers read it (tests/support/diffusers-loaders.ts) and by hollowc's own readers,
 * checking the effective update scale·B·A of every layer against (alpha / rank)·B·A of the
 * trained values.
 */
import * as path from 'path';
import { LoraSet, adapterAlphaOf, kohyaName, readLoraFile, readUnetLora, writeLoraFile } from '../runtime/formats/lora-file';
import { readSafetensors, writeSafetensors } from '../runtime/formats/safetensors';
import { Rng, fillNormal } from '../models/random';
import { effectiveDelta, loadLikeDiffusers021, loadLikeDiffusersCurrent } from './support/diffusers-loaders';
import { tempDir } from './support/fixture';

const RANK = 4;
const ALPHA = 8; // scale 2
const MODULES = [
  'down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q',
  'up_blocks.1.attentions.2.transformer_blocks.0.attn2.to_out.0',
];

function randn(stream: string, n: number): Float32Array {
  const a = new Float32Array(n);
  fillNormal(new Rng(7, stream), a, 1);
  return a;
}

const set: LoraSet = {
  rank: RANK,
  alpha: ALPHA,
  modules: MODULES.map((module, i) => ({
    module,
    a: { shape: [RANK, 6 + i], data: randn(`a${i}`, RANK * (6 + i)) },
    b: { shape: [5, RANK], data: randn(`b${i}`, 5 * RANK) },
  })),
};
const expected = new Map(
  set.modules.map((m) => [
    m.module,
    effectiveDelta({ a: m.a.data, b: m.b.data, aShape: m.a.shape, bShape: m.b.shape, scale: ALPHA / RANK }),
  ]),
);
const kohyaModule = (base: string) => MODULES.find((m) => kohyaName(m) === base)!;

function expectClose(actual: Float32Array, want: Float32Array) {
  expect(actual.length).toBe(want.length);
  let worst = 0;
  for (let i = 0; i < want.length; i++) worst = Math.max(worst, Math.abs(actual[i] - want[i]) / (1 + Math.abs(want[i])));
  expect(worst).toBeLessThan(1e-6);
}

const dir = tempDir('hollowc-lora-formats-');
const files = Object.fromEntries(
  (['diffusers', 'peft', 'kohya'] as const).map((f) => {
    const file = path.join(dir, `${f}.safetensors`);
    writeLoraFile(file, f, set);
    return [f, file];
  }),
) as Record<'diffusers' | 'peft' | 'kohya', string>;

test('diffusers format: unet.<module>.lora.down/up keys, scale folded into up, adapter metadata alpha = r', () => {
  const { tensors, metadata } = readSafetensors(files.diffusers);
  expect([...tensors.keys()].sort()).toEqual(MODULES.flatMap((m) => [`unet.${m}.lora.down.weight`, `unet.${m}.lora.up.weight`]).sort());
  expect(JSON.parse(metadata.lora_adapter_metadata)).toEqual({
    'unet.r': RANK,
    'unet.lora_alpha': RANK,
    'unet.target_modules': MODULES,
    'unet.init_lora_weights': true,
    'unet.use_dora': false,
    'unet.lora_bias': false,
  });
  expect(metadata.hollowc_alpha).toBe(String(ALPHA));
});

test.each([
  ['diffusers 0.21', loadLikeDiffusers021],
  ['current diffusers', loadLikeDiffusersCurrent],
] as const)('%s loads the diffusers and kohya files with scale alpha/rank', (_, load) => {
  for (const file of [files.diffusers, files.kohya]) {
    const layers = load(file, kohyaModule);
    expect(layers.map((l) => l.module).sort()).toEqual([...MODULES].sort());
    for (const l of layers) expectClose(effectiveDelta(l), expected.get(l.module)!);
  }
});

test('peft format: current diffusers reads alpha from lora_adapter_metadata; 0.21 cannot read the keys', () => {
  const layers = loadLikeDiffusersCurrent(files.peft, kohyaModule);
  for (const l of layers) {
    expect(l.scale).toBe(ALPHA / RANK);
    expectClose(effectiveDelta(l), expected.get(l.module)!);
  }
  expect(() => loadLikeDiffusers021(files.peft, kohyaModule)).toThrow("KeyError: 'lora.down.weight'");
  expect(adapterAlphaOf(readSafetensors(files.peft).metadata)).toBe(ALPHA);
});

test('the same file without the scale folded in would be wrong: the emulated loaders do check the scale', () => {
  // a peft file whose adapter metadata is dropped reads as alpha = r: half the update
  const { tensors } = readSafetensors(files.peft);
  const bare = path.join(dir, 'bare.safetensors');
  writeSafetensors(bare, tensors, { format: 'pt' });
  const l = loadLikeDiffusersCurrent(bare, kohyaModule)[0];
  expect(l.scale).toBe(1);
  const d = effectiveDelta(l);
  expect(Math.abs(d[0] * 2 - expected.get(l.module)![0])).toBeLessThan(1e-5);
});

test.each(['diffusers', 'peft', 'kohya'] as const)('hollowc reads its %s file back at the trained scale', (format) => {
  // readUnetLora: generate --lora / fold-lora
  const lora = readUnetLora(files[format]);
  for (const m of MODULES) {
    const d = lora.lookup(m)!;
    expectClose(effectiveDelta({ a: d.a.data, b: d.b.data, aShape: d.a.shape, bShape: d.b.shape, scale: d.scale }), expected.get(m)!);
  }
  // readLoraFile: values rescaled to a compiled graph's alpha (here ALPHA): B·A·(ALPHA/RANK) is the same update
  const values = readLoraFile(files[format], MODULES, RANK, ALPHA);
  for (const m of MODULES) {
    const v = values.get(m)!;
    expectClose(effectiveDelta({ a: v.a.data, b: v.b.data, aShape: v.a.shape, bShape: v.b.shape, scale: ALPHA / RANK }), expected.get(m)!);
  }
});
