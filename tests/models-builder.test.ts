/**
 * The model builder against the real torch.onnx.export of the sd15-tiny fixture (same
 * parameters per module, same op pattern per module up to named exporter no-ops, and, with the
 * fixture's weights copied in, the same output as PyTorch), plus tiny SD 1.5 / 2.1 / SDXL builds
 * run in onnxruntime at several batch sizes and latent sizes, seeds, full-size parameter counts
 * and the CLI.
 */
import * as fs from 'fs';
import * as path from 'path';
import * as ort from 'onnxruntime-node';
import { Command } from 'commander';
import { DataType } from '../compiler/dtype';
import { Graph, Model, Node, Value } from '../compiler/ir';
import { loadModel, readTensorBytes, saveModel } from '../compiler/serde';
import { verifyGraph } from '../compiler/verify';
import { parseUNetConfig, UNetConfig } from '../models/config';
import { FAMILIES, FamilyName } from '../models/families';
import { buildLayout, ownerOfModulePath } from '../models/layout';
import { paramCounts, unetParameters } from '../models/param-count';
import { buildUNet, BuildUNetResult, describeUNet, unetSignature } from '../models/builder/unet';
import { hashString, Rng } from '../models/random';
import { timestepFrequencies } from '../models/builder/embeddings';
import { registerModelBuild, resolveBuildConfig } from '../cli/model-build';
import { inspectJson } from '../cli/api/inspect';
import { analyzeUNet } from '../passes/lib/analyze-unet';
import { FIXTURE_MODEL, fixtureInputs, fixtureManifest, fixtureTensor, maxAbsDiff, tempDir } from './support/fixture';

const fixtureConfig = (): UNetConfig => parseUNetConfig(fixtureManifest().model.config_args, 'manifest.json model.config_args');

/** `/down_blocks.0/resnets.0/norm1/Mul` -> `down_blocks.0.resnets.0.norm1` */
function moduleOf(nodeName: string): string {
  return nodeName.split('/').filter(Boolean).slice(0, -1).join('.');
}

function initializerSize(v: Value): number {
  return v.initializer!.dims.reduce((a, b) => a * b, 1);
}

/** Each initializer's consumers, as `node name#input index` (names match between the two graphs). */
function useKey(v: Value): string {
  return v.uses
    .map((u) => `${u.node.name}#${u.index}`)
    .sort()
    .join('|');
}

function paramsByModule(g: Graph): Map<string, number> {
  const out = new Map<string, number>();
  for (const v of g.initializers()) {
    const modules = new Set(v.uses.map((u) => moduleOf(u.node.name)));
    expect(modules.size).toBe(1);
    const m = [...modules][0];
    out.set(m, (out.get(m) ?? 0) + initializerSize(v));
  }
  return out;
}

const sortedEntries = <T>(m: Map<string, T>) => [...m.entries()].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));

function constantValue(v: Value | null): Float32Array | undefined {
  const p = v?.producer;
  if (!p || p.opType !== 'Constant') return undefined;
  const a = p.attr('value');
  if (!a || a.type !== 'tensor' || a.value.dataType !== DataType.FLOAT) return undefined;
  const bytes = readTensorBytes(a.value);
  return new Float32Array(Uint8Array.from(bytes).buffer);
}

/**
 * The data-path ops (those computing on activations or weights, not on shapes) per module.
 * `skip` drops nodes; what it dropped is reported per reason.
 */
function dataOpsByModule(g: Graph, skip: (n: Node, isData: (v: Value | null) => boolean) => string | undefined = () => undefined) {
  const data = new Set<Value>(g.inputs);
  for (const v of g.initializers()) if (v.initializer!.dataType === DataType.FLOAT) data.add(v);
  const isData = (v: Value | null) => !!v && data.has(v);
  const ops = new Map<string, Map<string, number>>();
  const skipped = new Map<string, number>();
  for (const n of g.nodes) {
    if (n.opType === 'Shape' || n.opType === 'Constant' || n.opType === 'ConstantOfShape') continue;
    if (!n.inputs.some(isData)) continue;
    n.outputs.forEach((o) => data.add(o));
    const why = skip(n, isData);
    if (why) {
      skipped.set(why, (skipped.get(why) ?? 0) + 1);
      continue;
    }
    const m = moduleOf(n.name);
    const perModule = ops.get(m) ?? new Map<string, number>();
    perModule.set(n.opType, (perModule.get(n.opType) ?? 0) + 1);
    ops.set(m, perModule);
  }
  const flat = new Map(
    [...ops].map(([m, counts]) => [
      m,
      sortedEntries(counts)
        .map(([op, k]) => `${op}x${k}`)
        .join(' '),
    ]),
  );
  return { ops: flat, skipped };
}

