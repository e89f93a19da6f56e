/**
 * LoRA on convolutions (kohya-style: A [r, in, kh, kw] with the layer's stride and padding,
 * B [out, r, 1, 1]) and on Gemm-exported Linear layers (time_embedding): with B = 0 the merged
 * graph is the base UNet, and baking folds ΔW into the weights exactly as the branch computes.
 */
import * as fs from 'fs';
import * as path from 'path';
import * as ort from 'onnxruntime-node';
import { bakeCompiled } from '../cli/api/bake';
import { compile } from '../passes/compile-unet';
import { buildUNet } from '../models/builder';
import { FAMILIES } from '../models/families';
import { randomTensor } from './support/tensors';
import { writeLoraFile } from '../runtime/formats/lora-file';
import { maxAbsDiff, runModel, tempDir } from './support/fixture';

const TARGETS = [
  'down_blocks.0.resnets.0.conv1', // 3x3 conv, kept down path: shared with path 1 -> branch stays
  'up_blocks.3.resnets.2.conv2', // 3x3 conv, path 2 only -> folded
  'up_blocks.3.resnets.2.conv_shortcut', // 1x1 conv, folded
  'time_embedding.linear_1', // Gemm (transB), shared by both paths -> branch stays
  'up_blocks.3.attentions.2.proj_out', // 1x1 conv proj (SD 1.x), folded
];

function random(name: string, dims: number[], std: number): Float32Array {
  return randomTensor(5, name, dims, std).data as Float32Array;
}

test('conv and Gemm LoRA: B = 0 is the base UNet; baking equals the low-rank branch', async () => {
  const dir = tempDir();
  const model = (await buildUNet(FAMILIES.sd15.tiny.config, { outDir: path.join(dir, 'unet'), seed: 2 })).file;
  const out = path.join(dir, 'out');
  const m = compile({ modelFile: model, outDir: out, lastKeptDown: '3-2', targets: TARGETS, lora: { rank: 2, alpha: 4 }, emit: ['infer'] });
  expect(m.lora.targets.map((t) => [t.module, t.kind, t.lora_A.shape, t.lora_B.shape]).sort()).toEqual([
    ['down_blocks.0.resnets.0.conv1', 'conv', [2, 16, 3, 3], [16, 2, 1, 1]],
    ['time_embedding.linear_1', 'linear', [2, 16], [64, 2]],
    ['up_blocks.3.attentions.2.proj_out', 'conv', [2, 16, 1, 1], [16, 2, 1, 1]],
    ['up_blocks.3.resnets.2.conv2', 'conv', [2, 16, 3, 3], [16, 2, 1, 1]],
    ['up_blocks.3.resnets.2.conv_shortcut', 'conv', [2, 32, 1, 1], [16, 2, 1, 1]],
  ]);

  const inputs: Record<string, ort.Tensor> = {
    sample: new ort.Tensor('float32', random('sample', [2, 4, 16, 16], 1), [2, 4, 16, 16]),
    timestep: new ort.Tensor('float32', Float32Array.of(100, 700), [2]),
    encoder_hidden_states: new ort.Tensor('float32', random('ehs', [2, 7, 32], 1), [2, 7, 32]),
  };
  const both = { ...inputs, base_encoder_hidden_states: inputs.encoder_hidden_states };
  const lora = (zeroB: boolean) =>
    Object.fromEntries(
      m.lora.targets.flatMap((t) => [
        [t.lora_A.name, new ort.Tensor('float32', random(t.lora_A.name, t.lora_A.shape, 0.3), t.lora_A.shape)],
        [
          t.lora_B.name,
          new ort.Tensor(
            'float32',
            zeroB ? new Float32Array(t.lora_B.shape.reduce((a, b) => a * b, 1)) : random(t.lora_B.name, t.lora_B.shape, 0.3),
            t.lora_B.shape,
          ),
        ],
      ]),
    );
  const base = (await runModel(model, inputs)).out_sample.data as Float32Array;
  const zero = (await runModel(path.join(out, 'infer.onnx'), { ...both, ...lora(true) })).out_sample.data as Float32Array;
  expect(maxAbsDiff(zero, base)).toBeLessThan(1e-4);

  const feeds = lora(false);
  const withLora = (await runModel(path.join(out, 'infer.onnx'), { ...both, ...feeds })).out_sample.data as Float32Array;
  expect(maxAbsDiff(withLora, base)).toBeGreaterThan(1e-3);
  const file = path.join(dir, 'lora.safetensors');
  writeLoraFile(file, 'kohya', {
    rank: 2,
    alpha: 4,
    modules: m.lora.targets.map((t) => ({
      module: t.module,
      a: { shape: t.lora_A.shape, data: feeds[t.lora_A.name].data as Float32Array },
      b: { shape: t.lora_B.shape, data: feeds[t.lora_B.name].data as Float32Array },
    })),
  });
  const baked = bakeCompiled(out, file);
  expect([baked.folded, baked.kept]).toEqual([3, 2]);
  expect(fs.existsSync(baked.file)).toBe(true);
  const fromBaked = (await runModel(baked.file, both)).out_sample.data as Float32Array;
  expect(maxAbsDiff(fromBaked, withLora)).toBeLessThan(1e-4);
});
