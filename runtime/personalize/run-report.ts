/** The report of a personalize run: run/loss.svg and run/report.html, rewritten on every run (it is cheap: the report stage). */
import * as fs from 'fs';
import * as path from 'path';
import sharp from 'sharp';
import { CompileManifest } from '../../compiler/manifest';
import { LOSS_LOG_FILE, TRAIN_DIR } from '../train/checkpoint';
import { LossPoint, ReportImage, ReportStage, writeLossSvg, writeReport } from './report';
import {
  COMPILED_DIR,
  DIFFUSERS_LORA_FILE,
  DIFFUSERS_UNET_DIR,
  KOHYA_LORA_FILE,
  LOSS_SVG,
  PIPELINE_DIR,
  REPORT_FILE,
  RunFolder,
} from './run-folder';
import { Settings } from './settings';
import { RunFindings, trainedParts, trainedWords } from './stages/context';
import { validationImageFile } from './stages/validation';

export interface RunReport {
  /** the validation images, personalized and base */
  images: string[];
  write(stages: ReportStage[], peakRssBytes: number): void;
}

/** The loss log of the run's training, as loss.svg draws it. */
function readLossPoints(dirs: RunFolder): LossPoint[] {
  return fs
    .readFileSync(path.join(dirs.compiled, TRAIN_DIR, LOSS_LOG_FILE), 'utf8')
    .split('\n')
    .filter((l) => l.trim())
    .map((l) => JSON.parse(l) as LossPoint);
}

async function photoThumbnails(s: Settings): Promise<ReportImage[]> {
  const thumb = async (file: string) =>
    `data:image/png;base64,${(await sharp(file).resize(256, 256, { fit: 'inside' }).png().toBuffer()).toString('base64')}`;
  const photos: ReportImage[] = [];
  for (const f of s.photoFiles) photos.push({ src: await thumb(f), caption: path.basename(f) });
  return photos;
}

/**
 * Each validation prompt's images relative to the report: personalized, and for the first prompt the
 * base model's (`fineTuned`: a run that trained base weights, whose base image is the source pipeline's).
 */
export function validationGallery(s: Settings, dirs: RunFolder, fineTuned = false): { prompt: string; images: ReportImage[] }[] {
  const rel = (f: string) => path.relative(dirs.out, f).split(path.sep).join('/');
  return s.validationPrompts.map((p, i) => ({
    prompt: p,
    images: [
      { src: rel(validationImageFile(dirs, i, p)), caption: 'personalized' },
      ...(i === 0
        ? [{ src: rel(validationImageFile(dirs, 0, p, true)), caption: fineTuned ? 'base model, same seed' : 'base model (LoRA B = 0), same seed' }]
        : []),
    ],
  }));
}

function classImageGallery(s: Settings, dirs: RunFolder): ReportImage[] {
  if (s.classMode !== 'generate') return [];
  return fs
    .readdirSync(dirs.classImages)
    .filter((f) => f.endsWith('.png'))
    .sort()
    .slice(0, 8)
    .map((f) => ({ src: path.relative(dirs.out, path.join(dirs.classImages, f)).split(path.sep).join('/'), caption: f }));
}

function findingNotes({ loss, subject }: RunFindings, m: CompileManifest): string[] {
  const notes: string[] = [];
  const start = trainedParts(m).base ? 'the base weights as compiled' : 'the initial LoRA (B = 0, the base model)';
  if (loss)
    notes.push(
      `Loss on ${loss.records} precomputed instance samples (the photos), same noise and timesteps: ${loss.before.toFixed(5)} with ${start}, ${loss.after.toFixed(5)} after training (${(100 * (1 - loss.after / loss.before)).toFixed(1)}% lower).`,
    );
  if (subject)
    notes.push(
      `RMS distance of the first validation prompt's final latents to the subject (the mean latent of the photos), same seed: base model ${subject.base.toFixed(4)}, personalized ${subject.personalized.toFixed(4)} (${(100 * (1 - subject.personalized / subject.base)).toFixed(1)}% closer).`,
    );
  return notes;
}