/**
 * The exporter's data-path no-ops the builder leaves out, each recognised structurally in the
 * real export (not by name), so a new kind of difference fails the comparison.
 */
function exporterNoOp(n: Node, isData: (v: Value | null) => boolean): string | undefined {
  // float32 -> float32 casts: t_emb.to(dtype) at the root and in time_proj, and the cast back
  // after Softmax in every attention (upcast logic; a no-op in float32)
  if (n.opType === 'Cast') return 'Cast to float32 of a float32 tensor';
  // output_scale_factor (resnets) and rescale_output_factor (attention) are 1
  if (n.opType === 'Div') {
    const c = constantValue(n.inputs[1]);
    if (c && c.length === 1 && c[0] === 1) return 'Div by constant 1';
  }
  // baddbmm(empty, q, k^T, beta=0, alpha=scale): scores + 0 * ConstantOfShape(...)
  const zeroBias = (v: Value | null) =>
    !isData(v) && v?.producer?.opType === 'Mul' && v.producer.inputs.some((w) => w?.producer?.opType === 'ConstantOfShape');
  if (n.opType === 'Add' && n.inputs.some(zeroBias)) return 'Add of 0 * ConstantOfShape (baddbmm beta=0)';
  // flip_sin_to_cos: cat(sin, cos) then swap halves with two Slices and a Concat; the builder
  // concatenates (cos, sin) directly
  if (
    moduleOf(n.name) === 'time_proj' &&
    (n.opType === 'Slice' || (n.opType === 'Concat' && n.inputs.some((v) => v?.producer?.opType === 'Slice')))
  ) {
    return 'time_proj half swap (Slice, Slice, Concat)';
  }
  return undefined;
}

function ortFeeds(
  config: UNetConfig,
  dims: { batch: number; height: number; width: number; sequence: number },
  seed: number,
): Record<string, ort.Tensor> {
  const rng = new Rng(seed, 'inputs');
  const feeds: Record<string, ort.Tensor> = {};
  for (const input of unetSignature(config).inputs) {
    const shape = input.shape.map((d) => (typeof d === 'string' ? dims[d as keyof typeof dims] : d));
    const data = new Float32Array(shape.reduce((a, b) => a * b, 1));
    if (input.name === 'timestep') data.forEach((_, i) => (data[i] = 100 + 400 * i + 17));
    else if (input.name === 'time_ids') data.forEach((_, i) => (data[i] = [1024, 1024, 0, 0, 1024, 1024][i % 6]));
    else rng.fillUniform(data, 0, 1.7);
    feeds[input.name] = new ort.Tensor('float32', data, shape);
  }
  return feeds;
}

function stats(a: ArrayLike<number>) {
  let finite = true;
  let maxAbs = 0;
  let sum = 0;
  for (let i = 0; i < a.length; i++) {
    if (!Number.isFinite(a[i])) finite = false;
    maxAbs = Math.max(maxAbs, Math.abs(a[i]));
    sum += a[i] * a[i];
  }
  return { finite, maxAbs, rms: Math.sqrt(sum / a.length) };
}

