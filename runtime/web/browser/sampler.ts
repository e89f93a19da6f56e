/**
 * Two-path sampling with infer.onnx in the page, as runtime/sampling/two-path.ts does it for `hollowc
 * generate`: path 1 (base UNet down to the hollow activation) sees the class prompt, path 2 (the
 * hollowed net with the LoRA) the personalized prompt; with guidance > 1 a second row with zero
 * prompts on both paths is the unconditional one. Same schedulers, same seeded noise streams.
 */
import type * as Ort from 'onnxruntime-web';
import { CompileManifest, OUT_SAMPLE, SAMPLE, TIMESTEP } from '../../../compiler/manifest';
import { Rng, fillNormal } from '../../../models/random';
import { NoiseSchedule } from '../../sampling/noise-schedule';
import { denoise } from '../../sampling/denoise';
import { inputValues } from '../../formats/float16';
import { SchedulerName, makeScheduler } from '../../sampling/schedulers';
import type { Conditioning } from '../../sampling/conditioning';
import { defaultTimeIds, twoPathConditioningFeeds } from '../../sampling/conditioning';
import { OrtModule, floatOutput, webTensor } from './tensors';

export interface SampleRequest {
  prompt: Conditioning;
  classPrompt: Conditioning;
  /** guidance's negative (default zeros) */
  negative?: Conditioning;
  steps: number;
  guidance: number;
  scheduler: SchedulerName;
  seed: number;
  latentShape: number[];
  timeIds?: Float32Array;
  lora: Map<string, Float32Array>;
  onStep?: (i: number, steps: number) => void;
}

export async function sampleLatents(
  ort: OrtModule,
  session: Ort.InferenceSession,
  manifest: CompileManifest,
  o: SampleRequest,
): Promise<Float32Array> {
  const infer = manifest.artifacts.infer!;
  const describe = (name: string) => infer.inputs.find((i) => i.name === name);
  const schedule = NoiseSchedule.forFamily(manifest.family);
  const scheduler = makeScheduler(o.scheduler, schedule, o.steps, { prediction: manifest.training.prediction });
  const size = o.latentShape.reduce((a, b) => a * b, 1);
  let latents: Float32Array = new Float32Array(size);
  fillNormal(new Rng(o.seed, 'generate/latents'), latents, 1);
  if (scheduler.initNoiseSigma !== 1) latents = latents.map((x) => x * scheduler.initNoiseSigma);

  const names = new Set(session.inputNames);
  const guided = o.guidance !== 1;
  const B = guided ? 2 : 1;
  const fixed: Record<string, Ort.Tensor> = {};
  const timeIds = o.timeIds ?? defaultTimeIds(o.latentShape);
  for (const [name, { data, dims }] of twoPathConditioningFeeds(names, {
    prompt: o.prompt,
    classPrompt: o.classPrompt,
    negative: o.negative,
    guided,
    timeIds,
  }))
    fixed[name] = webTensor(ort, describe(name), data, dims);
  for (const t of manifest.lora.targets) {
    for (const p of [t.lora_A, t.lora_B]) {
      if (!names.has(p.name)) continue;
      const v = o.lora.get(p.name);
      if (!v) throw new Error(`no LoRA values for ${p.name}`);
      // Under `lora infer fp16` infer.onnx declares its LoRA inputs float16.
      const fed = inputValues(describe(p.name)?.dtype ?? 'float32', v, p.name);
      fixed[p.name] = new ort.Tensor(fed.type, fed.data, p.shape);
    }
  }
  const missing = [...names].filter((n) => !(n in fixed) && n !== SAMPLE && n !== TIMESTEP);
  if (missing.length) throw new Error(`cannot feed infer.onnx input${missing.length > 1 ? 's' : ''} ${missing.slice(0, 3).join(', ')}`);

  const outputName = session.outputNames.includes(OUT_SAMPLE) ? OUT_SAMPLE : session.outputNames[0];
  latents = await denoise({
    scheduler,
    latents,
    rows: B,
    guidance: o.guidance,
    seed: o.seed,
    predict: async (batch, t) => {
      const result = await session.run({
        ...fixed,
        [SAMPLE]: webTensor(ort, describe(SAMPLE), batch, [B, ...o.latentShape]),
        // a 0-d timestep (optimum >= 1.24's exports) is one t for the batch
        [TIMESTEP]:
          describe(TIMESTEP)?.shape.length === 0
            ? webTensor(ort, describe(TIMESTEP), [t], [])
            : webTensor(ort, describe(TIMESTEP), new Array(B).fill(t), [B]),
      });
      return floatOutput(result[outputName], outputName);
    },
    onStep: o.onStep ? (done, total) => o.onStep!(done, total) : undefined,
  });
  return latents;
}

/**
 * A preview of SD latents without a VAE: the linear latent-to-RGB map commonly used for SD 1.x/2.x
 * previews (4 channels to RGB), scaled to 0..255. RGBA, [h, w].
 */
export function latentPreview(latents: Float32Array, shape: readonly number[]): { rgba: Uint8ClampedArray; width: number; height: number } {
  const [C, h, w] = shape;
  const M = [
    [0.298, 0.207, 0.208],
    [0.187, 0.286, 0.173],
    [-0.158, 0.189, 0.264],
    [-0.184, -0.271, -0.473],
  ];
  const rgba = new Uint8ClampedArray(4 * h * w);
  for (let p = 0; p < h * w; p++) {
    for (let k = 0; k < 3; k++) {
      let v = 0;
      for (let c = 0; c < Math.min(C, 4); c++) v += M[c][k] * latents[c * h * w + p];
      rgba[4 * p + k] = Math.round(((v + 1) / 2) * 255);
    }
    rgba[4 * p + 3] = 255;
  }
  return { rgba, width: w, height: h };
}
