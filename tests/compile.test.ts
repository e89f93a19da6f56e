import * as fs from 'fs';
import * as path from 'path';
import * as ort from 'onnxruntime-node';
import { CompileManifest } from '../compiler/manifest';
import { compile } from '../passes/compile-unet';
import { loadModel } from '../compiler/serde';
import { readNpy } from '../runtime/formats/npy';
import {
  FIXTURE_DIR,
  FIXTURE_MODEL,
  fixtureInputs,
  fixtureManifest,
  fixtureTensor,
  maxAbsDiff,
  runModel,
  tempDir,
} from './support/fixture';

const manifest = fixtureManifest();
const TARGETS: string[] = manifest.lora.targets;

function loraFeeds(names: string[], zeroB = false): Record<string, ort.Tensor> {
  const feeds: Record<string, ort.Tensor> = {};
  for (const name of names) {
    const m = /^(.*)\.lora_([AB])\.weight$/.exec(name);
    if (!m) continue;
    const t = fixtureTensor(`lora/${m[1]}.lora_${m[2]}.npy`);
    feeds[name] = zeroB && m[2] === 'B' ? new ort.Tensor('float32', new Float32Array(t.size), t.dims) : t;
  }
  return feeds;
}

function ref(batch: 1 | 2, name: string): Float32Array {
  return readNpy(path.join(FIXTURE_DIR, batch === 1 ? 'ref' : 'ref2', `${name}.npy`)).data as Float32Array;
}

describe('compile the fixture at the 39.2% cut with the fixture LoRA (rank 4, alpha 4)', () => {
  const out = tempDir();
  let m: CompileManifest;
  beforeAll(() => {
    m = compile({
      modelFile: FIXTURE_MODEL,
      outDir: out,
      lastKeptDown: '3-2',
      targets: TARGETS,
      lora: { rank: 4, alpha: 4 },
      emit: ['precompute', 'infer', 'forward'],
    });
  });

  test('writes the artifacts, one weights file and a manifest', () => {
    expect(fs.readdirSync(out).sort()).toEqual(['forward.onnx', 'infer.onnx', 'manifest.json', 'precompute.onnx', 'weights.onnx_data']);
    const onDisk = JSON.parse(fs.readFileSync(path.join(out, 'manifest.json'), 'utf8'));
    expect(onDisk).toEqual(JSON.parse(JSON.stringify(m)));
    expect(m.cut!.hollowedBlocks).toEqual(manifest.hollow.hollowed_modules);
    // The LoRA outside the hollow, counted from the fixture's own tensors (torch's lora/ files).
    const hollowedRef = manifest.reference.grad_summary as Record<string, { hollowed: boolean }>;
    const loraCount = TARGETS.filter((t) => !hollowedRef[t]?.hollowed).reduce(
      (a, t) => a + fixtureTensor(`lora/${t}.lora_A.npy`).size + fixtureTensor(`lora/${t}.lora_B.npy`).size,
      0,
    );
    expect(loraCount).toBe(30720);
    expect(m.parameters).toEqual({ full: 1390804, heldDuringTraining: 1390804 - 482352, lora: loraCount });
    expect(m.lora.targets).toHaveLength(TARGETS.length);
    const hollowed = m.lora.targets.filter((t) => !t.trained).map((t) => t.module);
    expect(hollowed.every((t) => /^(down_blocks\.3|mid_block|up_blocks\.0)\./.test(t))).toBe(true);
    const hollowedInFixture = Object.entries(manifest.reference.grad_summary as Record<string, { hollowed: boolean }>)
      .filter(([, v]) => v.hollowed)
      .map(([k]) => k);
    expect(hollowed.sort()).toEqual(hollowedInFixture.sort());
  });

  test('weights are stored once for all artifacts', () => {
    // Each artifact graph file holds only small constants; the weights file is the UNet's once.
    const weights = fs.statSync(path.join(out, 'weights.onnx_data')).size;
    const parameterBytes = 4 * 1390804;
    expect(weights).toBeGreaterThan(0.9 * parameterBytes);
    expect(weights).toBeLessThan(1.1 * parameterBytes);
    for (const f of ['precompute.onnx', 'infer.onnx', 'forward.onnx']) {
      const inline = loadModel(path.join(out, f))
        .graph.initializers()
        .filter((v) => v.initializer!.data.kind === 'inline' && v.initializer!.dims.reduce((a, b) => a * b, 1) >= 256);
      expect([f, inline.map((v) => v.name)]).toEqual([f, []]);
    }
  });

  test('artifact interfaces', () => {
    const names = (d: { name: string }[]) => d.map((x) => x.name);
    expect(names(m.artifacts.precompute!.inputs)).toEqual(['sample', 'timestep', 'encoder_hidden_states']);
    expect(m.artifacts.precompute!.outputs).toEqual([
      { name: 'hollow_activation', dtype: 'float32', shape: ['batch', 48, 'height/4', 'width/4'] },
    ]);
    const inferInputs = names(m.artifacts.infer!.inputs);
    expect(inferInputs.slice(0, 4)).toEqual(['sample', 'timestep', 'encoder_hidden_states', 'base_encoder_hidden_states']);
    expect(inferInputs).toContain('down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight');
    expect(inferInputs.some((n) => n.startsWith('mid_block.'))).toBe(false);
    expect(names(m.artifacts.infer!.outputs)).toEqual(['out_sample']);
    expect(names(m.artifacts.forward!.inputs)).toContain('hollow_activation');
  });

  test.each([1, 2] as const)('precompute.onnx = PyTorch hollow activation (batch %i)', async (batch) => {
    const r = await runModel(path.join(out, 'precompute.onnx'), fixtureInputs(batch));
    expect(maxAbsDiff(r.hollow_activation.data as Float32Array, ref(batch, 'hollow_activation'))).toBeLessThan(1e-4);
  });

  test.each([1, 2] as const)(
    'infer.onnx with the fixture LoRA = PyTorch hollowed_out; with B = 0 = the base UNet (batch %i)',
    async (batch) => {
      const inputs = fixtureInputs(batch);
      const loraNames = m.artifacts.infer!.inputs.map((i) => i.name);
      const base = { ...inputs, base_encoder_hidden_states: inputs.encoder_hidden_states };
      const withLora = await runModel(path.join(out, 'infer.onnx'), { ...base, ...loraFeeds(loraNames) });
      expect(maxAbsDiff(withLora.out_sample.data as Float32Array, ref(batch, 'hollowed_out'))).toBeLessThan(1e-4);
      const zeroB = await runModel(path.join(out, 'infer.onnx'), { ...base, ...loraFeeds(loraNames, true) });
      expect(maxAbsDiff(zeroB.out_sample.data as Float32Array, ref(batch, 'full_out'))).toBeLessThan(1e-4);
    },
  );

  test('forward.onnx (the hollowed net) from the stored activation = PyTorch hollowed_out', async () => {
    const feeds = {
      ...fixtureInputs(1),
      hollow_activation: fixtureTensor('ref/hollow_activation.npy'),
      ...loraFeeds(m.artifacts.forward!.inputs.map((i) => i.name)),
    };
    const r = await runModel(path.join(out, 'forward.onnx'), feeds);
    expect(maxAbsDiff(r.out_sample.data as Float32Array, ref(1, 'hollowed_out'))).toBeLessThan(1e-4);
  });
});