describe('sd15-tiny built from the fixture config vs the real torch.onnx.export', () => {
  let built: BuildUNetResult;
  let mine: Model;
  let real: Model;

  beforeAll(async () => {
    built = await buildUNet(fixtureConfig(), { outDir: tempDir('hollowc-builder-'), seed: 7 });
    mine = loadModel(built.file);
    real = loadModel(FIXTURE_MODEL);
  });

  test('graph is valid; inputs, outputs, dynamic axes, opset and IR version match', () => {
    expect(verifyGraph(mine.graph)).toEqual([]);
    const sig = (m: Model) => ({
      inputs: m.graph.inputs.map((v) => [v.name, v.type]),
      outputs: m.graph.outputs.map((v) => [v.name, v.type]),
      opsets: m.opsetImports,
      ir: m.irVersion,
    });
    expect(sig(mine)).toEqual(sig(real));
  });

  test('every initializer matches one of the export: same consumer node and input, same dims, same naming', () => {
    const realByUse = new Map(real.graph.initializers().map((v) => [useKey(v), v]));
    const kind = (name: string) => (name.startsWith('onnx::') ? name.replace(/_\d+$/, '') : name);
    const mismatches: string[] = [];
    for (const v of mine.graph.initializers()) {
      const r = realByUse.get(useKey(v));
      if (!r) mismatches.push(`${v.name}: used by ${useKey(v)}, which uses no initializer in the export`);
      else if (kind(r.name) !== kind(v.name) || r.initializer!.dims.join() !== v.initializer!.dims.join()) {
        mismatches.push(`${v.name} [${v.initializer!.dims}] vs ${r.name} [${r.initializer!.dims}]`);
      }
      realByUse.delete(useKey(v));
    }
    expect(mismatches).toEqual([]);
    expect([...realByUse.values()].map((v) => v.name)).toEqual([]);
    expect(mine.graph.initializers().length).toBe(686);
  });

  test('parameter count per module and per block (paper ids) equals the export', () => {
    const mineCounts = paramsByModule(mine.graph);
    const realCounts = paramsByModule(real.graph);
    expect(sortedEntries(mineCounts)).toEqual(sortedEntries(realCounts));
    const layout = buildLayout(fixtureConfig());
    const byBlock = (counts: Map<string, number>) => {
      const out = new Map<string, number>();
      for (const [m, n] of counts) {
        const id = ownerOfModulePath(layout, m) ?? `unowned:${m}`;
        out.set(id, (out.get(id) ?? 0) + n);
      }
      return out;
    };
    expect(sortedEntries(byBlock(mineCounts))).toEqual(sortedEntries(byBlock(realCounts)));
    expect(sortedEntries(byBlock(mineCounts))).toEqual(sortedEntries(new Map(paramCounts(layout).byLayer)));
    const total = [...realCounts.values()].reduce((a, b) => a + b, 0);
    expect(built.parameterCount).toBe(total);
    expect(total).toBe(1_390_804);
  });

  test('data-path op types per module equal the export, up to the named exporter no-ops', () => {
    const a = dataOpsByModule(mine.graph);
    const b = dataOpsByModule(real.graph, exporterNoOp);
    expect(sortedEntries(a.ops)).toEqual(sortedEntries(b.ops));
    // What was left out of the export's count, and why (sd15-tiny: 4 blocks, 16 transformers).
    expect(Object.fromEntries(b.skipped)).toEqual({
      'Cast to float32 of a float32 tensor': 2 + 32,
      'Div by constant 1': 22 + 32,
      'Add of 0 * ConstantOfShape (baddbmm beta=0)': 32,
      'time_proj half swap (Slice, Slice, Concat)': 3,
    });
    // Nothing of ours is such a no-op.
    expect(dataOpsByModule(mine.graph, exporterNoOp).skipped.size).toBe(0);
  });

  test('skip Concats, upsampler Resizes and the hollow-activation tensor have the export names', () => {
    const names = (m: Model, op: string) =>
      m.graph.nodes
        .filter((n) => n.opType === op)
        .map((n) => n.name)
        .sort();
    for (const op of ['Concat', 'Resize', 'Conv', 'Gemm', 'LayerNormalization', 'InstanceNormalization', 'Softmax', 'Erf', 'Sin', 'Cos']) {
      const realNames = names(real, op).filter((n) => op !== 'Concat' || /^\/up_blocks\.\d+\/Concat(_\d+)?$/.test(n));
      const mineNames = names(mine, op).filter((n) => op !== 'Concat' || /^\/up_blocks\.\d+\/Concat(_\d+)?$/.test(n));
      expect(mineNames).toEqual(realNames);
    }
    expect(mine.graph.tryValue('/up_blocks.0/upsamplers.0/conv/Conv_output_0')).toBeDefined();
  });

  test('`hollowc inspect` agrees: family, blocks, ids, skip pairs, parameters per block, cuts and hollow activations', () => {
    const ours = analyzeUNet(mine.graph, built.file);
    const theirs = analyzeUNet(real.graph, FIXTURE_MODEL);
    // The one difference: a resnet's output is its residual `Add_1` here, the exporter's
    // `Div` by output_scale_factor (1) after it there; so a hollow activation that is a resnet
    // output has another tensor name (same value). Attention and upsampler outputs match.
    const resnetOutput = /^(\/(?:down_blocks\.\d+|mid_block|up_blocks\.\d+)\/resnets\.\d+)\/Div_output_0$/;
    const expected = inspectJson(theirs);
    let renamed = 0;
    for (const c of expected.cuts) {
      const m = resnetOutput.exec(c.hollowActivation);
      if (m) {
        c.hollowActivation = `${m[1]}/Add_1_output_0`;
        renamed++;
      }
    }
    expect(inspectJson(ours)).toEqual(expected);
    expect(renamed).toBe(3); // cuts after 4-2, 4-1, 3-3 (the others end in attentions or upsamplers)
    expect(ours.config).toEqual(theirs.config);
    // skip pairs and their Concat nodes (skip tensors that are resnet outputs differ as above)
    expect(ours.skips.map((k) => [k.index, k.producer, k.consumer, k.concat])).toEqual(
      theirs.skips.map((k) => [k.index, k.producer, k.consumer, k.concat]),
    );
    expect(expected.cuts.length).toBeGreaterThan(5);
  });

  test('timestep frequencies equal the exported constant', () => {
    const mul = real.graph.nodes.find((n) => n.name === '/time_proj/Mul')!;
    const exported = constantValue(mul.inputs[1])!;
    const ours = timestepFrequencies(16, 0);
    expect(maxAbsDiff(ours, exported)).toBeLessThanOrEqual(6e-8);
  });

  test('with the export weights copied in, the output equals PyTorch (batch 1 and 2) and so does the hollow activation', async () => {
    const realByUse = new Map(real.graph.initializers().map((v) => [useKey(v), v]));
    for (const v of mine.graph.initializers()) v.initializer = { ...v.initializer!, data: realByUse.get(useKey(v))!.initializer!.data };
    const dir = tempDir('hollowc-builder-patched-');
    const file = path.join(dir, 'patched.onnx');
    const hollow = '/up_blocks.0/upsamplers.0/conv/Conv_output_0';
    mine.graph.outputs.push(mine.graph.value(hollow));
    saveModel(mine, file, { externalData: 'inline' });
    const session = await ort.InferenceSession.create(file, { executionProviders: ['cpu'] });
    try {
      for (const batch of [1, 2] as const) {
        const ref = batch === 1 ? 'ref' : 'ref2';
        const out = await session.run(fixtureInputs(batch), ['out_sample', hollow]);
        const diff = maxAbsDiff(out.out_sample.data as Float32Array, fixtureTensor(`${ref}/full_out.npy`).data as Float32Array);
        const hdiff = maxAbsDiff(out[hollow].data as Float32Array, fixtureTensor(`${ref}/hollow_activation.npy`).data as Float32Array);
        expect(diff).toBeLessThan(1e-5);
        expect(hdiff).toBeLessThan(1e-5);
      }
    } finally {
      await session.release();
    }
  });
});

