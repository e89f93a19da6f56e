/**
 * What the comments of passes/ claim about pass order ("last", "after", "before"), held against
 * the pipeline itself (passes/artifact-passes.ts), so a reordering cannot leave a comment wrong.
 */
import { ARTIFACT_PASSES } from '../passes/artifact-passes';
import { ArtifactName } from '../compiler/manifest';

const names = (a: ArtifactName) => ARTIFACT_PASSES[a].map((p) => p.name);
const TRAINING: ArtifactName[] = ['grads', 'train'];
const OTHERS: ArtifactName[] = ['precompute', 'forward', 'infer'];

test('precompute, forward and infer end with float16-weights', () => {
  for (const a of OTHERS) expect(names(a).at(-1)).toBe('float16-weights');
});

test('the training graphs end with order-sinks, float16-weights, release-dead-buffers', () => {
  for (const a of TRAINING) expect(names(a).slice(-3)).toEqual(['order-sinks', 'float16-weights', 'release-dead-buffers']);
});

test('the precise rewrites follow every rewrite that adds normalization or trigonometry', () => {
  // every pass before them that may add ops they rewrite: all but the three ending passes
  const ending = new Set(['order-sinks', 'float16-weights', 'release-dead-buffers', 'expose-gradients', 'add-adamw']);
  for (const a of [...OTHERS, ...TRAINING]) {
    const list = names(a);
    const firstPrecise = list.indexOf('precise-normalization');
    expect(firstPrecise).toBeGreaterThan(0);
    expect(list[firstPrecise + 1]).toBe('precise-trigonometry');
    expect(list.slice(firstPrecise + 2).filter((n) => !ending.has(n) && n !== 'float16-lora-inputs')).toEqual([]);
  }
});

test('training graphs differentiate after the forward rewrites and before the backward ones', () => {
  for (const a of TRAINING) {
    const list = names(a);
    const d = list.indexOf('differentiate');
    for (const before of ['insert-lora', 'hollow-out', 'specialize-shapes', 'split-attention', 'chunk-feed-forward', 'add-loss'])
      expect(list.indexOf(before)).toBeLessThan(d);
    for (const after of ['band-conv-gradients', 'pair-attention-gradients', 'rematerialize', 'quantize-base'])
      expect(list.indexOf(after)).toBeGreaterThan(d);
  }
});
