/** The report of a personalize run: run/loss.svg and run/report.html, rewritten on every run (it is cheap). */
import * as fs from 'fs';
import * as path from 'path';
import sharp from 'sharp';
import { CompileManifest } from '../../compiler/manifest';
import { LOSS_LOG_FILE, TRAIN_DIR } from '../train/checkpoint';
import { LossPoint, ReportImage, ReportStage, writeLossSvg, writeReport } from './report';
import { COMPILED_DIR, DIFFUSERS_LORA_FILE, KOHYA_LORA_FILE, LOSS_SVG, REPORT_FILE, RunFolder } from './run-folder';
import { Settings } from './settings';
import { RunFindings } from './stages/context';
import { validationImageFile } from './stages/validation';

export interface RunReport {
  /** the validation images, personalized and base */
  images: string[];
  write(stages: ReportStage[], peakRssBytes: number): void;
}

/** Reads what the report shows (loss log, photo thumbnails, class images) once; `write` can then be called again cheaply. */
export async function prepareReport(s: Settings, dirs: RunFolder, m: CompileManifest, findings: RunFindings): Promise<RunReport> {
  const { out } = dirs;
  const lossPoints: LossPoint[] = fs
    .readFileSync(path.join(dirs.compiled, TRAIN_DIR, LOSS_LOG_FILE), 'utf8')
    .split('\n')
    .filter((l) => l.trim())
    .map((l) => JSON.parse(l) as LossPoint);
  writeLossSvg(path.join(out, LOSS_SVG), lossPoints, `training loss, ${lossPoints.length} steps`);
  const thumb = async (file: string) =>
    `data:image/png;base64,${(await sharp(file).resize(256, 256, { fit: 'inside' }).png().toBuffer()).toString('base64')}`;
  const photoImages: ReportImage[] = [];
  for (const f of s.photoFiles) photoImages.push({ src: await thumb(f), caption: path.basename(f) });
  const rel = (f: string) => path.relative(out, f).split(path.sep).join('/');
  const validation = s.validationPrompts.map((p, i) => ({
    prompt: p,
    images: [
      { src: rel(validationImageFile(dirs, i, p)), caption: 'personalized' },
      ...(i === 0 ? [{ src: rel(validationImageFile(dirs, 0, p, true)), caption: 'base model (LoRA B = 0), same seed' }] : []),
    ],
  }));
  const classImages: ReportImage[] =
    s.classMode === 'generate'
      ? fs
          .readdirSync(dirs.classImages)
          .filter((f) => f.endsWith('.png'))
          .sort()
          .slice(0, 8)
          .map((f) => ({ src: rel(path.join(dirs.classImages, f)), caption: f }))
      : [];
  const notes: string[] = [];
  const { loss, subject } = findings;
  if (loss)
    notes.push(
      `Loss on ${loss.records} precomputed instance samples (the photos), same noise and timesteps: ${loss.before.toFixed(5)} with the initial LoRA (B = 0, the base model), ${loss.after.toFixed(5)} after training (${(100 * (1 - loss.after / loss.before)).toFixed(1)}% lower).`,
    );
  if (subject)
    notes.push(
      `RMS distance of the first validation prompt's final latents to the subject (the mean latent of the photos), same seed: base model ${subject.base.toFixed(4)}, personalized ${subject.personalized.toFixed(4)} (${(100 * (1 - subject.personalized / subject.base)).toFixed(1)}% closer).`,
    );
  const o = s.options;
  const settings: [string, string][] = [
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
    ['LoRA', `rank ${m.lora.rank}, alpha ${m.lora.alpha}, ${m.lora.targets.filter((t) => t.trained).length} trained layers`],
    ['steps / lr', `${s.steps} / ${s.lr}`],
    ['samples', String(s.samples)],
    [
      'class images',
      s.classMode === 'generate'
        ? `${s.classCount} generated (${s.classSteps} steps)`
        : s.classMode === 'dir'
          ? `${s.classCount} from ${o.classDir}`
          : 'none',
    ],
    ['prior weight', String(s.priorWeight ?? m.training.priorWeight)],
    ['resolution', `${s.resolution}x${s.resolution} (latents ${s.latent.slice(1).join('x')})`],
    ['validation', `${s.validationPrompts.length} prompt(s), ${s.validationSteps} steps, guidance ${s.guidance}`],
    ['seed / ep', `${s.seed} / ${o.ep ?? 'cpu'}`],
  ];
  return {
    images: validation.flatMap((v) => v.images.map((im) => path.join(out, im.src))),
    write: (stages, peakRssBytes) =>
      writeReport(path.join(out, REPORT_FILE), {
        title: `hollowc personalize: "${o.prompt}"`,
        settings,
        stages,
        lossSvgFile: LOSS_SVG,
        notes,
        photos: photoImages,
        validation,
        classImages,
        files: [
          [DIFFUSERS_LORA_FILE, 'diffusers: pipe.load_lora_weights (0.21 and current)'],
          [KOHYA_LORA_FILE, 'kohya: A1111, ComfyUI'],
          [LOSS_SVG, 'loss per step'],
          [`${COMPILED_DIR}/`, 'the compiled artifacts, the store, the checkpoints'],
        ],
        peakRssBytes,
      }),
  };
}