describe('tiny SD 1.5 / SD 2.1 / SDXL builds run in onnxruntime', () => {
  const families: FamilyName[] = ['sd15', 'sd21', 'sdxl'];
  test.each(families)('%s tiny: batch 1 and 2, latents 16x16 and 24x32, finite outputs of the sample shape', async (family) => {
    const config = FAMILIES[family].tiny.config;
    const built = await buildUNet(config, { outDir: tempDir(`hollowc-${family}-`), seed: 11 });
    expect(built.parameterCount).toBe(paramCounts(buildLayout(config)).total);
    const graph = loadModel(built.file).graph;
    expect(verifyGraph(graph)).toEqual([]);
    // hollowc's own analysis recognises the family, the blocks and the parameter total
    const analysis = analyzeUNet(graph, built.file);
    expect([analysis.family, analysis.totalParams]).toEqual([family, built.parameterCount]);
    const session = await ort.InferenceSession.create(built.file, { executionProviders: ['cpu'] });
    try {
      const outputs: Float32Array[] = [];
      for (const [batch, height, width] of [
        [1, 16, 16],
        [2, 16, 16],
        [1, 24, 32],
        [2, 24, 32],
      ]) {
        const feeds = ortFeeds(config, { batch, height, width, sequence: 5 }, batch * 1000 + height);
        const out = (await session.run(feeds)).out_sample;
        expect(out.dims).toEqual(feeds.sample.dims);
        const s = stats(out.data as Float32Array);
        expect(s.finite).toBe(true);
        // O(1) activations: neither vanishing nor blowing up through the random network
        expect(s.rms).toBeGreaterThan(0.01);
        expect(s.maxAbs).toBeLessThan(100);
        outputs.push(out.data as Float32Array);
      }
      // batch 2 computes each sample independently: sample 0 of the batch-2 run equals a batch-1 run
      const feeds2 = ortFeeds(config, { batch: 2, height: 16, width: 16, sequence: 5 }, 7);
      const one: Record<string, ort.Tensor> = {};
      for (const [k, t] of Object.entries(feeds2)) {
        const per = (t.data as Float32Array).length / 2;
        one[k] = new ort.Tensor('float32', (t.data as Float32Array).slice(0, per), [1, ...t.dims.slice(1)]);
      }
      const both = (await session.run(feeds2)).out_sample.data as Float32Array;
      const single = (await session.run(one)).out_sample.data as Float32Array;
      expect(maxAbsDiff(both.subarray(0, single.length), single)).toBeLessThan(1e-4);
      // a single timestep [1] is broadcast to the batch, as in the export
      const sameT = { ...feeds2, timestep: new ort.Tensor('float32', Float32Array.of(117, 117), [2]) };
      const shared = { ...feeds2, timestep: new ort.Tensor('float32', Float32Array.of(117), [1]) };
      const expected = (await session.run(sameT)).out_sample.data as Float32Array;
      expect(maxAbsDiff((await session.run(shared)).out_sample.data as Float32Array, expected)).toBe(0);
    } finally {
      await session.release();
    }
  });
});

