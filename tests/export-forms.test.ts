/**
 * The export forms users bring (README "Supported export forms"), built by the builder from one
 * seed so that every form holds the same weights:
 * - every timestep form (float [batch], int64 [steps], float 0-d) through compile (the spec
 *   without `shape timestep`), precompute, a batch-2 training run and generate, each giving what
 *   the float [batch] form gives;
 * - the dynamo exporter's graphs (torch >= 2.9's default: scopes only in node metadata, torch-layout
 *   parameters under their names, opset 18), tiny SD 1.5 and SDXL: the same analysis, compile, a
 *   training step and LoRA export, infer.onnx with B = 0 equal to the base UNet, and agreement with
 *   the TorchScript form built from the same seed.
 */
import * as fs from 'fs';
import * as path from 'path';
import { bakeCompiled } from '../cli/api/bake';
import { compileFromSpec } from '../cli/api/compile-spec';
import * as ort from 'onnxruntime-node';
import { CompileManifest, TensorDescription } from '../compiler/manifest';
import { NAME_SCOPES_KEY } from '../compiler/module-scope';
import { loadModel } from '../compiler/serde';
import { Exporter } from '../models/builder/nn';
import { FamilyName } from '../models/families';
import { findPreset } from '../models/presets';
import { analyzeUNet } from '../passes/lib/analyze-unet';
import { exportLora } from '../runtime/train/export-lora';
import { buildUNet } from '../models/builder';
import { TIMESTEP_FORMS, TimestepForm } from '../models/builder/unet';
import { FAMILIES } from '../models/families';
import { precompute } from '../runtime/store/precompute';
import { Sampler } from '../runtime/sampling/two-path';
import { readSafetensors, toFloat32 } from '../runtime/formats/safetensors';
import { Store } from '../runtime/store/store';
import { loadTrainingData, readConditioning } from '../runtime/store/training-data';
import { train } from '../runtime/train/train';
import { writeData } from './runtime-fake-train';
import { runCli } from './support/cli';
import { maxAbsDiff, runModel, tempDir } from './support/fixture';

const SEED = 5;
let root: string;
let data: string;

beforeAll(() => {
  root = tempDir('hollowc-export-forms-');
  data = writeData(path.join(root, 'samples'), 'sd15', { instances: 2, classes: 1 });
});

/** No `shape timestep` line: its shape comes from the graph. */
const TIMESTEP_SPEC = [
  'model sd15',
  'hollow preset "39.2%"',
  'shape sample [2, 4, 16, 16]',
  'shape encoder_hidden_states [2, 7, 32]',
  'lora rank 2',
  'lora targets "attn1.to_q" "attn2.to_v"',
  'optimizer adamw lr 0.01',
  'train steps 3 batch 2',
  'emit precompute grads train infer',
  '',
].join('\n');

interface FormRun {
  manifest: CompileManifest;
  activations: Float32Array[];
  losses: number[];
  lora: Map<string, Float32Array>;
  latents: Float32Array;
}

async function runTimestepForm(form: TimestepForm): Promise<FormRun> {
  const dir = path.join(root, `timestep-${form}`);
  const { file } = await buildUNet(FAMILIES.sd15.tiny.config, { outDir: path.join(dir, 'model'), seed: SEED, form: { timestep: form } });
  const spec = path.join(dir, 'spec.hollow');
  fs.writeFileSync(spec, TIMESTEP_SPEC);
  const out = path.join(dir, 'out');
  const manifest = compileFromSpec(file, spec, { out });
  await precompute({ out, data: loadTrainingData(data), count: 4 });
  const { store } = Store.open(path.join(out, 'store'), { readOnly: true });
  const activations = [0, 1, 2, 3].map((i) => Float32Array.from(store.read(i).activation));
  const losses: number[] = [];
  await train({ out, steps: 3, onStep: (s) => losses.push(s.loss) });
  const lora = new Map([...readSafetensors(path.join(out, 'lora.safetensors')).tensors].map(([k, t]) => [k, toFloat32(t)]));
  const sampler = await Sampler.open({ out });
  try {
    const prompt = readConditioning(path.join(data, 'instance_prompt.npy'));
    const classPrompt = readConditioning(path.join(data, 'class_prompt.npy'));
    const r = await sampler.sample({ prompt, classPrompt, steps: 3, guidance: 7.5, seed: 11, scheduler: 'ddim' });
    return { manifest, activations, losses, lora, latents: r.latents };
  } finally {
    await sampler.release();
  }
}

