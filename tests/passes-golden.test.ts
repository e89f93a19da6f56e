/**
 * Golden printed graphs: every rewrite of passes/ run on the toy UNet (tests/support/toy-unet.ts)
 * through its artifact's pipeline, printed with compiler/printer and compared with
 * tests/golden/<case>.txt. A pass change shows up as a readable diff of those files; accept it
 * with `npm run accept-golden` (HOLLOWC_ACCEPT_GOLDEN=1), then review the diff before committing.
 */
import * as fs from 'fs';
import * as path from 'path';
import { cloneModel } from '../compiler/clone';
import { DataType } from '../compiler/dtype';
import { ArtifactName } from '../compiler/manifest';
import { Model } from '../compiler/ir';
import { Pass, runPasses } from '../compiler/pass';
import { printGraph } from '../compiler/printer';
import { GraphBuilder } from '../compiler/builder';
import { bakeLora } from '../passes/fold/bake-lora';
import { differentiate } from '../passes/training/differentiate';
import { pairAttentionGradientsPass } from '../passes/memory/pair-attention-gradients';
import { bandConvGradientsPass } from '../passes/memory/band-conv-gradients';
import { chunkAttentionPass } from '../passes/memory/chunk-attention';
import { chunkFeedForwardPass } from '../passes/memory/chunk-feed-forward';
import { foldLoraWeights } from '../passes/fold/fold-lora';
import { ARTIFACT_PASSES } from '../passes/artifact-passes';
import { preciseNormalizationPass } from '../passes/precision/precise-normalization';
import { preciseTrigonometryPass } from '../passes/precision/precise-trigonometry';
import { slicesToSplitPass } from '../passes/memory/slices-to-split';
import { splitAttentionPass } from '../passes/memory/split-attention';
import { timestepPerSamplePass } from '../passes/structure/timestep-per-sample';
import { ArtifactState } from '../passes/lib/artifact-state';
import { attentionGraph, scalarTimestepGraph } from './support/attention-graph';
import { precisionGraph } from './support/precision-graphs';
import { convGradientGraph, feedForwardGraph } from './support/row-graphs';
import { TOY_TARGETS, toyState, toyUNet } from './support/toy-unet';

const GOLDEN_DIR = path.join(__dirname, 'golden');
const ACCEPT = process.env.HOLLOWC_ACCEPT_GOLDEN === '1';

/** The golden cases this file compared (their names up to the first '.'), for the coverage check at its end. */
const compared = new Set<string>();

function expectGolden(name: string, text: string): void {
  compared.add(name.split('.')[0]);
  const file = path.join(GOLDEN_DIR, `${name}.txt`);
  if (ACCEPT) {
    fs.writeFileSync(file, text);
    return;
  }
  if (!fs.existsSync(file)) throw new Error(`no baseline ${path.relative(process.cwd(), file)}: run npm run accept-golden and review it`);
  expect(text).toBe(fs.readFileSync(file, 'utf8'));
}

/** The toy after the first `count` passes of `artifact`'s pipeline (the verifier runs after each). */
function after(artifact: ArtifactName, count: number, hollow = true, base: 'fp32' | 'int8' = 'fp32') {
  const model = cloneModel(toyUNet());
  const state = toyState(hollow, base);
  const passes = ARTIFACT_PASSES[artifact].slice(0, count);
  runPasses(model, passes, state);
  return { model, state, last: passes[passes.length - 1].name };
}

// [golden file, artifact, passes run, hollowed, base]: each rewrite once, where its pipeline first runs it.
const CASES: [string, ArtifactName, number, boolean, ('fp32' | 'int8')?][] = [
  ['extract-precompute', 'precompute', 1, true],
  ['insert-lora', 'forward', 1, true],
  ['hollow-out', 'forward', 2, true],
  ['forward.hollow-none', 'forward', 2, false],
  ['add-base-path', 'infer', 1, true],
  ['infer', 'infer', 3, true],
  ['specialize-shapes', 'train', 5, true],
  ['add-loss', 'train', 9, true],
  ['differentiate', 'train', 10, true],
  ['rematerialize', 'train', 13, true],
  ['quantize-base', 'train', 14, true, 'int8'],
  ['add-adamw', 'train', 17, true],
  ['order-sinks', 'train', 18, true],
  ['expose-gradients', 'grads', 17, true],
  ['release-dead-buffers', 'grads', ARTIFACT_PASSES.grads.length, true, 'int8'],
];

/**
 * Rewrites of ops the toy does not have, golden on their own graphs: normalizations and Sin/Cos
 * (tests/support/precision-graphs.ts), attention and GEGLU (tests/support/attention-graph.ts).
 */