describe('weights', () => {
  test('same seed gives the same bytes, another seed other weights; none constant, norms near 1', async () => {
    const config = FAMILIES.sd15.tiny.config;
    const [a, b, c] = await Promise.all([7, 7, 8].map((seed) => buildUNet(config, { outDir: tempDir('hollowc-seed-'), seed })));
    const bytes = (r: BuildUNetResult) => [fs.readFileSync(r.file), fs.readFileSync(r.dataFile)];
    const [ga, da] = bytes(a);
    const [gb, db] = bytes(b);
    const [gc, dc] = bytes(c);
    expect(ga.equals(gb) && da.equals(db)).toBe(true);
    expect(da.length).toBe(dc.length);
    expect(da.equals(dc)).toBe(false);
    expect(ga.equals(gc)).toBe(false); // inline small weights and the recorded seed differ too

    const model = loadModel(a.file);
    const valuesA = new Map(
      model.graph.initializers().map((v) => [v.name, new Float32Array(Uint8Array.from(readTensorBytes(v.initializer!)).buffer)]),
    );
    const valuesC = new Map(
      loadModel(c.file)
        .graph.initializers()
        .map((v) => [v.name, new Float32Array(Uint8Array.from(readTensorBytes(v.initializer!)).buffer)]),
    );
    for (const p of a.parameters) {
      const x = valuesA.get(p.initializer)!;
      expect(x.length).toBe(p.torchShape.reduce((s, d) => s * d, 1));
      const min = Math.min(...x);
      const max = Math.max(...x);
      expect(max).toBeGreaterThan(min); // never constant (so never all-zero)
      const mean = x.reduce((s, v) => s + v, 0) / x.length;
      if (/norm[^.]*\.weight$/.test(p.torchName)) {
        expect(min).toBeGreaterThan(0.85);
        expect(max).toBeLessThan(1.15);
      } else {
        expect(Math.abs(mean)).toBeLessThan(0.35);
        expect(max).toBeLessThanOrEqual(1);
      }
      expect(maxAbsDiff(x, valuesC.get(p.initializer)!)).toBeGreaterThan(0);
    }
  });

  test('values depend on seed and parameter name only: a weight is the same in differently shaped models', async () => {
    const small = await buildUNet(FAMILIES.sd15.tiny.config, { outDir: tempDir('hollowc-a-'), seed: 3 });
    const other = await buildUNet({ ...FAMILIES.sd15.tiny.config, layers_per_block: 1 }, { outDir: tempDir('hollowc-b-'), seed: 3 });
    const read = (r: BuildUNetResult, torchName: string) => {
      const p = r.parameters.find((x) => x.torchName === torchName)!;
      return Buffer.from(readTensorBytes(loadModel(r.file).graph.value(p.initializer).initializer!));
    };
    for (const name of [
      'conv_in.weight',
      'down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight',
      'down_blocks.0.resnets.0.norm1.weight',
    ]) {
      expect(read(small, name).equals(read(other, name))).toBe(true);
    }
  });

  test('the PRNG is reproducible and roughly uniform', () => {
    const x = new Float32Array(100_000);
    new Rng(1, 'w').fillUniform(x, 0, 1);
    const y = new Float32Array(100_000);
    new Rng(1, 'w').fillUniform(y, 0, 1);
    expect(Buffer.from(x.buffer).equals(Buffer.from(y.buffer))).toBe(true);
    const mean = x.reduce((s, v) => s + v, 0) / x.length;
    const variance = x.reduce((s, v) => s + (v - mean) ** 2, 0) / x.length;
    expect(Math.abs(mean)).toBeLessThan(0.01);
    expect(Math.abs(variance - 1 / 3)).toBeLessThan(0.01);
    expect(Math.min(...x)).toBeGreaterThanOrEqual(-1);
    expect(Math.max(...x)).toBeLessThan(1);
    expect(hashString('a')).not.toBe(hashString('b'));
  });
});

