/**
 * `hollowc train` under `train base` on a builder-made tiny SD 1.5 (39.2% cut): the base weights of
 * up_blocks.3 and conv_out train beside LoRA, from their compiled values; host AdamW and train.onnx
 * agree; a run killed after a checkpoint and resumed ends bit for bit where a straight run does,
 * with float32 and with 8-bit moments (`optimizer adamw8bit`), whose checkpoints hold the moments
 * as bytes and block scales.
 */
import * as fs from 'fs';
import * as path from 'path';
import { compileSpec } from '../cli/api/compile-spec';
import { checkSpecFile } from '../cli/api/spec';
import { loadUNet } from '../cli/api/unet';
import { CompileManifest, expAvgName, quantizedCodesName, quantizedScalesName } from '../compiler/manifest';
import { buildUNet } from '../models/builder';
import { FAMILIES } from '../models/families';
import { readSafetensors, toFloat32 } from '../runtime/formats/safetensors';
import { loadTrainingData } from '../runtime/store/training-data';
import { precompute } from '../runtime/store/precompute';
import { TRAINED_BASE_FILE, initialBaseValues } from '../runtime/train/base-weights';
import { CHECKPOINT_FILE, readCheckpoint } from '../runtime/train/checkpoint';
import { TrainOptions, train } from '../runtime/train/train';
import { trainKilledAt, writeData } from './runtime-fake-train';
import { exportUnet } from '../cli/api/export-unet';
import { generate } from '../runtime/sampling/two-path';
import { loadModel, readTensorBytes } from '../compiler/serde';
import { findBaseParameters } from '../passes/lib/base-parameters';
import { tempDir, tinyTrainBaseSpec } from './support/fixture';

const v = FAMILIES.sd15.tiny;
let dir: string;
let dataDir: string;
let unetFile: string;

beforeAll(async () => {
  dir = tempDir('hollowc-train-base-run-');
  unetFile = (await buildUNet(v.config, { outDir: path.join(dir, 'model'), seed: 3 })).file;
  dataDir = writeData(path.join(dir, 'samples'), 'sd15', { instances: 3, classes: 0 });
}, 120_000);

/** A compiled folder with a precomputed store of 4 records. */
async function compiled(name: string, extra: string[]): Promise<{ out: string; manifest: CompileManifest }> {
  const spec = path.join(dir, `${name}.hollow`);
  fs.writeFileSync(spec, tinyTrainBaseSpec(extra));
  const out = path.join(dir, name);
  const unet = loadUNet(unetFile);
  const manifest = compileSpec(unet, checkSpecFile(unet, spec), { out });
  await precompute({ out, data: loadTrainingData(dataDir), count: 4 });
  return { out, manifest };
}

/** A copy of a compiled folder with its store (artifacts and store files hard-linked), to train in. */
function copyOf(src: string, name: string): string {
  const dst = path.join(dir, name);
  const link = (from: string, to: string) => {
    fs.mkdirSync(to, { recursive: true });
    for (const f of fs.readdirSync(from)) {
      const s = path.join(from, f);
      if (fs.statSync(s).isDirectory()) link(s, path.join(to, f));
      else fs.linkSync(s, path.join(to, f));
    }
  };
  link(src, dst);
  fs.rmSync(path.join(dst, 'train'), { recursive: true, force: true });
  return dst;
}

const baseValues = (out: string) => {
  const f = readSafetensors(path.join(out, TRAINED_BASE_FILE));
  return new Map([...f.tensors].map(([k, t]) => [k, toFloat32(t, k)]));
};
const bytesOf = (file: string) => fs.readFileSync(file);