describe('timestep forms: precompute, train and generate', () => {
  const runs = new Map<TimestepForm, FormRun>();
  beforeAll(async () => {
    for (const form of TIMESTEP_FORMS) runs.set(form, await runTimestepForm(form));
  }, 240_000);

  test.each([
    ['float', 'float32', ['batch']],
    ['int64', 'int64', ['steps']],
    ['scalar', 'float32', []],
  ] as const)('%s: artifacts take the timestep as the export declares it; training graphs one per sample', (form, dtype, shape) => {
    const m = runs.get(form)!.manifest;
    const timestep = (a: 'precompute' | 'infer' | 'grads' | 'train') => m.artifacts[a]!.inputs.find((i) => i.name === 'timestep');
    expect(timestep('precompute')).toEqual({ name: 'timestep', dtype, shape });
    expect(timestep('infer')).toEqual({ name: 'timestep', dtype, shape });
    expect(timestep('grads')).toEqual({ name: 'timestep', dtype, shape: [2] });
    expect(timestep('train')).toEqual({ name: 'timestep', dtype, shape: [2] });
  });

  test.each(['int64', 'scalar'] as const)('%s gives what float [batch] gives: store, losses, LoRA, sampled latents', (form) => {
    const want = runs.get('float')!;
    const got = runs.get(form)!;
    got.activations.forEach((a, i) => expect(maxAbsDiff(a, want.activations[i])).toBe(0));
    expect(got.losses).toHaveLength(3);
    expect(got.losses).toEqual(want.losses);
    expect([...got.lora.keys()].sort()).toEqual([...want.lora.keys()].sort());
    for (const [k, v] of got.lora) expect([k, maxAbsDiff(v, want.lora.get(k)!)]).toEqual([k, 0]);
    expect(got.latents.every(Number.isFinite)).toBe(true);
    expect(maxAbsDiff(got.latents, want.latents)).toBe(0);
  });
});

/** max |got - want| / max |want| */
function relMax(got: ArrayLike<number>, want: ArrayLike<number>): number {
  let ref = 0;
  for (let i = 0; i < want.length; i++) ref = Math.max(ref, Math.abs(want[i]));
  return maxAbsDiff(got, want) / ref;
}

/** Seeded values in [-1, 1). */
function values(n: number, seed: number): Float32Array {
  let x = seed >>> 0 || 1;
  return Float32Array.from({ length: n }, () => ((x = (Math.imul(x, 1664525) + 1013904223) >>> 0), x / 2 ** 31 - 1));
}

/**
 * Feeds for an artifact's inputs at batch 1 and the tiny family shapes: the same values for a
 * name whatever the artifact (`base_*` inputs get their path-2 twin's), LoRA A random, LoRA B zero.
 */
function feedsFor(inputs: readonly TensorDescription[], family: FamilyName): Record<string, ort.Tensor> {
  const shapes = FAMILIES[family].tiny.shapes;
  const dims: Record<string, number> = {
    batch: 1,
    steps: 1,
    height: shapes.sample[2],
    width: shapes.sample[3],
    sequence: shapes.encoder_hidden_states[1],
  };
  const feeds: Record<string, ort.Tensor> = {};
  for (const d of inputs) {
    const shape = d.shape.map((x) => (typeof x === 'number' ? x : dims[String(x)]));
    const n = shape.reduce((a, b) => a * b, 1);
    const name = d.name.replace(/^base_/, '');
    if (name === 'timestep')
      feeds[d.name] = new ort.Tensor(
        'float32',
        Float32Array.from({ length: n }, () => 601),
        shape,
      );
    else if (name.endsWith('.lora_B.weight')) feeds[d.name] = new ort.Tensor('float32', new Float32Array(n), shape);
    else if (name === 'time_ids')
      feeds[d.name] = new ort.Tensor(
        'float32',
        Float32Array.from({ length: n }, (_, i) => [16, 16, 0, 0, 16, 16][i % 6]),
        shape,
      );
    else
      feeds[d.name] = new ort.Tensor(
        'float32',
        values(
          n,
          [...name].reduce((a, c) => a * 31 + c.charCodeAt(0), 7),
        ).map((v) => (name.includes('lora') ? 0.1 * v : v)),
        shape,
      );
  }
  return feeds;
}