const precisionCase = () => precisionGraph({ groups: 2, spatial: 6, frequencies: [1, 0.1, 0.01] });
const OWN_GRAPH_CASES: [Pass<ArtifactState>, () => Model][] = [
  [preciseNormalizationPass, precisionCase],
  [preciseTrigonometryPass, precisionCase],
  [splitAttentionPass, attentionGraph],
  [chunkAttentionPass, attentionGraph],
  [slicesToSplitPass, attentionGraph],
  [timestepPerSamplePass, scalarTimestepGraph],
  [chunkFeedForwardPass, feedForwardGraph],
  [bandConvGradientsPass, convGradientGraph],
];

// a rest parameter: rows without a base would leave a fifth named parameter, which jest takes for `done`
test.each(CASES)('%s', (...[name, artifact, count, hollow, base]) => {
  const { model, last } = after(artifact, count, hollow, base);
  if (!name.includes('.') && name !== artifact) expect(last).toBe(name);
  expectGolden(name, printGraph(model.graph, { nodeNames: false }));
});

test.each(OWN_GRAPH_CASES.map(([p, graph]) => [p.name, p, graph] as const))('%s (on its own graph)', (name, pass, graph) => {
  const model = graph();
  // split-attention at a threshold of 0, chunk-attention in blocks of 24 bytes (its 2-head map of 3
  // queries by 3 keys one query row at a time): the graph's maps are a few bytes; the feed-forward's
  // 192-byte widest tensor in blocks of 64 bytes (3 blocks of 2 tokens), the 540 bytes a row of
  // column buffer in bands of 2200 bytes (2 output rows with their 2 rows of halo: 3 bands)
  const [record] = runPasses(model, [pass], {
    ...toyState(true),
    splitAttentionAboveBytes: 0,
    inferChunkBytes: 24,
    feedForwardChunkBytes: 64,
    convGradientColBytes: 2200,
  });
  expect(record.changed).toBe(true);
  expectGolden(name, printGraph(model.graph, { nodeNames: false }));
});

test('split-attention in blocks of query rows: 3 queries of 3 keys (12 bytes a row) in blocks of at most 2 rows', () => {
  const model = attentionGraph();
  const [record] = runPasses(model, [splitAttentionPass], { ...toyState(true), splitAttentionAboveBytes: 0, attentionChunkBytes: 24 });
  expect(record.summary).toContain('2 heads) in 4 blocks');
  expectGolden('split-attention.rows', printGraph(model.graph, { nodeNames: false }));
});

test("pair-attention-gradients: each row block's q gradient joined with kᵀ's running gradient", () => {
  const model = attentionGraph();
  const state: ArtifactState = { ...toyState(true), splitAttentionAboveBytes: 0, attentionChunkBytes: 24 };
  runPasses(model, [splitAttentionPass], state);
  const g = model.graph;
  const attention = g.outputs.find((v) => v.name === 'attention')!;
  const loss = new GraphBuilder(g).op('ReduceSum', [attention], { keepdims: 0 });
  loss.type = { elemType: attention.type!.elemType, shape: [] };
  const { gradients } = differentiate(
    model,
    loss,
    ['q', 'k', 'v'].map((n) => g.value(n)),
  );
  const [record] = runPasses(model, [pairAttentionGradientsPass], { ...state, gradients });
  // 2 heads in blocks of 2 and 1 rows: per head, kᵀ's gradient is one Add of the two blocks' terms.
  expect(record.summary).toBe("2 joins of a block's q gradient with kᵀ's running gradient (4 of 4 attention blocks)");
  expectGolden('pair-attention-gradients', printGraph(g, { nodeNames: false }));
});

test('make-base-trainable (train base): the trained weights become inputs by name, in torch layout, and get gradients', () => {
  const model = cloneModel(toyUNet());
  // to_q has LoRA too; to_v's weight is stored [in 8, out 4] for its MatMul: torch's [4, 8] comes in through a Transpose
  const state: ArtifactState = { ...toyState(true), trainBase: ['down_blocks.0.attn1.to_q.weight', 'up_blocks.0.attn1.to_v.weight'] };
  const through = ARTIFACT_PASSES.grads.findIndex((p) => p.name === 'make-base-trainable') + 1;
  const records = runPasses(model, ARTIFACT_PASSES.grads.slice(0, through), state);
  expect(records[records.length - 1].summary).toBe('2 base weights (48 values) are inputs');
  expect(state.baseParams!.map((p) => [p.name, p.shape])).toEqual([
    ['down_blocks.0.attn1.to_q.weight', [4, 4]],
    ['up_blocks.0.attn1.to_v.weight', [4, 8]],
  ]);
  expect(model.graph.initializers().map((v) => v.name)).not.toContain('up_blocks.0.attn1.to_v.weight');
  expectGolden('make-base-trainable', printGraph(model.graph, { nodeNames: false }));
  // and grads.onnx returns their gradients after the LoRA's
  const grads = cloneModel(toyUNet());
  runPasses(grads, ARTIFACT_PASSES.grads, { ...toyState(true), trainBase: state.trainBase });
  expect(grads.graph.outputs.map((o) => o.name).slice(-2)).toEqual(['down_blocks.0.attn1.to_q.weight.grad', 'up_blocks.0.attn1.to_v.weight.grad']);
});

