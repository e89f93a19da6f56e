/**
 * LoRA gradients of the real sd15-tiny export against PyTorch autograd (fixture `grads_full/`
 * for plain LoRA on the whole UNet, `grads/` for the 39.2% hollowed net on the precomputed
 * hollow activation). The fixture's loss is mean((out − target)²): our loss with
 * loss_weight = 1 at batch 1.
 */
import * as path from 'path';
import * as ort from 'onnxruntime-node';
import { Model } from '../compiler/ir';
import { loadModel } from '../compiler/serde';
import { readNpy } from '../runtime/formats/npy';
import { compile } from '../passes/compile-unet';
import {
  FIXTURE_DIR,
  FIXTURE_MODEL,
  FIXTURE_MODEL_OPSET14,
  fixtureGradientStep,
  fixtureManifest,
  relativeError,
  tempDir,
  trainingFor,
} from './support/fixture';

const manifest = fixtureManifest();
const TARGETS: string[] = manifest.lora.targets;
const LORA = { rank: manifest.lora.rank as number, alpha: manifest.lora.alpha as number };

function countOps(m: Model, op: string): number {
  return m.graph.nodes.filter((n) => n.opType === op).length;
}

interface Case {
  label: string;
  file: string;
  lastKeptDown: string | null;
  grads: 'grads' | 'grads_full';
  loss: string;
}

const CASES: Case[] = [
  { label: 'hollow none, opset 17', file: FIXTURE_MODEL, lastKeptDown: null, grads: 'grads_full', loss: 'ref/full_lora_loss.npy' },
  {
    label: 'hollow none, opset 14 (LayerNorm as ReduceMean/Pow/Sqrt)',
    file: FIXTURE_MODEL_OPSET14,
    lastKeptDown: null,
    grads: 'grads_full',
    loss: 'ref/full_lora_loss.npy',
  },
  { label: '39.2% cut (after 3-2), opset 17', file: FIXTURE_MODEL, lastKeptDown: '3-2', grads: 'grads', loss: 'ref/loss.npy' },
];

describe.each(CASES.map((c) => [c.label, c] as const))('LoRA gradients of sd15-tiny vs torch autograd: %s', (_label, c) => {
  it('reproduces the loss and every LoRA gradient (relative error < 1e-3 per tensor)', async () => {
    // The artifact as `hollowc compile` writes it: forward.onnx and grads.onnx sharing weights.
    const out = tempDir();
    const shapes: Record<string, number[]> = { sample: [1, 4, 16, 16], timestep: [1], encoder_hidden_states: [1, 7, 32] };
    const m = compile({
      modelFile: c.file,
      outDir: out,
      lastKeptDown: c.lastKeptDown,
      targets: TARGETS,
      lora: LORA,
      emit: ['forward', 'grads'],
      training: trainingFor('sd15', shapes),
    });
    const cut = m.cut;
    const grads = loadModel(path.join(out, 'grads.onnx'));
    // Frozen base weights get no gradient: not one weight-gradient convolution is added.
    expect(countOps(grads, 'Conv')).toBe(countOps(loadModel(path.join(out, 'forward.onnx')), 'Conv'));
    expect(grads.graph.nodes.every((n) => n.domain === '')).toBe(true);
    const { params, feeds, torchGradient } = fixtureGradientStep(m);
    expect(m.artifacts.grads!.outputs.map((o) => o.name)).toEqual(['loss', ...params.map((p) => `${p.name}.grad`)]);

    const session = await ort.InferenceSession.create(path.join(out, 'grads.onnx'), { executionProviders: ['cpu'] });
    const got = await session.run(feeds);
    await session.release();

    const wantLoss = readNpy(path.join(FIXTURE_DIR, c.loss)).data[0] as number;
    const gotLoss = (got.loss.data as Float32Array)[0];
    expect(got.loss.dims).toEqual([1]);
    expect(Math.abs(gotLoss - wantLoss) / wantLoss).toBeLessThan(1e-5);

    let worst = 0;
    let worstName = '';
    for (const p of params) {
      const err = relativeError(got[`${p.name}.grad`].data as Float32Array, torchGradient(p));
      if (!(err <= worst)) [worst, worstName] = [err, p.name];
    }
    // The fixture's gradients of the hollowed targets are exactly zero; ours have no parameter there.
    const hollowedTargets = TARGETS.filter((t) => !params.some((p) => p.module === t));
    for (const t of hollowedTargets) {
      for (const role of ['A', 'B'])
        expect((readNpy(path.join(FIXTURE_DIR, `${c.grads}/${t}.lora_${role}.npy`)).data as Float32Array).every((x) => x === 0)).toBe(true);
    }
    // eslint-disable-next-line no-console
    console.log(
      `${c.label}: grads.onnx has ${grads.graph.nodes.length} nodes; ` +
        `loss ${gotLoss} vs torch ${wantLoss}; ${params.length} gradient tensors, max relative error ${worst.toExponential(3)} (${worstName})` +
        (cut ? `; ${hollowedTargets.length} hollowed targets (torch grads all zero) have no parameter` : ''),
    );
    expect(params.length).toBe(cut ? 2 * (TARGETS.length - hollowedTargets.length) : 2 * TARGETS.length);
    expect(worst).toBeLessThan(1e-3);
  });
});