function settingsTable(s: Settings, m: CompileManifest): [string, string][] {
  const o = s.options;
  const classImages =
    s.classMode === 'generate' ? `${s.classCount} generated (${s.classSteps} steps)` : s.classMode === 'dir' ? `${s.classCount} from ${o.classDir}` : 'none';
  const what = trainedWords(m);
  return [
    ['model', `${s.folder.dir} (${s.folder.family}, ${m.parameters.full.toLocaleString('en-US')} UNet parameters)`],
    ['photos', `${s.photoFiles.length} in ${path.resolve(o.photos)}${s.flip ? ', and their mirror images' : ''}`],
    ['prompt', o.prompt],
    ['class prompt', o.classPrompt],
    ['cut', o.spec ? `--spec ${o.spec}` : `preset ${s.preset}`],
    ['hollowed', m.cut ? `${m.cut.hollowed.join(' ')} (${(100 * m.cut.fraction).toFixed(1)}%)` : 'none'],
    [
      'held during training',
      `${m.parameters.heldDuringTraining.toLocaleString('en-US')} base + ${m.parameters.lora.toLocaleString('en-US')} LoRA parameters`,
    ],
    ['LoRA', what.lora ?? 'none'],
    ['base weights', what.base ?? 'frozen'],
    ['optimizer', what.optimizer],
    ['steps / lr', `${s.steps} / ${s.lr}`],
    ['samples', String(s.samples)],
    ['class images', classImages],
    ['prior weight', String(s.priorWeight ?? m.training.priorWeight)],
    ['resolution', `${s.resolution}x${s.resolution} (latents ${s.latent.slice(1).join('x')})`],
    ['validation', `${s.validationPrompts.length} prompt(s), ${s.validationSteps} steps, guidance ${s.guidance}`],
    ['seed / ep', `${s.seed} / ${o.ep ?? 'cpu'}`],
  ];
}

/** Writes loss.svg and reads what the report shows (photo thumbnails, class images) once; `write` then writes report.html. */
export async function prepareReport(s: Settings, dirs: RunFolder, m: CompileManifest, findings: RunFindings): Promise<RunReport> {
  const lossPoints = readLossPoints(dirs);
  writeLossSvg(path.join(dirs.out, LOSS_SVG), lossPoints, `training loss, ${lossPoints.length} steps`);
  const photos = await photoThumbnails(s);
  const parts = trainedParts(m);
  const validation = validationGallery(s, dirs, parts.base);
  const files: [string, string][] = [
    ...(parts.lora
      ? ([
          [DIFFUSERS_LORA_FILE, 'diffusers: pipe.load_lora_weights (0.21 and current)'],
          [KOHYA_LORA_FILE, 'kohya: A1111, ComfyUI'],
        ] as [string, string][])
      : []),
    ...(parts.base
      ? ([
          [`${PIPELINE_DIR}/`, `the fine-tuned UNet${parts.lora ? ', LoRA folded in,' : ''} in an ONNX pipeline folder: hollowc generate --model, onnxruntime`],
          [`${DIFFUSERS_UNET_DIR}/`, 'the fine-tuned UNet for diffusers: UNet2DConditionModel.from_pretrained'],
        ] as [string, string][])
      : []),
    [LOSS_SVG, 'loss per step'],
    [`${COMPILED_DIR}/`, 'the compiled artifacts, the store, the checkpoints'],
  ];
  const data = {
    title: `hollowc personalize: "${s.options.prompt}"`,
    settings: settingsTable(s, m),
    lossSvgFile: LOSS_SVG,
    notes: findingNotes(findings, m),
    photos,
    validation,
    validationHow: parts.base
      ? `the fine-tuned pipeline folder ${PIPELINE_DIR}/ on the prompt; the base model: the source pipeline`
      : 'two-path infer.onnx: base path on the class prompt, LoRA path on the prompt',
    classImages: classImageGallery(s, dirs),
    files,
  };
  return {
    images: validation.flatMap((v) => v.images.map((im) => path.join(dirs.out, im.src))),
    write: (stages, peakRssBytes) => writeReport(path.join(dirs.out, REPORT_FILE), { ...data, stages, peakRssBytes }),
  };
}