describe('full-size graphs (no weights written)', () => {
  test.each([
    ['sd15', 859_520_964],
    ['sd21', 865_910_724],
    ['sdxl', 2_567_463_684],
  ] as const)('%s has %d parameters, exactly the PyTorch state_dict of the layout', (family, expected) => {
    const config = FAMILIES[family].full.config;
    const d = describeUNet(config);
    expect(d.parameterCount).toBe(expected);
    expect(verifyGraph(d.model.graph)).toEqual([]);
    const expectedParams = unetParameters(buildLayout(config))
      .map((p) => `${p.name} [${p.shape}]`)
      .sort();
    expect(d.parameters.map((p) => `${p.torchName} [${p.torchShape}]`).sort()).toEqual(expectedParams);
    // transposed MatMul weights and [C,1,1] GroupNorm affine weights hold the same numbers of values
    for (const p of d.parameters) {
      const v = d.model.graph.value(p.initializer);
      expect(v.initializer!.dims).toEqual(
        p.layout === 'transposed' ? [...p.torchShape].reverse() : p.layout === 'channel' ? [p.torchShape[0], 1, 1] : p.torchShape,
      );
    }
  });

  test('SDXL: text_time inputs, 10-layer transformers, add_embedding', () => {
    const config = FAMILIES.sdxl.full.config;
    const sig = unetSignature(config);
    expect(sig.inputs.map((i) => `${i.name}[${i.shape}]`)).toEqual([
      'sample[batch,4,height,width]',
      'timestep[batch]',
      'encoder_hidden_states[batch,sequence,2048]',
      'text_embeds[batch,1280]',
      'time_ids[batch,6]',
    ]);
    const d = describeUNet(config);
    const names = new Set(d.model.graph.nodes.map((n) => n.name));
    expect(names.has('/mid_block/attentions.0/transformer_blocks.9/attn2/to_k/MatMul')).toBe(true);
    expect(names.has('/down_blocks.2/attentions.1/transformer_blocks.9/ff/net.2/MatMul')).toBe(true);
    expect(names.has('/add_embedding/linear_2/Gemm')).toBe(true);
    expect(names.has('/add_time_proj/Sin')).toBe(true);
    // SD 2.x / SDXL linear projections: proj_in/proj_out are MatMul, not 1x1 Conv
    expect(names.has('/down_blocks.1/attentions.0/proj_in/MatMul')).toBe(true);
    expect(names.has('/down_blocks.1/attentions.0/proj_in/Conv')).toBe(false);
  });
});