/** The feeds with the LoRA inputs replaced by a trained LoRA (peft keys `unet.<input name>`). */
function withLora(feeds: Record<string, ort.Tensor>, lora: Map<string, Float32Array>): Record<string, ort.Tensor> {
  const out = { ...feeds };
  for (const [name, t] of Object.entries(feeds)) {
    const v = lora.get(`unet.${name}`);
    if (v) out[name] = new ort.Tensor('float32', v, t.dims);
  }
  return out;
}

function describeInputs(file: string): TensorDescription[] {
  return loadModel(file).graph.inputs.map((v) => ({ name: v.name, dtype: 'float32', shape: v.type?.shape ?? [] }));
}

interface ExporterRun {
  model: string;
  out: string;
  manifest: CompileManifest;
  lora: Map<string, Float32Array>;
  losses: number[];
}

async function runExporter(family: FamilyName, exporter: Exporter): Promise<ExporterRun> {
  const dir = path.join(root, `${family}-${exporter}`);
  const v = FAMILIES[family].tiny;
  const { file } = await buildUNet(v.config, { outDir: path.join(dir, 'model'), seed: SEED, form: { exporter } });
  const spec = path.join(dir, 'spec.hollow');
  fs.writeFileSync(
    spec,
    [
      `model ${family}`,
      `hollow preset "${family === 'sdxl' ? 'sdxl-mid' : '39.2%'}"`,
      `shape sample [1, ${v.shapes.sample.slice(1).join(', ')}]`,
      `shape encoder_hidden_states [1, ${v.shapes.encoder_hidden_states.slice(1).join(', ')}]`,
      ...(v.shapes.text_embeds ? [`shape text_embeds [1, ${v.shapes.text_embeds[1]}]`] : []),
      'lora rank 2',
      'lora targets "attn1.to_q" "attn1.to_k" "attn1.to_v" "attn1.to_out.0" "attn2.*"',
      'optimizer adamw lr 0.01',
      'train steps 2 batch 1',
      'emit precompute grads train infer',
      '',
    ].join('\n'),
  );
  const out = path.join(dir, 'out');
  const manifest = compileFromSpec(file, spec, { out });
  const samples = writeData(path.join(dir, 'samples'), family, { instances: 2, classes: 1 });
  await precompute({ out, data: loadTrainingData(samples), count: 2 });
  const losses: number[] = [];
  await train({ out, steps: 2, onStep: (s) => losses.push(s.loss) });
  const exported = exportLora({ out, format: 'peft', output: path.join(dir, 'peft.safetensors') });
  const lora = new Map([...readSafetensors(exported.file).tensors].map(([k, t]) => [k, toFloat32(t)]));
  return { model: file, out, manifest, lora, losses };
}