test('float16-lora-inputs (lora infer fp16): infer.onnx takes its LoRA tensors as float16, cast where read', () => {
  const model = cloneModel(toyUNet());
  const state = toyState(true);
  const passes = ARTIFACT_PASSES.infer.slice(0, 4);
  expect(passes[3].name).toBe('float16-lora-inputs');
  const [, , , record] = runPasses(model, passes, { ...state, lora: { ...state.lora, inferPrecision: 'fp16' } });
  expect(record.changed).toBe(true);
  expectGolden('float16-lora-inputs', printGraph(model.graph, { nodeNames: false }));
});

test('float16-weights (base fp16): grads.onnx stores its base weights as float16, a Cast to float32 per use, first', () => {
  const model = cloneModel(toyUNet());
  const through = ARTIFACT_PASSES.grads.findIndex((p) => p.name === 'float16-weights') + 1;
  const records = runPasses(model, ARTIFACT_PASSES.grads.slice(0, through), toyState(true, 'fp16'));
  const last = records[records.length - 1];
  expect([last.pass, last.changed]).toEqual(['float16-weights', true]);
  const halves = model.graph.initializers().filter((v) => v.initializer!.dataType === DataType.FLOAT16);
  expect(halves.length).toBeGreaterThan(0);
  for (const w of halves) expect(w.uses.every((u) => u.node.opType === 'Cast')).toBe(true);
  // the casts run first (quantize-base's reasoning): every node before the first non-Cast is a weight cast
  const firstOther = model.graph.nodes.findIndex((n) => n.opType !== 'Cast');
  expect(firstOther).toBeGreaterThanOrEqual(halves.reduce((a, w) => a + w.uses.length, 0));
  expectGolden('float16-weights', printGraph(model.graph, { nodeNames: false }));
});

test('bake-lora: folds where only path 2 reads the weight, keeps the branch where path 1 shares it', () => {
  const { model, state } = after('infer', 3);
  const values = new Map(
    state.loraParams!.map((p, i) => [
      p.name,
      Float32Array.from({ length: p.shape.reduce((a, b) => a * b, 1) }, (_, j) => (i + 1) * 0.01 * ((j % 3) - 1)),
    ]),
  );
  const result = bakeLora(model.graph, values, state.lora.rank, state.lora.alpha / state.lora.rank);
  // to_q and to_k feed the hollow activation, so the base path shares their weights; to_v is path 2's alone.
  expect(result).toEqual({
    folded: ['up_blocks.0.attentions.0.transformer_blocks.0.attn1.to_v'],
    kept: ['down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q', 'down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k'],
  });
  expectGolden('bake-lora', printGraph(model.graph, { nodeNames: false }));
});

test('fold-lora: the plain UNet keeps its structure, the targeted weights become W + scale·B·A', () => {
  const model = toyUNet();
  const [q, , , v] = TOY_TARGETS;
  const lora = (seed: number, inF: number) => ({
    a: { shape: [1, inF], data: Float32Array.from({ length: inF }, (_, i) => ((i + seed) % 3) - 1) },
    b: { shape: [4, 1], data: Float32Array.of(0.5, 0, -0.5, 1) },
    scale: 0.5,
  });
  const result = foldLoraWeights(model.graph, (m) => (m === q ? lora(0, 4) : m === v ? lora(1, 8) : undefined));
  expect(result.folded).toEqual([q, v]);
  // to_q's weight [in 4, out 4]: W[i][o] + 0.5 · b[o] · a[i]; row 0 of sin-seeded W (seed 1) is sin(1..4) rounded
  const w = model.graph.nodes.find((n) => n.name.includes('to_q'))!.inputs[1]!.initializer!;
  const folded = new Float32Array(new Uint8Array((w.data as { bytes: Uint8Array }).bytes).buffer.slice(0));
  expect(folded[3]).toBeCloseTo(Math.round(100 * Math.sin(1 + 3)) / 100 + 0.5 * 1 * -1, 6);
  expectGolden('fold-lora', printGraph(model.graph, { nodeNames: false }));
});

// Last in the file (jest runs a file's tests in order): the passes a golden case above compared,
// not a list that names them, so a case removed or renamed shows up here.
test('every artifact pass list is covered: each pass of ARTIFACT_PASSES has a golden case that ran', () => {
  const all = new Set(Object.values(ARTIFACT_PASSES).flatMap((ps) => ps.map((p) => p.name)));
  expect([...all].filter((p) => !compared.has(p))).toEqual([]);
});