describe('hollowc model build', () => {
  function program(): Command {
    const p = new Command().exitOverride();
    registerModelBuild(p);
    return p;
  }

  test('builds a family preset and prints files, parameter count, time and peak RSS', async () => {
    const dir = tempDir('hollowc-cli-');
    const lines: string[] = [];
    const spy = jest.spyOn(console, 'log').mockImplementation((...a: unknown[]) => void lines.push(a.join(' ')));
    try {
      await program().parseAsync(['node', 'hollowc', 'model', 'build', 'sd21', '--tiny', '-o', dir, '--seed', '5']);
    } finally {
      spy.mockRestore();
    }
    expect(fs.existsSync(path.join(dir, 'model.onnx'))).toBe(true);
    expect(fs.existsSync(path.join(dir, 'model.onnx_data'))).toBe(true);
    const text = lines.join('\n');
    expect(text).toContain('sd21-tiny');
    expect(text).toContain(paramCounts(buildLayout(FAMILIES.sd21.tiny.config)).total.toLocaleString('en-US'));
    expect(text).toMatch(/peak RSS: \d+\.\d MiB/);
    expect(text).toMatch(/time: \d+\.\d s/);
  });

  test('--config reads a diffusers config.json; the fixture config gives the fixture architecture', () => {
    const dir = tempDir('hollowc-cfg-');
    const file = path.join(dir, 'config.json');
    fs.writeFileSync(
      file,
      JSON.stringify({ _class_name: 'UNet2DConditionModel', some_unknown_field: 1, ...fixtureManifest().model.config_args }),
    );
    const { config } = resolveBuildConfig(undefined, { config: file, out: dir });
    expect(config).toEqual(fixtureConfig());
  });

  test('usage errors: size flag required, one source only; bad configs name the file', () => {
    expect(() => resolveBuildConfig('sd15', { out: 'x' })).toThrow(/--tiny.*--full/);
    expect(() => resolveBuildConfig('sd15', { out: 'x', tiny: true, full: true })).toThrow(/only one/);
    expect(() => resolveBuildConfig('sd3', { out: 'x', tiny: true })).toThrow(/unknown model family "sd3"/);
    expect(() => resolveBuildConfig(undefined, { out: 'x' })).toThrow(/--config/);
    const dir = tempDir('hollowc-cfg-');
    const bad = path.join(dir, 'config.json');
    fs.writeFileSync(
      bad,
      JSON.stringify({
        block_out_channels: [32, 64],
        down_block_types: ['DownBlock2D', 'DownBlock2D'],
        up_block_types: ['UpBlock2D', 'UpBlock2D'],
        only_cross_attention: true,
      }),
    );
    expect(() => resolveBuildConfig(undefined, { out: dir, config: bad })).toThrow(
      new RegExp(`${bad.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}.*only_cross_attention`),
    );
    fs.writeFileSync(bad, '{ not json');
    expect(() => resolveBuildConfig(undefined, { out: dir, config: bad })).toThrow(/not valid JSON/);
    expect(() => resolveBuildConfig(undefined, { out: dir, config: path.join(dir, 'missing.json') })).toThrow(/missing\.json.*ENOENT/);
    expect(() => resolveBuildConfig('sd15', { out: dir, config: bad })).toThrow(/either a family/);
  });

  test('a bad --seed is a usage error', async () => {
    await expect(
      program().parseAsync(['node', 'hollowc', 'model', 'build', 'sd15', '--tiny', '-o', tempDir(), '--seed', '-3']),
    ).rejects.toThrow();
  });
});