describe.each(['sd15', 'sdxl'] as const)('dynamo exporter form, %s tiny', (family) => {
  let ts: ExporterRun;
  let dyn: ExporterRun;
  beforeAll(async () => {
    ts = await runExporter(family, 'torchscript');
    dyn = await runExporter(family, 'dynamo');
  }, 240_000);

  test('the graph is what the dynamo exporter writes: opset 18, node_<fx> names, scopes only in metadata, parameter-named torch-layout weights', () => {
    const m = loadModel(dyn.model);
    const g = m.graph;
    expect(m.opsetVersion('')).toBe(18);
    expect(g.nodes.every((n) => /^node_\w+$/.test(n.name))).toBe(true);
    expect(g.nodes.filter((n) => !n.metadataProps?.some((e) => e.key === NAME_SCOPES_KEY))).toEqual([]);
    expect([...g.initializers()].filter((v) => v.name.startsWith('onnx::'))).toEqual([]);
    const q = g.value(`down_blocks.${family === 'sdxl' ? 1 : 0}.attentions.0.transformer_blocks.0.attn1.to_q.weight`);
    const qTs = loadModel(ts.model).graph;
    // torch's [out, in], read through a Transpose; the TorchScript form stores [in, out] anonymously
    expect(q.uses.map((u) => u.node.opType)).toEqual(['Transpose']);
    expect(q.initializer!.dims).toEqual(
      [...qTs.value(qTs.nodes.find((n) => n.name.endsWith('attn1/to_q/MatMul'))!.inputs[1]!.name).initializer!.dims].reverse(),
    );
  });

  test('the same analysis as the TorchScript form: family, blocks, parameters, skips, cuts', () => {
    const a = analyzeUNet(loadModel(dyn.model).graph, dyn.model);
    const b = analyzeUNet(loadModel(ts.model).graph, ts.model);
    expect(a.family).toBe(family);
    expect(a.config).toEqual(b.config);
    expect(a.totalParams).toBe(b.totalParams);
    expect(a.blocks).toEqual(b.blocks);
    expect(a.skips.map((s) => [s.index, s.producer, s.consumer])).toEqual(b.skips.map((s) => [s.index, s.producer, s.consumer]));
    expect(a.cuts.map((c) => [c.lastKeptDown, c.removedParams])).toEqual(b.cuts.map((c) => [c.lastKeptDown, c.removedParams]));
    expect(a.cuts.find((c) => c.lastKeptDown === findPreset(family, family === 'sdxl' ? 'sdxl-mid' : '39.2%').lastKeptDown)).toBeDefined();
  });

  test('compile finds the same LoRA targets, cut and parameter counts', () => {
    const strip = (m: CompileManifest) => ({
      family: m.family,
      cut: { ...m.cut, hollowActivation: { shape: m.cut!.hollowActivation.shape } },
      parameters: m.parameters,
      lora: m.lora,
    });
    expect(strip(dyn.manifest)).toEqual(strip(ts.manifest));
    expect(dyn.manifest.lora.targets.length).toBeGreaterThanOrEqual(8);
  });

  test('the training graph does the same work: only the weight Transposes and Unsqueezes differ (rematerialize reads a weight through them)', () => {
    const ops = (out: string) => {
      const counts: Record<string, number> = {};
      for (const n of loadModel(path.join(out, 'grads.onnx')).graph.nodes)
        if (!['Transpose', 'Unsqueeze', 'Constant'].includes(n.opType)) counts[n.opType] = (counts[n.opType] ?? 0) + 1;
      return counts;
    };
    expect(ops(dyn.out)).toEqual(ops(ts.out));
  });

  test('recompute blocks finds the same transformer blocks in both forms (scopes from metadata, pass-made nodes by their inputs)', () => {
    const clones = (run: ExporterRun) => {
      const spec = path.join(run.out, '..', 'blocks.hollow');
      fs.writeFileSync(spec, `${fs.readFileSync(path.join(run.out, '..', 'spec.hollow'), 'utf8').replace(/^emit .*$/m, 'emit grads')}recompute blocks\n`);
      const out = path.join(run.out, '..', 'out-blocks');
      compileFromSpec(run.model, spec, { out });
      const counts: Record<string, number> = {};
      for (const n of loadModel(path.join(out, 'grads.onnx')).graph.nodes)
        if (n.name.endsWith('/recompute') && !['Transpose', 'Unsqueeze'].includes(n.opType)) counts[n.opType] = (counts[n.opType] ?? 0) + 1;
      return counts;
    };
    const [a, b] = [clones(dyn), clones(ts)];
    expect(a).toEqual(b);
    // The blocks' projections are recomputed too: more matmul clones than the cheap mode's.
    const cheapMatMuls = loadModel(path.join(ts.out, 'grads.onnx')).graph.nodes.filter((n) => n.opType === 'MatMul' && n.name.endsWith('/recompute')).length;
    expect(b.MatMul).toBeGreaterThan(cheapMatMuls);
  });

  test('the base UNet agrees with the TorchScript form; infer.onnx with B = 0 is the base UNet', async () => {
    const inputs = describeInputs(ts.model);
    const base = (await runModel(ts.model, feedsFor(inputs, family))).out_sample.data as Float32Array;
    const dynBase = (await runModel(dyn.model, feedsFor(inputs, family))).out_sample.data as Float32Array;
    const infer = (await runModel(path.join(dyn.out, 'infer.onnx'), feedsFor(dyn.manifest.artifacts.infer!.inputs, family))).out_sample
      .data as Float32Array;
    const errors = { dynamoVsTorchscript: relMax(dynBase, base), inferB0VsBase: relMax(infer, dynBase) };
    console.log(`${family} dynamo form: ${JSON.stringify(errors)}`);
    expect(errors.dynamoVsTorchscript).toBeLessThan(1e-5);
    expect(errors.inferB0VsBase).toBeLessThan(1e-5);
  });

  test('precompute, a training step and the exported LoRA agree with the TorchScript form', async () => {
    const feeds = feedsFor(ts.manifest.artifacts.precompute!.inputs, family);
    const a = (await runModel(path.join(ts.out, 'precompute.onnx'), feeds)).hollow_activation.data as Float32Array;
    const b = (await runModel(path.join(dyn.out, 'precompute.onnx'), feeds)).hollow_activation.data as Float32Array;
    expect(relMax(b, a)).toBeLessThan(1e-5);
    expect(dyn.losses).toHaveLength(2);
    dyn.losses.forEach((l, i) => expect(Math.abs(l - ts.losses[i])).toBeLessThan(1e-5 * Math.abs(ts.losses[i])));
    expect([...dyn.lora.keys()].sort()).toEqual([...ts.lora.keys()].sort());
    let worst = 0;
    for (const [k, v] of dyn.lora) worst = Math.max(worst, relMax(v, ts.lora.get(k)!));
    console.log(
      `${family} dynamo form: losses ${JSON.stringify(dyn.losses)} vs ${JSON.stringify(ts.losses)}, LoRA after 2 steps max rel ${worst}`,
    );
    expect(worst).toBeLessThan(1e-4);
    // B moved off zero: the step trained something
    expect([...dyn.lora].some(([k, v]) => k.includes('lora_B') && v.some((x) => x !== 0))).toBe(true);
  });

  test('bake folds the trained LoRA into the torch-layout weights as into the pre-transposed ones', async () => {
    const baked = [ts, dyn].map((r) => ({ run: r, result: bakeCompiled(r.out, path.join(r.out, 'lora.safetensors')) }));
    expect(baked[1].result.folded).toBe(baked[0].result.folded);
    expect(baked[1].result.folded).toBeGreaterThan(0);
    const outputs = await Promise.all(
      baked.map(async ({ result }) => {
        const inputs = describeInputs(result.file);
        return (await runModel(result.file, feedsFor(inputs, family))).out_sample.data as Float32Array;
      }),
    );
    const inferWithLora = async (r: ExporterRun) =>
      (await runModel(path.join(r.out, 'infer.onnx'), withLora(feedsFor(r.manifest.artifacts.infer!.inputs, family), r.lora))).out_sample
        .data as Float32Array;
    const lora = await inferWithLora(dyn);
    // the LoRA on path 2 only, as in the TorchScript form (path 1's copies are told apart by name)
    expect(relMax(lora, await inferWithLora(ts))).toBeLessThan(1e-5);
    console.log(
      `${family} dynamo form: baked vs TorchScript baked ${relMax(outputs[1], outputs[0])}, vs infer.onnx with the LoRA fed ${relMax(outputs[1], lora)}`,
    );
    expect(relMax(outputs[1], outputs[0])).toBeLessThan(1e-5);
    expect(relMax(outputs[1], lora)).toBeLessThan(1e-4);
  });
});

