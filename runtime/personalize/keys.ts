/**
 * Every stage's key in one place: a hash of the stage's own inputs and of the keys of the stages
 * it reads from, so a changed input redoes exactly what depends on it.
 */
import * as crypto from 'crypto';
import * as fs from 'fs';
import * as path from 'path';
import { ModelComponent } from '../text-to-image/pipeline-folder';
import { Settings } from './settings';

export const sha = (x: unknown) =>
  crypto
    .createHash('sha256')
    .update(typeof x === 'string' ? x : JSON.stringify(x))
    .digest('hex');
const fileSha = (file: string) => crypto.createHash('sha256').update(fs.readFileSync(file)).digest('hex');

/** A model component's identity: its graph's bytes, and the size and time of its external weights (hashing GBs of weights would take longer than the stage). */
function componentId(c: ModelComponent): string {
  const data = c.data ? fs.statSync(c.data) : undefined;
  return sha({ graph: fileSha(c.model), data: data ? [data.size, data.mtimeMs] : null, config: c.config });
}

function dirId(dir: string): string {
  return sha(
    fs
      .readdirSync(dir)
      .sort()
      .filter((f) => fs.statSync(path.join(dir, f)).isFile())
      .map((f) => [f, fileSha(path.join(dir, f))]),
  );
}

export interface StageKeys {
  compile: string;
  prompts: string;
  photos: string;
  class: string;
  store: string;
  /** training's inputs without the steps: a run that trained fewer steps on the same line continues from its checkpoint */
  trainLine: string;
  train: string;
  export: string;
  validation: string;
}

export function stageKeys(s: Settings): StageKeys {
  const { folder, options, seed, resolution } = s;
  const unetId = componentId(folder.unet);
  const textId = sha({ encoders: folder.textEncoders.map(componentId), tokenizers: folder.tokenizers.map((t) => dirId(t.dir)) });
  const vaeEncId = componentId(folder.vaeEncoder);
  const vaeDecId = componentId(folder.vaeDecoder);
  // the spec text carries every training choice: the cut, the LoRA, --train-base, --optimizer-state
  const compile = sha({ stage: 'compile', specText: s.specText, unetId });
  const prompts = sha({ stage: 'prompts', textId, prompt: options.prompt, classPrompt: options.classPrompt });
  const photos = sha({
    stage: 'photos',
    photos: s.photoFiles.map((f) => [path.basename(f), fileSha(f)]),
    resolution,
    flip: s.flip,
    vaeEncId,
    seed,
  });
  const cls = sha({
    stage: 'class',
    classMode: s.classMode,
    ...(s.classMode === 'generate'
      ? {
          n: options.classImages,
          classPrompt: options.classPrompt,
          classSteps: s.classSteps,
          guidance: s.guidance,
          unetId,
          textId,
          vaeDecId,
          scheduler: folder.scheduler,
        }
      : {}),
    ...(s.classMode === 'dir' ? { files: s.classFiles.map((f) => [path.basename(f), fileSha(f)]) } : {}),
    resolution,
    vaeEncId,
    seed,
  });
  const store = sha({ stage: 'store', compile, prompts, photos, class: cls, samples: s.samples, seed });
  const trainLine = sha({ stage: 'train', store, lr: s.lr, seed, priorWeight: s.priorWeight ?? 'spec' });
  const train = sha({ line: trainLine, steps: s.steps });
  // a run that trains base weights exports a pipeline folder holding the source's other components
  const exportKey = sha({ stage: 'export', train, pipeline: { textId, vaeEncId, vaeDecId, scheduler: folder.scheduler } });
  const validation = sha({
    stage: 'validation',
    export: exportKey,
    validationPrompts: s.validationPrompts,
    validationSteps: s.validationSteps,
    guidance: s.guidance,
    seed,
    resolution,
    textId,
    vaeDecId,
    classPrompt: options.classPrompt,
  });
  return { compile, prompts, photos, class: cls, store, trainLine, train, export: exportKey, validation };
}