/** A straight run to `steps`, and one stopped after step `killAt` (a checkpoint at `checkpointAt`) and resumed. */
async function straightAndResumed(src: string, tag: string, options: Partial<TrainOptions>, steps: number, killAt: number) {
  const straight = copyOf(src, `${tag}-straight`);
  await train({ out: straight, steps, checkpointEvery: 2, ...options });
  const killed = copyOf(src, `${tag}-killed`);
  await expect(
    train({
      out: killed,
      steps,
      checkpointEvery: 2,
      ...options,
      onStep: (s) => {
        if (s.step === killAt) throw new Error('simulated kill');
      },
    }),
  ).rejects.toThrow('simulated kill');
  expect(fs.existsSync(path.join(killed, TRAINED_BASE_FILE))).toBe(false);
  await train({ out: killed, steps, checkpointEvery: 2, resume: true, ...options });
  return { straight, killed };
}

describe('train base "up_blocks.3.*" "conv_out" beside LoRA, float32 moments', () => {
  let out: string;
  let manifest: CompileManifest;
  beforeAll(async () => {
    ({ out, manifest } = await compiled('fp32', ['optimizer adamw lr 1e-3']));
  }, 300_000);

  test('the run trains the base weights from their compiled values and writes them by diffusers name', async () => {
    const run = copyOf(out, 'fp32-run');
    const start = initialBaseValues(run, manifest);
    expect([...start.keys()]).toEqual(manifest.trainBase!.map((p) => p.name));
    const r = await train({ out: run, steps: 4 });
    expect(r.optimizer).toBe('host');
    expect(r.baseFile).toBe(path.join(run, TRAINED_BASE_FILE));
    const trained = baseValues(run);
    expect([...trained.keys()].sort()).toEqual(manifest.trainBase!.map((p) => p.name).sort());
    for (const p of manifest.trainBase!) {
      expect(trained.get(p.name)!.length).toBe(p.shape.reduce((a, b) => a * b, 1));
      // every weight moved (AdamW's first steps move each value by about lr)
      const moved = trained.get(p.name)!.reduce((m, x, i) => Math.max(m, Math.abs(x - start.get(p.name)![i])), 0);
      expect({ name: p.name, moved: moved > 1e-4 && moved < 1e-2 }).toEqual({ name: p.name, moved: true });
    }
    expect(fs.existsSync(path.join(run, 'lora.safetensors'))).toBe(true);
    // the run exports: a stored-transposed weight of the ONNX UNet holds the trained torch-layout value, transposed back
    const exported = path.join(dir, 'fp32-run-onnx');
    exportUnet({ out: run, format: 'onnx', output: exported });
    const toQ = findBaseParameters(loadModel(path.join(exported, 'model.onnx')).graph).find(
      (p) => p.name === 'up_blocks.3.attentions.0.transformer_blocks.0.attn1.to_q.weight',
    )!;
    expect(toQ.layout).toBe('transposed');
    const stored = new Float32Array(Uint8Array.from(readTensorBytes(toQ.value.initializer!)).buffer);
    const [outF, inF] = toQ.shape;
    const want = trained.get(toQ.name)!;
    for (let o = 0; o < outF; o++) for (let i = 0; i < inF; i++) expect(stored[i * outF + o]).toBe(want[o * inF + i]);
    const cp = readCheckpoint(path.join(run, 'train', CHECKPOINT_FILE));
    expect(cp.state.params).toEqual([
      ...manifest.lora.targets.filter((t) => t.trained).flatMap((t) => [t.lora_A.name, t.lora_B.name]),
      ...manifest.trainBase!.map((p) => p.name),
    ]);
  }, 300_000);

  test('the two-path sampler refuses the folder: infer.onnx would sample without the trained base weights', async () => {
    const c = { encoderHiddenStates: { data: new Float32Array(7 * 32), shape: [7, 32] } };
    await expect(generate({ out, prompt: c, classPrompt: c, steps: 1, guidance: 1, scheduler: 'ddim', seed: 1 })).rejects.toThrow(
      /trains base weights \(train base\), which infer.onnx does not take: export the fine-tuned UNet/,
    );
  });

  test('host AdamW after grads.onnx and train.onnx give the same losses and weights', async () => {
    const host = copyOf(out, 'fp32-host');
    const graph = copyOf(out, 'fp32-graph');
    const a = await train({ out: host, steps: 3, optimizer: 'host' });
    const b = await train({ out: graph, steps: 3, optimizer: 'graph' });
    expect(b.losses).toEqual(a.losses);
    const [x, y] = [baseValues(host), baseValues(graph)];
    let worst = 0;
    for (const [name, value] of x) worst = Math.max(worst, ...value.map((t, i) => Math.abs(t - y.get(name)![i])));
    // onnxruntime's exp may differ from Math.exp by an ulp in β^t (host-adamw.ts): at most a few ulps of the weights
    expect(worst).toBeLessThan(1e-6);
  }, 300_000);

  test('a run killed after a checkpoint and resumed ends bit for bit as a straight one', async () => {
    const { straight, killed } = await straightAndResumed(out, 'fp32', {}, 6, 3);
    expect(bytesOf(path.join(killed, TRAINED_BASE_FILE)).equals(bytesOf(path.join(straight, TRAINED_BASE_FILE)))).toBe(true);
    expect(bytesOf(path.join(killed, 'train', CHECKPOINT_FILE)).equals(bytesOf(path.join(straight, 'train', CHECKPOINT_FILE)))).toBe(true);
  }, 300_000);
});

