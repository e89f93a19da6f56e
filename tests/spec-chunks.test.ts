/**
 * The spec's `chunks` line reaches the memory rewrites: on the builder's tiny SD 1.5 (16x16 latents,
 * whose maps the default sizes leave whole), asked-for blocks of 64KiB split the attention maps of
 * the training and inference graphs, the feed-forwards and the conv gradients. That the blocks
 * compute the same values is memory-rewrites.test.ts's and chunk-attention.test.ts's.
 */
import * as fs from 'fs';
import * as path from 'path';
import { compileFromSpec } from '../cli/api/compile-spec';
import { loadModel } from '../compiler/serde';
import { buildUNet } from '../models/builder';
import { FAMILIES } from '../models/families';
import { tempDir } from './support/fixture';

const dir = tempDir('hollowc-chunks-');
let model: string;
beforeAll(async () => {
  model = (await buildUNet(FAMILIES.sd15.tiny.config, { outDir: path.join(dir, 'unet'), seed: 3 })).file;
});

function compiled(extra: string): { grads: string[]; infer: string[] } {
  const name = extra ? 'chunked' : 'plain';
  const spec = path.join(dir, `${name}.hollow`);
  fs.writeFileSync(
    spec,
    `model sd15\nhollow after 3-2\nshape sample [1, 4, 16, 16]\nshape encoder_hidden_states [1, 7, 32]\nlora rank 4\nemit grads infer\n${extra}\n`,
  );
  const out = path.join(dir, name);
  compileFromSpec(model, spec, { out });
  const names = (file: string) => loadModel(path.join(out, file)).graph.nodes.map((n) => `${n.opType} ${n.name}`);
  return { grads: names('grads.onnx'), infer: names('infer.onnx') };
}

test('chunks attention / feed_forward / conv_gradient / infer_attention: the passes work in blocks of the asked size', () => {
  const plain = compiled('');
  const chunked = compiled('chunks attention 64KiB feed_forward 64KiB conv_gradient 64KiB infer_attention 64KiB');
  const count = (names: string[], re: RegExp) => names.filter((n) => re.test(n)).length;
  // Forward softmaxes of the training graph (the backward recomputes each again).
  const softmax = /^Softmax (?!.*\/recompute)/;
  expect(count(plain.grads, softmax)).toBeGreaterThan(0);
  expect(count(chunked.grads, softmax)).toBeGreaterThan(2 * count(plain.grads, softmax));
  expect(count(chunked.infer, /^Softmax /)).toBeGreaterThan(2 * count(plain.infer, /^Softmax /));
  expect(count(plain.grads, /\/rows\//)).toBe(0);
  expect(count(chunked.grads, /\/rows\//)).toBeGreaterThan(0);
  expect(count(plain.grads, /\/bands\//)).toBe(0);
  expect(count(chunked.grads, /\/bands\//)).toBeGreaterThan(0);
});
