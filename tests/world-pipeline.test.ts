/**
 * The world pipeline's frozen text encoder (cli/api/world-pipeline.ts, models/builder's maxTokens
 * and textEmbeddingScale): prompts padded to WORLD_TOKENS, and each caption word readable at its
 * own position, which CLIP's own 0.02 embedding init does not give a random encoder; and `world
 * build`'s wiring at a few steps (the quality of a full build is a bench: docs/benchmarks.md).
 */
import * as fs from 'fs';
import * as path from 'path';
import { materializeWorldPipeline, packWorldPipeline, readWorldRecord, textEncoderSha256 } from '../cli/api/world-record';
import { WORLD_TEXT_EMBEDDING_SCALE, WORLD_TOKENS, buildWorldPipeline, scoreWorldPipeline } from '../cli/api/world-pipeline';
import { buildPipeline } from '../models/builder';
import { sampleScene } from '../models/world';
import { HELD_OUT_SEED } from '../cli/api/train-vae';
import { CHECKPOINT_FILE, TRAIN_DIR } from '../runtime/train/checkpoint';
import { openPipelineFolder } from '../runtime/text-to-image/pipeline-folder';
import { defaultImageSize, encodePrompts } from '../runtime/text-to-image/text-to-image';
import { tempDir } from './support/fixture';

/** rms over the feature axis of the difference between two prompts' encodings, at each position. */
async function wordChange(dir: string, a: string, b: string): Promise<number[]> {
  const folder = openPipelineFolder(dir);
  const [x, y] = await encodePrompts(folder, [a, b]);
  const [T, D] = x.encoderHiddenStates.shape;
  return Array.from({ length: T }, (_, t) => {
    let s = 0;
    for (let k = 0; k < D; k++) s += (x.encoderHiddenStates.data[t * D + k] - y.encoderHiddenStates.data[t * D + k]) ** 2;
    return Math.sqrt(s / D);
  });
}

test('the world text encoder takes WORLD_TOKENS and keeps the background word readable at its position', async () => {
  const dir = tempDir('hollowc-world-text-');
  const clip = path.join(dir, 'clip-init');
  const world = path.join(dir, 'world');
  await buildPipeline('sd15', 'tiny', clip, { seed: 0, maxTokens: WORLD_TOKENS });
  await buildPipeline('sd15', 'tiny', world, { seed: 0, maxTokens: WORLD_TOKENS, textEmbeddingScale: WORLD_TEXT_EMBEDDING_SCALE });
  const folder = openPipelineFolder(world);
  expect(folder.tokenizers[0].maxLength).toBe(WORLD_TOKENS);
  const [a, b] = ['a large red circle on a blue background', 'a large red circle on a yellow background'];
  // <bos> a large red circle on a blue: the background's color word is token 7
  const [atClip, atWorld] = [(await wordChange(clip, a, b))[7], (await wordChange(world, a, b))[7]];
  expect(atClip).toBeLessThan(0.3);
  expect(atWorld).toBeGreaterThan(0.7);
  const before = (await wordChange(world, a, b)).slice(0, 7);
  expect(before.every((d) => d === 0)).toBe(true); // causal: the positions before the word do not see it
}, 120_000);

test('world build: VAE then UNet from a seed into a pipeline folder that world score reads; a rerun resumes instead of starting over', async () => {
  const dir = tempDir('hollowc-world-build-');
  const out = path.join(dir, 'pipeline');
  const work = path.join(dir, 'work');
  const r = await buildWorldPipeline({ out, work, seed: 1, vaeSteps: 4, scenes: 24, steps: 3, batch: 2 });
  expect(r.losses).toHaveLength(3);
  const folder = openPipelineFolder(out);
  expect(folder.tokenizers[0].maxLength).toBe(WORLD_TOKENS);
  // generate --model's default size is the one trained at: 32 px scenes, 8x8 latents
  expect(defaultImageSize(folder)).toBe(32);
  // the UNet is the trained one, not the builder's init the work folder started from
  const weights = (dir: string) => fs.readFileSync(path.join(dir, 'unet', 'model.onnx_data'));
  expect(weights(out).equals(weights(path.join(work, 'base')))).toBe(false);
  const s = await scoreWorldPipeline(out, { samples: 2, steps: 2 });
  expect(s.samples).toBe(2);
  // each share counts whole images of the 2
  for (const share of [s.background, s.objectColor, s.objectKind, s.size]) expect([0, 0.5, 1]).toContain(share);
  // the kind split by the captions' sizes adds up to the kind share
  const sizes = [0, 1].map((i) => sampleScene(HELD_OUT_SEED + i).size);
  expect(Object.keys(s.objectKindBySize).sort()).toEqual([...new Set(sizes)].sort());
  const kindsRight = Object.entries(s.objectKindBySize).reduce((a, [size, x]) => a + x! * sizes.filter((z) => z === size).length, 0);
  expect(kindsRight).toBeCloseTo(2 * s.objectKind, 9);
  // a second call with more steps trains on from the checkpoint: the first 3 losses are not repeated
  const again = await buildWorldPipeline({ out, work, seed: 1, vaeSteps: 4, scenes: 24, steps: 5, batch: 2 });
  expect(again.losses).toHaveLength(2);
  // a run killed before its first checkpoint leaves train/ without one: the next call starts over instead of failing
  fs.rmSync(path.join(work, 'compiled', TRAIN_DIR, CHECKPOINT_FILE));
  const over = await buildWorldPipeline({ out, work, seed: 1, vaeSteps: 4, scenes: 24, steps: 5, batch: 2 });
  expect(over.losses).toHaveLength(5);
  // the record: the command that remakes it, and the curves from the stages' logs
  const record = readWorldRecord(out);
  expect(record.command).toBe(`hollowc world build -o ${out} --seed 1 --vae-steps 4 --steps 5 --batch 2 --scenes 24 --lr 0.001`);
  expect(record.loss.vae).toHaveLength(4);
  expect(record.loss.unet.length).toBeGreaterThan(0);
  expect(record.seconds.vae).toBeGreaterThan(0);
  // packed without the text encoder and tokenizer, and made whole again from the seed
  const packed = path.join(path.dirname(out), 'packed');
  packWorldPipeline(out, packed);
  expect(fs.readdirSync(packed).sort()).toEqual([
    'hollowc-world.json',
    'model_index.json',
    'scheduler',
    'unet',
    'vae_decoder',
    'vae_encoder',
  ]);
  const whole = await materializeWorldPipeline(path.join(path.dirname(out), 'whole'), packed);
  expect(textEncoderSha256(whole)).toBe(record.textEncoderSha256);
  expect(weights(whole).equals(weights(out))).toBe(true);
}, 300_000);