describe('optimizer adamw8bit', () => {
  let out: string;
  let manifest: CompileManifest;
  beforeAll(async () => {
    ({ out, manifest } = await compiled('q8', ['optimizer adamw8bit lr 1e-3', 'train steps 16 checkpoint_every 2']));
  }, 300_000);

  test('no train.onnx; the checkpoint holds 8-bit moments of the large tensors; SIGKILL and resume is bit for bit', async () => {
    expect(manifest.artifacts.train).toBeUndefined();
    expect(manifest.training.optimizer.state).toBe('8bit');
    await expect(train({ out: copyOf(out, 'q8-graph'), steps: 1, optimizer: 'graph' })).rejects.toThrow(/only the host optimizer keeps/);
    const straight = copyOf(out, 'q8-straight');
    await train({ out: straight, steps: 16 });
    const killed = copyOf(out, 'q8-killed');
    const lastStep = await trainKilledAt(killed, 16, 5);
    expect(lastStep).toBeLessThan(16);
    expect(fs.existsSync(path.join(killed, TRAINED_BASE_FILE))).toBe(false);
    const r = await train({ out: killed, steps: 16, resume: true });
    expect(r.startStep).toBeGreaterThanOrEqual(4);
    expect(bytesOf(path.join(killed, TRAINED_BASE_FILE)).equals(bytesOf(path.join(straight, TRAINED_BASE_FILE)))).toBe(true);
    expect(bytesOf(path.join(killed, 'train', CHECKPOINT_FILE)).equals(bytesOf(path.join(straight, 'train', CHECKPOINT_FILE)))).toBe(true);
    const cp = readSafetensors(path.join(straight, 'train', CHECKPOINT_FILE));
    const large = manifest.trainBase!.find((p) => p.shape.reduce((a, b) => a * b, 1) >= 4096)!;
    const small = manifest.trainBase!.find((p) => p.shape.reduce((a, b) => a * b, 1) < 4096)!;
    expect(cp.tensors.get(quantizedCodesName(expAvgName(large.name)))!.dtype).toBe('U8');
    expect(cp.tensors.get(quantizedScalesName(expAvgName(large.name)))!.shape).toEqual([
      Math.ceil(large.shape.reduce((a, b) => a * b, 1) / 256),
    ]);
    expect(cp.tensors.has(expAvgName(large.name))).toBe(false);
    expect(cp.tensors.get(expAvgName(small.name))!.dtype).toBe('F32');
  }, 300_000);
});
