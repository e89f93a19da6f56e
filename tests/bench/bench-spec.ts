/**
 * The spec the training benches compile (full SD-family UNets, LoRA r128 on attn1/attn2, the
 * artifacts' fixed shapes), shared by `train-step.ts` and `cli-peaks.ts` so that their rows are
 * the same work.
 */
import { loadModel } from '../../compiler/serde';

export type BenchFamily = 'sd15' | 'sd21' | 'sdxl';
export const BENCH_FAMILIES: readonly BenchFamily[] = ['sd15', 'sd21', 'sdxl'];

/** What differs between the families the bench builds: the text conditioning's shapes. */
export const FAMILY_SHAPES: Record<BenchFamily, string> = {
  sd15: 'shape encoder_hidden_states [1, 77, 768]\n',
  sd21: 'shape encoder_hidden_states [1, 77, 1024]\n',
  // SDXL: both text encoders' states (768 + 1280), the pooled text_embeds and the six time_ids
  sdxl: 'shape encoder_hidden_states [1, 77, 2048]\nshape text_embeds [1, 1280]\nshape time_ids [1, 6]\n',
};

/** `rank` 0: no LoRA (a row of `train base` lines alone, full or partial fine-tuning). */
export const benchSpec = (
  hollow: string,
  latent = 32,
  base: 'fp32' | 'int8' | 'fp16' = 'fp32',
  emit = 'train grads',
  loraInfer: 'fp32' | 'fp16' = 'fp32',
  family: BenchFamily = 'sd21',
  lines: readonly string[] = [],
  conditioning = FAMILY_SHAPES[family],
  rank = 128,
) => `model ${family}
hollow ${hollow}
base ${base}
shape sample [1, 4, ${latent}, ${latent}]
shape timestep [1]
${conditioning}${rank ? `lora rank ${rank} alpha ${rank}\nlora targets "attn1.*" "attn2.*"\n` : ''}emit ${emit}
${loraInfer === 'fp16' ? 'lora infer fp16\n' : ''}${lines.map((l) => `${l}\n`).join('')}`;

/** The last axis of a UNet's encoder_hidden_states input, when the export fixes it. */
export function encoderWidth(file: string): number | undefined {
  const d = loadModel(file).graph.inputs.find((v) => v.name === 'encoder_hidden_states')?.type?.shape?.[2];
  return typeof d === 'number' ? d : undefined;
}

/** The conditioning lines for a user's export (`--model`): the text states as wide as it reads them. */
export function conditioningOf(unet: string, family: BenchFamily, userModel: boolean): string {
  const width = userModel && family !== 'sdxl' ? encoderWidth(unet) : undefined;
  return width ? `shape encoder_hidden_states [1, 77, ${width}]\n` : FAMILY_SHAPES[family];
}
