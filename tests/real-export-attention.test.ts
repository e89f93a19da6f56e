/**
 * The memory rewrites on attention as torch 1.13 exports it (the sd15-tiny fixture, opset 17 and
 * 14: diffusers' AttnProcessor, scores by `baddbmm` with beta 0 and the probabilities Cast back):
 * passes/lib/attention-match.ts takes that form, and says why when it does not; chunk-attention
 * computes precompute.onnx's and infer.onnx's maps in blocks of query rows, split-attention
 * grads.onnx's per head and in blocks, with the same outputs and gradients as the compile without
 * them; compile's summary counts the sites each rewrite matched and warns about the ones it did not.
 */
import * as fs from 'fs';
import * as path from 'path';
import * as ort from 'onnxruntime-node';
import { GraphBuilder } from '../compiler/builder';
import { Graph, Model, Node } from '../compiler/ir';
import { ArtifactName, CompileManifest } from '../compiler/manifest';
import { loadModel } from '../compiler/serde';
import { matchAttention } from '../passes/lib/attention-match';
import { RewriteSites, compile, rewriteSummary } from '../passes/compile-unet';
import { createSession, withArtifactConfig } from '../runtime/ort/session';
import {
  FIXTURE_MODEL,
  FIXTURE_MODEL_OPSET14,
  FIXTURE_SHAPES,
  fixtureGradientStep,
  fixtureInputs,
  fixtureManifest,
  identicalOutputs,
  relativeError,
  tempDir,
  trainingFor,
} from './support/fixture';
import { runCli } from './support/cli';

const FORMS = [
  ['opset 17', FIXTURE_MODEL],
  ['opset 14', FIXTURE_MODEL_OPSET14],
] as const;

/** The fixture's level-0 self-attention maps (4 heads of 256 x 256, 1 MiB) in blocks of at most 32 KiB. */
const CHUNK_BYTES = 32 * 1024;

const softmaxes = (g: Graph): Node[] => g.nodes.filter((n) => n.opType === 'Softmax');

function compileFixture(
  modelFile: string,
  emit: ArtifactName[],
  extra: Partial<Parameters<typeof compile>[0]> = {},
): { out: string; m: CompileManifest; sites: RewriteSites[] } {
  const fixture = fixtureManifest();
  const out = tempDir('hollowc-real-attention-');
  let sites: RewriteSites[] = [];
  const m = compile({
    modelFile,
    outDir: out,
    lastKeptDown: '3-2',
    targets: fixture.lora.targets,
    lora: { rank: fixture.lora.rank, alpha: fixture.lora.alpha },
    emit,
    training: { ...trainingFor('sd15', FIXTURE_SHAPES), recompute: 'cheap' },
    onRewrites: (s) => (sites = s),
    ...extra,
  });
  return { out, m, sites };
}

function siteOf(sites: RewriteSites[], artifact: ArtifactName, pass: string): RewriteSites {
  const s = sites.find((x) => x.artifact === artifact && x.pass === pass);
  if (!s) throw new Error(`no sites of ${pass} in ${artifact}.onnx`);
  return s;
}

