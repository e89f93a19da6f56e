/**
 * validation: each validation prompt, and the base model on the first with the same seed ->
 * run/images/*.png. A LoRA run samples with the two-path infer.onnx (the base: LoRA B = 0); a run
 * that trained base weights with its exported pipeline folder run/pipeline/ (infer.onnx holds the
 * compiled weights), the base with the source pipeline.
 */
import * as fs from 'fs';
import * as path from 'path';
import { savePng } from '../../formats/images';
import { readNpy } from '../../formats/npy';
import { ProgressLine } from '../../progress';
import { readConditioning } from '../../store/training-data';
import { LORA_INIT_FILE, TRAINED_LORA_FILE } from '../../formats/lora-format';
import { openPipelineFolder } from '../../text-to-image/pipeline-folder';
import { TextToImageOptions, textToImage } from '../../text-to-image/text-to-image';
import { RunFolder } from '../run-folder';
import { Stage, killPoint } from '../stage-runner';
import { RunFindings, StageContext, manifestOf, trainedParts } from './context';

function slug(text: string): string {
  return (
    text
      .toLowerCase()
      .replace(/[^a-z0-9]+/g, '-')
      .replace(/^-+|-+$/g, '')
      .slice(0, 48) || 'prompt'
  );
}

/** The image of validation prompt `i`; `base`: the base model's, made for the first prompt. */
export function validationImageFile(dirs: RunFolder, i: number, prompt: string, base = false): string {
  return path.join(dirs.images, `${i}-${slug(prompt)}${base ? '-base' : ''}.png`);
}

export function validationStage(ctx: StageContext): Stage<{ subject: NonNullable<RunFindings['subject']> }> {
  const { s, dirs, findings } = ctx;
  const prompts = s.validationPrompts;
  return {
    name: 'validation',
    key: ctx.keys.validation,
    valid: () =>
      prompts.every((p, i) => fs.existsSync(validationImageFile(dirs, i, p))) &&
      fs.existsSync(validationImageFile(dirs, 0, prompts[0], true)),
    clean: () => fs.rmSync(dirs.images, { recursive: true, force: true }),
    reused: (record) => {
      const subject = record.data?.subject;
      if (typeof subject?.base === 'number' && typeof subject.personalized === 'number') findings.subject = subject;
    },
    run: async () => {
      fs.mkdirSync(dirs.images, { recursive: true });
      const classConditioning = readConditioning(path.join(dirs.data, 'class_prompt.safetensors'));
      const fineTuned = trainedParts(manifestOf(ctx)).base;
      const personalizedModel: Pick<TextToImageOptions, 'folder' | 'run'> = fineTuned
        ? { folder: openPipelineFolder(dirs.pipeline) }
        : { folder: s.folder, run: { out: dirs.compiled, lora: path.join(dirs.compiled, TRAINED_LORA_FILE), classConditioning } };
      const baseModel: Pick<TextToImageOptions, 'folder' | 'run'> = fineTuned
        ? { folder: s.folder }
        : { folder: s.folder, run: { out: dirs.compiled, lora: path.join(dirs.compiled, LORA_INIT_FILE), classConditioning } };
      const one = async (prompt: string, model: Pick<TextToImageOptions, 'folder' | 'run'>, file: string) => {
        const bar = new ProgressLine('denoise', s.validationSteps, ctx.progress);
        const r = await textToImage({
          ...model,
          prompt,
          width: s.resolution,
          height: s.resolution,
          steps: s.validationSteps,
          guidance: s.guidance,
          seed: s.seed,
          numImages: 1,
          session: s.session,
          onStep: (i) => bar.update(i),
        });
        bar.finish();
        await savePng(file, r.images!.data, r.images!.dims, 0);
        killPoint('validation');
        return r.latents.data;
      };
      const personalized: Float32Array[] = [];
      for (let i = 0; i < prompts.length; i++)
        personalized.push(await one(prompts[i], personalizedModel, validationImageFile(dirs, i, prompts[i])));
      const base = await one(prompts[0], baseModel, validationImageFile(dirs, 0, prompts[0], true));
      const subject = { base: subjectDistance(dirs, base), personalized: subjectDistance(dirs, personalized[0]) };
      findings.subject = subject;
      return {
        summary: `${prompts.length} personalized image(s) ${fineTuned ? `from the fine-tuned pipeline folder and 1 from the source pipeline` : 'with the two-path infer.onnx and 1 base image (B = 0)'}, ${s.validationSteps} steps, guidance ${s.guidance}; RMS distance of the latents to the subject: base ${subject.base.toFixed(4)}, personalized ${subject.personalized.toFixed(4)}`,
        data: { subject },
      };
    },
  };
}

/** RMS distance of final latents to the subject: the mean of the photos' latents. */
function subjectDistance(dirs: RunFolder, z: Float32Array): number {
  const dir = path.join(dirs.data, 'latents');
  const latentFiles = fs.readdirSync(dir).filter((f) => f.endsWith('.npy'));
  const mean = new Float32Array(z.length);
  for (const f of latentFiles) {
    const a = readNpy(path.join(dir, f)).data as Float32Array;
    for (let k = 0; k < mean.length; k++) mean[k] += a[k] / latentFiles.length;
  }
  return Math.sqrt(z.reduce((acc, v, k) => acc + (v - mean[k]) ** 2, 0) / z.length);
}
