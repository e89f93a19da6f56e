/**
 * A fine-tuned sd15-tiny fixture without a training run: compiled with `train base` on some
 * modules and LoRA on others, `trained-base.safetensors` and `lora.safetensors` written with
 * values a run could have reached (the compiled values plus seeded noise; LoRA A and B nonzero), and
 * the fixture's diffusers config.json. For the export tests and the oracle check of the export.
 */
import * as fs from 'fs';
import * as path from 'path';
import * as ort from 'onnxruntime-node';
import { CompileManifest } from '../../compiler/manifest';
import { compile } from '../../passes/compile-unet';
import { findBaseParameters } from '../../passes/lib/base-parameters';
import { loadModel } from '../../compiler/serde';
import { writeLoraFile } from '../../runtime/formats/lora-file';
import { TRAINED_LORA_FILE } from '../../runtime/formats/lora-format';
import { TRAINED_BASE_FILE, initialBaseValues, writeTrainedBase } from '../../runtime/train/base-weights';
import { FIXTURE_MODEL, FIXTURE_SHAPES, fixtureInputs, fixtureManifest, fixtureTensor, trainingFor } from './fixture';
import { normal, rng } from './gradient-check';

export const TUNED_BASE = /^(up_blocks\.3\.|conv_out\.|down_blocks\.0\.attentions\.0\.)/;
// The first has its base weight trained too: both go into the exported weight.
export const TUNED_LORA = [
  'down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q',
  'down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q',
  'up_blocks.2.resnets.1.conv1',
];

export interface FineTuned {
  out: string;
  manifest: CompileManifest;
  config: string;
  /** The trained values fed to grads.onnx (LoRA and base weights), by input name. */
  values: Map<string, Float32Array>;
}

/** The fixture's diffusers config.json, from its manifest (what from_pretrained reads). */
export function fixtureConfig(dir: string): string {
  const config = { ...fixtureManifest().model.config_full, _class_name: 'UNet2DConditionModel', _diffusers_version: '0.21.4' };
  delete config._use_default_values;
  const file = path.join(dir, 'config.json');
  fs.writeFileSync(file, JSON.stringify(config, null, 2));
  return file;
}

export function fineTunedFixture(dir: string): FineTuned {
  return fineTuned(dir, FIXTURE_MODEL, FIXTURE_SHAPES, TUNED_LORA);
}

/** `model` fine-tuned as above: the base weights TUNED_BASE names, LoRA on `lora`, no hollow. */
export function fineTuned(dir: string, model: string, shapes: Record<string, number[]>, lora: string[]): FineTuned {
  const out = path.join(dir, 'compiled');
  const names = findBaseParameters(loadModel(model).graph)
    .map((p) => p.name)
    .filter((n) => TUNED_BASE.test(n));
  const manifest = compile({
    modelFile: model,
    outDir: out,
    lastKeptDown: null,
    targets: lora,
    trainBase: names,
    lora: { rank: 2, alpha: 4 },
    emit: ['grads'],
    training: trainingFor('sd15', shapes),
  });
  const gauss = normal(rng(17));
  const values = new Map<string, Float32Array>();
  for (const [name, v] of initialBaseValues(out, manifest))
    values.set(
      name,
      v.map((x) => x + 0.05 * gauss()),
    );
  writeTrainedBase(path.join(out, TRAINED_BASE_FILE), manifest, values, {});
  const modules = manifest.lora.targets.map((t) => {
    const a = Float32Array.from({ length: t.lora_A.shape.reduce((x, y) => x * y, 1) }, () => 0.1 * gauss());
    const b = Float32Array.from({ length: t.lora_B.shape.reduce((x, y) => x * y, 1) }, () => 0.1 * gauss());
    values.set(t.lora_A.name, a);
    values.set(t.lora_B.name, b);
    return { module: t.module, a: { shape: t.lora_A.shape, data: a }, b: { shape: t.lora_B.shape, data: b } };
  });
  if (modules.length)
    writeLoraFile(path.join(out, TRAINED_LORA_FILE), 'peft', { rank: manifest.lora.rank, alpha: manifest.lora.alpha, modules });
  return { out, manifest, config: fixtureConfig(dir), values };
}

/** grads.onnx's loss on the fixture's case 1 with the fine-tuned values: what the exported UNet must reproduce. */
export async function fineTunedLoss(t: FineTuned): Promise<number> {
  const feeds: Record<string, ort.Tensor> = {
    ...fixtureInputs(1),
    target: fixtureTensor('ref/target.npy'),
    loss_weight: new ort.Tensor('float32', Float32Array.of(1), [1]),
  };
  for (const i of t.manifest.artifacts.grads!.inputs)
    if (t.values.has(i.name)) feeds[i.name] = new ort.Tensor('float32', t.values.get(i.name)!, i.shape as number[]);
  const session = await ort.InferenceSession.create(path.join(t.out, 'grads.onnx'), { executionProviders: ['cpu'] });
  try {
    return (await session.run(feeds, ['loss'])).loss.data[0] as number;
  } finally {
    await session.release();
  }
}