describe.each(FORMS)('torch 1.13 export, %s', (_form, modelFile) => {
  test('every attention is matched in the baddbmm form: the zeros Add and the Cast are part of the chain', () => {
    const g = loadModel(modelFile).graph;
    const found = softmaxes(g).map((n) => matchAttention(g, n));
    expect(found.length).toBe(32);
    expect(found.map((m) => m.reason).filter(Boolean)).toEqual([]);
    for (const m of found) {
      expect(m.match!.zeroBias!.opType).toBe('Add');
      expect(m.match!.cast!.opType).toBe('Cast');
      expect(m.match!.scale!.opType).toBe('Mul');
    }
  });

  test('precompute.onnx and infer.onnx: attention maps in blocks of query rows, bit for bit the whole maps', async () => {
    const blocked = compileFixture(modelFile, ['precompute', 'infer'], { inferChunkBytes: CHUNK_BYTES });
    const whole = compileFixture(modelFile, ['precompute', 'infer'], { skipPasses: ['chunk-attention'] });
    for (const [artifact, sites] of [
      ['precompute', 14],
      ['infer', 44],
    ] as const) {
      const s = siteOf(blocked.sites, artifact, 'chunk-attention');
      expect([s.found, s.matched]).toEqual([sites, sites]);
      expect(s.rewritten).toBeGreaterThan(0);
      const [b, w] = [blocked, whole].map((c) => loadModel(path.join(c.out, `${artifact}.onnx`)).graph);
      // Each rewritten map's chain is rebuilt per block, its Cast too; the baddbmm zeros are gone with it.
      expect(blockSoftmaxes(b)).toBeGreaterThanOrEqual(2 * s.rewritten);
      expect(softmaxes(b).length).toBe(softmaxes(w).length - s.rewritten + blockSoftmaxes(b));
      const casts = (g: Graph) => g.nodes.filter((n) => n.opType === 'Cast' && n.inputs[0]?.producer?.opType === 'Softmax').length;
      expect(casts(b)).toBe(softmaxes(b).length);
      const zeros = (g: Graph) => g.nodes.filter((n) => n.opType === 'ConstantOfShape' && n.name.includes('/attn')).length;
      expect(zeros(b)).toBe(zeros(w) - s.rewritten);
    }
    const lora = blocked.m.lora.targets.flatMap((t) => [t.lora_A, t.lora_B]);
    // Batch 1 at the design shape, and batch 2 (the block count was chosen for batch 1).
    const feeds = ([1, 2] as const).map((batch) => {
      const unet = fixtureInputs(batch);
      const infer: Record<string, ort.Tensor> = { ...unet, base_encoder_hidden_states: unet.encoder_hidden_states };
      // Nonzero B, so path 2's LoRA branches take part.
      for (const [i, p] of lora.entries()) {
        const n = (p.shape as number[]).reduce((x, d) => x * d, 1);
        infer[p.name] = new ort.Tensor(
          'float32',
          Float32Array.from({ length: n }, (_, j) => Math.sin(i + j) / 10),
          p.shape as number[],
        );
      }
      return { 'precompute.onnx': unet, 'infer.onnx': infer };
    });
    for (const file of ['precompute.onnx', 'infer.onnx'] as const) {
      const a = await runEach(
        path.join(blocked.out, file),
        feeds.map((f) => f[file]),
      );
      const b = await runEach(
        path.join(whole.out, file),
        feeds.map((f) => f[file]),
      );
      for (let i = 0; i < feeds.length; i++) expect(identicalOutputs(a[i], b[i])).toEqual(Object.keys(a[i]));
    }
  });

  test("grads.onnx: attention per head and in blocks of rows, each block's gradients paired, the same loss and gradients", async () => {
    const perHead = compileFixture(modelFile, ['grads'], { splitAttentionAboveBytes: 0 });
    const blocked = compileFixture(modelFile, ['grads'], { splitAttentionAboveBytes: 0, attentionChunkBytes: CHUNK_BYTES });
    const whole = compileFixture(modelFile, ['grads'], { skipPasses: ['split-attention'] });
    for (const c of [perHead, blocked]) {
      const s = siteOf(c.sites, 'grads', 'split-attention');
      expect([s.found, s.matched, s.rewritten]).toEqual([30, 30, 30]);
      const paired = siteOf(c.sites, 'grads', 'pair-attention-gradients');
      expect(paired.matched).toBe(paired.found);
    }
    expect(siteOf(blocked.sites, 'grads', 'pair-attention-gradients').found).toBeGreaterThan(
      siteOf(perHead.sites, 'grads', 'pair-attention-gradients').found,
    );
    const step = async (c: { out: string; m: CompileManifest }) => {
      const s = await createSession(
        path.join(c.out, 'grads.onnx'),
        withArtifactConfig({ intraOpThreads: 1, optimization: 'basic', memPattern: false }, c.m.artifacts.grads),
      );
      try {
        return await s.run(fixtureGradientStep(c.m).feeds);
      } finally {
        await s.release();
      }
    };
    const [h, b, w] = [await step(perHead), await step(blocked), await step(whole)];
    // Per head: the same products on the same numbers.
    expect(identicalOutputs(h, w)).toEqual(Object.keys(w));
    // In blocks: the forward row by row (the loss bit for bit); k's and v's gradients are sums over
    // the blocks, so they round differently.
    expect(b.loss.data[0]).toBe(w.loss.data[0]);
    let worst = 0;
    for (const name of Object.keys(w).filter((n) => n.endsWith('.grad')))
      worst = Math.max(worst, relativeError(b[name].data as Float32Array, w[name].data as Float32Array));
    expect(worst).toBeLessThan(1e-5);
  });
});

/** One session of `file` (as runModel opens it), run on each of `feeds`. */
async function runEach(file: string, feeds: Record<string, ort.Tensor>[]): Promise<ort.InferenceSession.OnnxValueMapType[]> {
  const session = await ort.InferenceSession.create(file, { executionProviders: ['cpu'], enableCpuMemArena: false });
  try {
    const results = [];
    for (const f of feeds) results.push(await session.run(f));
    return results;
  } finally {
    await session.release();
  }
}

/** Softmax nodes chunk-attention made (one per block). */
function blockSoftmaxes(g: Graph): number {
  return softmaxes(g).filter((n) => /_rows\d+$/.test(n.name)).length;
}