describe('compile with hollow none', () => {
  test('infer.onnx is the UNet with LoRA everywhere = PyTorch full_lora_out', async () => {
    const out = tempDir();
    const m = compile({
      modelFile: FIXTURE_MODEL,
      outDir: out,
      lastKeptDown: null,
      targets: TARGETS,
      lora: { rank: 4, alpha: 4 },
      emit: ['infer'],
    });
    expect(m.cut).toBeNull();
    expect(m.parameters.heldDuringTraining).toBe(m.parameters.full);
    const names = m.artifacts.infer!.inputs.map((i) => i.name);
    expect(names).not.toContain('base_encoder_hidden_states');
    const r = await runModel(path.join(out, 'infer.onnx'), { ...fixtureInputs(1), ...loraFeeds(names) });
    expect(maxAbsDiff(r.out_sample.data as Float32Array, ref(1, 'full_lora_out'))).toBeLessThan(1e-4);
  });
});

describe('a failed compile leaves the output folder as it was', () => {
  test('bad target after a good compile', () => {
    const out = tempDir();
    compile({
      modelFile: FIXTURE_MODEL,
      outDir: out,
      lastKeptDown: '3-2',
      targets: TARGETS.slice(0, 2),
      lora: { rank: 4, alpha: 4 },
      emit: ['precompute'],
    });
    const before = fs.readdirSync(out).map((f) => [f, fs.readFileSync(path.join(out, f)).toString('base64')]);
    expect(() =>
      compile({
        modelFile: FIXTURE_MODEL,
        outDir: out,
        lastKeptDown: '3-2',
        targets: ['up_blocks.7.attentions.0.proj_in'],
        lora: { rank: 4, alpha: 4 },
        emit: ['precompute', 'infer'],
      }),
    ).toThrow(`${FIXTURE_MODEL}: no Linear or Conv layer for LoRA target up_blocks.7.attentions.0.proj_in`);
    const after = fs.readdirSync(out).map((f) => [f, fs.readFileSync(path.join(out, f)).toString('base64')]);
    expect(after).toEqual(before);
  });

  test('a cut that does not exist', () => {
    const out = tempDir();
    expect(() =>
      compile({
        modelFile: FIXTURE_MODEL,
        outDir: out,
        lastKeptDown: '5-1',
        targets: [],
        lora: { rank: 4, alpha: 4 },
        emit: ['precompute'],
      }),
    ).toThrow('no valid cut keeps the down path through 5-1 (valid: 4-2 4-1 3-3 3-2 3-1 2-3 2-2 2-1 1-3 1-2 1-1)');
    expect(fs.readdirSync(out)).toEqual([]);
  });
});
