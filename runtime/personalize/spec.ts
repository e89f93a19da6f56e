/** The spec `personalize` compiles when it is given no `--spec`, and the prompt check it relies on. */
import { HollowcError } from '../../compiler/errors';
import { PipelineFolder } from '../text-to-image/pipeline-folder';

function words(text: string): string[] {
  return text.toLowerCase().match(/[\p{L}\p{N}_]+/gu) ?? [];
}

/** The words of the prompt the class prompt lacks: the identifier ("sks"). */
export function identifierWords(prompt: string, classPrompt: string): string[] {
  const cls = new Set(words(classPrompt));
  return words(prompt).filter((w) => !cls.has(w));
}

export function personalizeSpec(
  folder: PipelineFolder,
  o: { preset: string; rank: number; alpha: number; seed: number; latent: number[] },
): string {
  const T = folder.tokenizers[0].maxLength;
  const D = folder.unet.config.cross_attention_dim;
  if (typeof D !== 'number') throw new HollowcError('unet/config.json: cross_attention_dim is not a number', folder.dir);
  const lines = [
    '# written by hollowc personalize',
    `model ${folder.family}`,
    `hollow preset "${o.preset}"`,
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
  lines.push(
    `lora rank ${o.rank} alpha ${o.alpha}`,
    `seed ${o.seed}`,
    // hollowc train runs grads.onnx with AdamW on the host (less memory); train.onnx (AdamW in the
    // graph, one session.run per step) is there for the browser page (hollowc web run/compiled)
    'emit precompute train grads infer',
    '',
  );
  return lines.join('\n');
}
