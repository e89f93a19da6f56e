/** The spec `personalize` compiles when it is given no `--spec`, and the prompt check it relies on. */
import { HollowcError } from '../../compiler/errors';
import type { GradientPrecision, OptimizerState } from '../../compiler/manifest';
import { DEFAULT_TARGETS } from '../../models/training-defaults';
import { PipelineFolder } from '../text-to-image/pipeline-folder';

function words(text: string): string[] {
  return text.toLowerCase().match(/[\p{L}\p{N}_]+/gu) ?? [];
}

/** The words of the prompt the class prompt lacks: the identifier ("sks"). */
export function identifierWords(prompt: string, classPrompt: string): string[] {
  const cls = new Set(words(classPrompt));
  return words(prompt).filter((w) => !cls.has(w));
}

/** A spec string: double quotes, `\\` and `\"` escaped. */
const quoted = (s: string) => `"${s.replace(/[\\"]/g, '\\$&')}"`;

/** The preset name that writes `hollow none`: nothing hollowed, the whole UNet trains (the paper's LoRA baseline). */
export const NO_HOLLOW_PRESET = 'none';

export interface PersonalizeSpecChoices {
  /** a hollow preset, or NO_HOLLOW_PRESET */
  preset: string;
  /** undefined: no LoRA (a `train base` run without --rank); targets: module globs (default: the paper's attention projections) */
  lora?: { rank: number; alpha: number; targets?: readonly string[] };
  /** `train base` globs */
  trainBase: readonly string[];
  optimizerState: OptimizerState;
  gradients: GradientPrecision;
  seed: number;
  latent: number[];
}

/**
 * The spec of a run. Without `train base`: LoRA on the default targets, as always. With it, LoRA
 * trains only where a `lora targets` line asks (the spec language's rule), so a LoRA beside the base
 * weights gets the default targets written out.
 */
export function personalizeSpec(folder: PipelineFolder, o: PersonalizeSpecChoices): string {
  const T = folder.tokenizers[0].maxLength;
  const D = folder.unet.config.cross_attention_dim;
  if (typeof D !== 'number') throw new HollowcError('unet/config.json: cross_attention_dim is not a number', folder.dir);
  const lines = [
    '# written by hollowc personalize',
    `model ${folder.family}`,
    o.preset === NO_HOLLOW_PRESET ? 'hollow none' : `hollow preset ${quoted(o.preset)}`,
    `shape sample [1, ${o.latent.join(', ')}]`,
    'shape timestep [1]',
    `shape encoder_hidden_states [1, ${T}, ${D}]`,
  ];
  if (folder.family === 'sdxl') {
    const cfg = folder.unet.config;
    const pooled = Number(cfg.projection_class_embeddings_input_dim) - 6 * Number(cfg.addition_time_embed_dim);
    if (!(pooled > 0))
      throw new HollowcError(
        'unet/config.json: cannot tell the pooled text embedding size (projection_class_embeddings_input_dim, addition_time_embed_dim)',
        folder.dir,
      );
    lines.push(`shape text_embeds [1, ${pooled}]`, 'shape time_ids [1, 6]');
  }
  if (o.trainBase.length) lines.push(`train base ${o.trainBase.map(quoted).join(' ')}`);
  if (o.lora) {
    if (o.trainBase.length || o.lora.targets) lines.push(`lora targets ${(o.lora.targets ?? DEFAULT_TARGETS).map(quoted).join(' ')}`);
    lines.push(`lora rank ${o.lora.rank} alpha ${o.lora.alpha}`);
  }
  if (o.optimizerState === '8bit') lines.push('optimizer adamw8bit');
  if (o.gradients === 'fp16') lines.push('gradients fp16');
  lines.push(`seed ${o.seed}`, `emit ${emitList(o).join(' ')}`, '');
  return lines.join('\n');
}

/**
 * hollowc train runs grads.onnx with AdamW on the host (less memory). train.onnx (AdamW in the
 * graph, one session.run per step) and infer.onnx are for the browser page (hollowc web
 * run/compiled), which trains LoRA with float32 moments only; infer.onnx also makes the validation
 * images of a LoRA run. A run that trains base weights samples from its exported UNet instead, and
 * 8-bit moments live on the host only (the spec refuses `emit train` with them).
 */
function emitList(o: PersonalizeSpecChoices): string[] {
  const web = !o.trainBase.length && o.optimizerState === 'fp32';
  // under hollow none nothing is hollowed, so there is no hollow activation to precompute
  const precompute = o.preset === NO_HOLLOW_PRESET ? [] : ['precompute'];
  return [...precompute, ...(web ? ['train'] : []), 'grads', ...(o.trainBase.length ? [] : ['infer'])];
}