describe('hollowc model build --exporter / --timestep', () => {
  test('builds the form asked for; inspect reads it', async () => {
    const out = path.join(root, 'cli-dynamo-int64');
    const built = await runCli(['model', 'build', 'sd15', '--tiny', '--exporter', 'dynamo', '--timestep', 'int64', '-o', out]);
    expect(built.code).toBe(0);
    const g = loadModel(path.join(out, 'model.onnx')).graph;
    expect(g.inputs.find((v) => v.name === 'timestep')!.type).toEqual({ elemType: 7, shape: ['steps'] });
    expect(g.nodes.every((n) => n.name.startsWith('node_'))).toBe(true);
    const inspected = await runCli(['inspect', path.join(out, 'model.onnx'), '--json']);
    expect(inspected.code).toBe(0);
    expect(JSON.parse(inspected.stdout).family).toBe('sd15');
  });

  test.each([
    ['--exporter', 'onnxscript', '--exporter must be one of torchscript, dynamo, got "onnxscript"'],
    ['--timestep', 'int32', '--timestep must be one of float, int64, scalar, got "int32"'],
  ])('%s %s: one line, nothing written', async (flag, value, message) => {
    const out = path.join(root, `cli-bad-${value}`);
    const r = await runCli(['model', 'build', 'sd15', '--tiny', flag, value, '-o', out]);
    expect({ code: r.code, stderr: r.stderr }).toEqual({ code: 1, stderr: `hollowc: error: ${message}\n` });
    expect(fs.existsSync(out)).toBe(false);
  });
});
