/**
 * The world pipeline's frozen text encoder (cli/api/world-pipeline.ts, models/builder's maxTokens
 * and textEmbeddingScale): prompts padded to WORLD_TOKENS, and each caption word readable at its
 * own position, which CLIP's own 0.02 embedding init does not give a random encoder.
 */
import * as path from 'path';
import { WORLD_TEXT_EMBEDDING_SCALE, WORLD_TOKENS } from '../cli/api/world-pipeline';
import { buildPipeline } from '../models/builder';
import { openPipelineFolder } from '../runtime/text-to-image/pipeline-folder';
import { encodePrompts } from '../runtime/text-to-image/text-to-image';
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
