/** Paths and loaders for the PyTorch reference fixture copied into tests/fixtures. */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import * as ort from 'onnxruntime-node';
import type { CompileManifest, GradientPrecision, RecomputeMode, TrainingSettings } from '../../compiler/manifest';
import { FAMILIES, type FamilyName } from '../../models/families';
import { defaultTrainingSettings } from '../../models/training-defaults';
import { readNpy } from '../../runtime/formats/npy';
import { CompileRequest, compile } from '../../passes/compile-unet';

export const FIXTURE_DIR = path.join(__dirname, '..', 'fixtures', 'diffusers', 'sd15-tiny');
export const FIXTURE_MODEL = path.join(FIXTURE_DIR, 'model.onnx');
export const FIXTURE_MODEL_OPSET14 = path.join(FIXTURE_DIR, 'model-opset14.onnx');

export function fixtureManifest(): any {
  return JSON.parse(fs.readFileSync(path.join(FIXTURE_DIR, 'manifest.json'), 'utf8'));
}

export function fixtureTensor(rel: string): ort.Tensor {
  const a = readNpy(path.join(FIXTURE_DIR, rel));
  return new ort.Tensor(a.dtype === 'float32' ? 'float32' : (a.dtype as 'int64'), a.data as Float32Array, a.shape);
}

/** UNet inputs of case 1 (`inputs/`, batch 1) or case 2 (`inputs2/`, batch 2). */
export function fixtureInputs(batch: 1 | 2 = 1): Record<string, ort.Tensor> {
  const dir = batch === 1 ? 'inputs' : 'inputs2';
  return {
    sample: fixtureTensor(`${dir}/sample.npy`),
    timestep: fixtureTensor(`${dir}/timestep.npy`),
    encoder_hidden_states: fixtureTensor(`${dir}/encoder_hidden_states.npy`),
  };
}

/** The fixture's input shapes (case 1). */
export const FIXTURE_SHAPES: Record<string, number[]> = { sample: [1, 4, 16, 16], timestep: [1], encoder_hidden_states: [1, 7, 32] };

/**
 * `compile` of the fixture's 39.2% cut with its LoRA targets, emitting `grads.onnx`, into a new
 * folder; `passes` leaves passes out or sets split-attention's threshold and block size (tests of
 * one rewrite).
 */
export function compileFixtureGrads(
  base: 'fp32' | 'int8' | 'fp16' = 'fp32',
  prefix = 'hollowc-fixture-',
  passes: Pick<
    CompileRequest,
    'skipPasses' | 'splitAttentionAboveBytes' | 'attentionChunkBytes' | 'feedForwardChunkBytes' | 'convGradientColBytes'
  > & { recompute?: RecomputeMode; gradients?: GradientPrecision } = {},
): { out: string; m: CompileManifest } {
  const { recompute = 'cheap', gradients, ...rest } = passes;
  const fixture = fixtureManifest();
  const out = tempDir(prefix);
  const m = compile({
    modelFile: FIXTURE_MODEL,
    outDir: out,
    lastKeptDown: '3-2',
    targets: fixture.lora.targets,
    lora: { rank: fixture.lora.rank, alpha: fixture.lora.alpha },
    emit: ['grads'],
    training: withGradients({ ...trainingFor('sd15', FIXTURE_SHAPES), base, recompute }, gradients),
    ...rest,
  });
  return { out, m };
}

function withGradients(t: TrainingSettings, gradients: GradientPrecision | undefined): TrainingSettings {
  return gradients ? { ...t, optimizer: { ...t.optimizer, gradients } } : t;
}

export interface FixtureParam {
  name: string;
  module: string;
  role: 'A' | 'B';
}

/**
 * One grads.onnx step of a compile of the fixture (case 1): the trained LoRA parameters, the feeds
 * (the fixture's LoRA values; the hollow activation when `manifest` has a cut) and PyTorch's
 * gradient of each parameter (`grads/` for the 39.2% cut, `grads_full/` without one).
 */