/** The fixture with each attention's baddbmm `empty` multiplied by the scale instead of 0: a bias the rewrites must keep. */
function withBias(): Model {
  const model = loadModel(FIXTURE_MODEL);
  const g = model.graph;
  for (const s of softmaxes(g)) {
    const add = s.inputs[0]!.producer!;
    const mul = add.inputs[1]!.producer!;
    expect(mul.inputs[0]!.producer!.opType).toBe('ConstantOfShape');
    g.setInput(mul, 1, add.inputs[0]!.producer!.inputs[1]);
  }
  return model;
}

test('a biased attention is left whole, and compile says which rewrite matched nothing and why', () => {
  const model = withBias();
  const g = model.graph;
  const reasons = softmaxes(g).map((n) => matchAttention(g, n).reason);
  expect(reasons.every((r) => !!r && r.includes('attention mask or bias'))).toBe(true);
  const c = compileFixture(FIXTURE_MODEL, ['infer'], { model, inferChunkBytes: CHUNK_BYTES });
  const s = siteOf(c.sites, 'infer', 'chunk-attention');
  expect([s.found, s.matched, s.rewritten]).toEqual([44, 0, 0]);
  const lines = rewriteSummary(c.sites);
  expect(lines).toContain('  rewrites in infer.onnx: chunk-attention 0 of 44 Softmax sites matched, 0 rewritten');
  const warning = lines.find((l) => l.startsWith('  warning: chunk-attention: 0 of 44 Softmax sites matched in infer.onnx'));
  expect(warning).toContain('44: its scores have a Mul added (an attention mask or bias');
});

test("zeros whose shape is not the scores' are not dropped: the Add could broadcast the scores", () => {
  const model = loadModel(FIXTURE_MODEL);
  const g = model.graph;
  const s = softmaxes(g)[0];
  const zeros = s.inputs[0]!.producer!.inputs[1]!.producer!.inputs[0]!.producer!;
  expect(zeros.opType).toBe('ConstantOfShape');
  // [q.shape[0], q.shape[1], k.shape[1]] -> [q.shape[0], q.shape[1], q.shape[0]]
  const concat = zeros.inputs[0]!.producer!;
  g.setInput(concat, 2, concat.inputs[0]);
  expect(matchAttention(g, s).reason).toBe("axis 2 of its added zeros is not shown to be the scores' (it could broadcast them)");
  // The others are as they were.
  expect(softmaxes(g).filter((n) => matchAttention(g, n).match).length).toBe(31);
});

test('hollowc compile prints, per artifact, how many sites each memory rewrite matched and rewrote', async () => {
  const dir = tempDir('hollowc-real-attention-cli-');
  const spec = path.join(dir, 'dog.hollow');
  fs.writeFileSync(
    spec,
    [
      'model sd15',
      'hollow preset "39.2%"',
      'lora rank 4 alpha 4',
      'lora targets "attn1.*" "attn2.*"',
      'shape sample [1, 4, 16, 16]',
      'shape encoder_hidden_states [1, 7, 32]',
      // The fixture's level-0 self-attention maps are 1 MiB (16 blocks each); the others 64 KiB or less stay whole.
      'chunks infer_attention 64KiB',
      'emit precompute infer',
      '',
    ].join('\n'),
  );
  const run = await runCli(['compile', FIXTURE_MODEL_OPSET14, spec, '-o', path.join(dir, 'out')]);
  expect(run.stderr).toBe('');
  expect(run.code).toBe(0);
  expect(run.stdout).toContain(
    '  rewrites in precompute.onnx: chunk-attention 14 of 14 Softmax sites matched, 2 rewritten (12 small enough to leave)\n',
  );
  expect(run.stdout).toMatch(/ {2}rewrites in infer\.onnx: chunk-attention 44 of 44 Softmax sites matched, \d+ rewritten/);
  expect(run.stdout).not.toContain('warning');
});

test("the zeros' shape may take an axis by Gather(Shape(k), [i]) with no Unsqueeze: k's columns pass, k's batch axis does not", () => {
  const g = loadModel(FIXTURE_MODEL).graph;
  const s = softmaxes(g)[0];
  const concat = s.inputs[0]!.producer!.inputs[1]!.producer!.inputs[0]!.producer!.inputs[0]!.producer!;
  expect(concat.opType).toBe('Concat');
  // Unsqueeze(Gather(Shape(k), 1)) -> Gather(Shape(k), [1])
  const shapeOfK = concat.inputs[2]!.producer!.inputs[0]!.producer!.inputs[0]!;
  expect(shapeOfK.producer!.opType).toBe('Shape');
  const b = new GraphBuilder(g);
  g.setInput(concat, 2, b.op('Gather', [shapeOfK, b.int64s([1])], { axis: 0 }));
  expect(matchAttention(g, s).match?.zeroBias).toBe(s.inputs[0]!.producer);
  g.setInput(concat, 2, b.op('Gather', [shapeOfK, b.int64s([0])], { axis: 0 }));
  expect(matchAttention(g, s).reason).toBe("axis 2 of its added zeros is not shown to be the scores' (it could broadcast them)");
});