export function fixtureGradientStep(manifest: CompileManifest): {
  params: FixtureParam[];
  feeds: Record<string, ort.Tensor>;
  torchGradient: (p: FixtureParam) => Float32Array;
} {
  const params = manifest.lora.targets
    .filter((t) => t.trained)
    .flatMap((t) => [
      { name: t.lora_A.name, module: t.module, role: 'A' as const },
      { name: t.lora_B.name, module: t.module, role: 'B' as const },
    ]);
  const feeds: Record<string, ort.Tensor> = {
    ...fixtureInputs(1),
    target: fixtureTensor('ref/target.npy'),
    loss_weight: new ort.Tensor('float32', Float32Array.of(1), [1]),
  };
  if (manifest.cut) feeds.hollow_activation = fixtureTensor('ref/hollow_activation.npy');
  for (const p of params) feeds[p.name] = fixtureTensor(`lora/${p.module}.lora_${p.role}.npy`);
  const dir = manifest.cut ? 'grads' : 'grads_full';
  return {
    params,
    feeds,
    torchGradient: (p) => readNpy(path.join(FIXTURE_DIR, `${dir}/${p.module}.lora_${p.role}.npy`)).data as Float32Array,
  };
}

/** Outputs of `a` equal to those of `b` bit for bit. */
export function identicalOutputs(a: ort.InferenceSession.OnnxValueMapType, b: ort.InferenceSession.OnnxValueMapType): string[] {
  if (Object.keys(a).sort().join() !== Object.keys(b).sort().join()) throw new Error('the two runs have different outputs');
  return Object.keys(a).filter((name) => {
    const [x, y] = [a[name].data as Float32Array, b[name].data as Float32Array];
    return Buffer.from(x.buffer, x.byteOffset, x.byteLength).equals(Buffer.from(y.buffer, y.byteOffset, y.byteLength));
  });
}

export function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`length ${a.length} vs ${b.length}`);
  let m = 0;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i] - b[i]);
    if (!(d <= m)) m = Number.isNaN(d) ? Infinity : d;
  }
  return m;
}

/** ‖got − want‖ / ‖want‖ over the whole tensor. */
export function relativeError(got: ArrayLike<number>, want: ArrayLike<number>): number {
  if (got.length !== want.length) throw new Error(`length ${got.length} vs ${want.length}`);
  let num = 0;
  let den = 0;
  for (let i = 0; i < want.length; i++) {
    num += (got[i] - want[i]) ** 2;
    den += want[i] ** 2;
  }
  return Math.sqrt(num / den);
}

export function tempDir(prefix = 'hollowc-test-'): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), prefix));
}

export async function runModel(file: string, feeds: Record<string, ort.Tensor>, outputs?: string[]): Promise<Record<string, ort.Tensor>> {
  const session = await ort.InferenceSession.create(file, { executionProviders: ['cpu'], enableCpuMemArena: false });
  try {
    return outputs ? await session.run(feeds, outputs) : await session.run(feeds);
  } finally {
    await session.release();
  }
}

/** Training settings for tests: the family defaults with the given static shapes, batch and AdamW constants. */
export function trainingFor(
  family: FamilyName,
  shapes: Record<string, number[]>,
  batch = 1,
  optimizer?: { betas: readonly [number, number]; eps: number; weightDecay: number },
): TrainingSettings {
  const d = defaultTrainingSettings(family);
  return {
    ...d,
    shapes,
    batch,
    optimizer: optimizer
      ? { betas: [optimizer.betas[0], optimizer.betas[1]], eps: optimizer.eps, weightDecay: optimizer.weightDecay }
      : d.optimizer,
  };
}

/** A small spec for the tiny sd15 builder UNet: 39.2%, rank 2 on one projection, precompute and infer. */
export const TINY_SD15_SPEC = [
  'model sd15',
  'hollow preset "39.2%"',
  'shape sample [1, 4, 16, 16]',
  'lora rank 2',
  'lora targets "attn1.to_q"',
  'emit precompute infer',
  '',
].join('\n');

/**
 * The tiny sd15 builder UNet's partial fine-tuning spec: 39.2%, `train base "up_blocks.3.*"
 * "conv_out"` beside LoRA rank 2 on attn2.to_q, seed 5, and `lines` after them.
 */
export function tinyTrainBaseSpec(lines: readonly string[] = []): string {
  const v = FAMILIES.sd15.tiny;
  return [
    'model sd15',
    'hollow preset "39.2%"',
    `shape sample [1, ${v.shapes.sample.slice(1).join(', ')}]`,
    `shape encoder_hidden_states [1, ${v.shapes.encoder_hidden_states.slice(1).join(', ')}]`,
    'lora rank 2',
    'lora targets "attn2.to_q"',
    'train base "up_blocks.3.*" "conv_out"',
    'seed 5',
    ...lines,
    '',
  ].join('\n');
}
