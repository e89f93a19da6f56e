/**
 * `hollowc personalize`: photos and a prompt in, a personalized LoRA (or fine-tuned UNet), images and a report out —
 * the paper's workflow (4.3, 5.1) as one call on a pipeline folder. The stages, in order, each in
 * its own file under stages/: compile, prompts, photos, class images, store, train, export,
 * validation, report. Their keys (keys.ts) and the runner (stage-runner.ts) make a rerun
 * reuse what is done, continue what was killed and redo what depends on a changed input. Every
 * input is checked (settings.ts) before anything in the run folder is touched; each stage opens
 * its models, uses them and releases them before the next one starts.
 */
import * as path from 'path';
import { lockFolder } from '../../compiler/folder-lock';
import { CompileManifest } from '../../compiler/manifest';
import { formatBytes } from '../progress';
import { stageKeys } from './keys';
import { validationGallery } from './run-report';
import { DIFFUSERS_LORA_FILE, KOHYA_LORA_FILE, REPORT_FILE, runFolder } from './run-folder';
import { CompileStage, ExportUnetStage, PersonalizeOptions, resolveSettings } from './settings';
import { StageResult, runStages } from './stage-runner';
import { classImagesStage } from './stages/class-images';
import { compileStage } from './stages/compile';
import { StageContext, manifestOf, trainedParts } from './stages/context';
import { exportStage } from './stages/export';
import { photosStage } from './stages/photos';
import { reportStage } from './stages/report';
import { promptsStage } from './stages/prompts';
import { storeStage } from './stages/store';
import { trainStage } from './stages/train';
import { validationStage } from './stages/validation';

export interface PersonalizeResult {
  out: string;
  report: string;
  /** the LoRA files, when a LoRA trained */
  lora?: { diffusers: string; kohya: string };
  /** the fine-tuned UNet, when base weights trained: an ONNX pipeline folder and a diffusers UNet folder */
  unet?: { pipeline: string; diffusers: string };
  images: string[];
  stages: StageResult[];
  peakRssBytes: number;
  loss?: { before: number; after: number; records: number };
  /** distance of the first validation prompt's latents to the subject (mean photo latent), personalized vs base */
  subject?: { base: number; personalized: number };
  manifest: CompileManifest;
}

const STAGES = [compileStage, promptsStage, photosStage, classImagesStage, storeStage, trainStage, exportStage, validationStage, reportStage];

/**
 * `compile` builds the artifacts from the spec and `exportUnet` writes a fine-tuned UNet: the caller
 * hands them in (the runtime never imports the compiler's passes).
 */
export async function personalize(
  options: PersonalizeOptions & { compile: CompileStage; exportUnet: ExportUnetStage },
): Promise<PersonalizeResult> {
  const log = options.log ?? ((l: string) => process.stdout.write(`${l}\n`));
  const warn = options.warn ?? ((l: string) => process.stderr.write(`${l}\n`));
  const out = path.resolve(options.out);
  const runStarted = Date.now();
  const s = await resolveSettings(options, warn);
  const release = lockFolder(out, 'hollowc personalize', { create: true });
  try {
    const dirs = runFolder(out);
    const ctx: StageContext = {
      s,
      dirs,
      keys: stageKeys(s),
      progress: options.progress ?? process.stderr,
      compile: options.compile,
      exportUnet: options.exportUnet,
      findings: {},
    };
    const { results, peakRssBytes } = await runStages(
      out,
      STAGES.map((make) => make(ctx)),
      { log },
    );
    const top = results
      .filter((r) => r.status !== 'reused')
      .reduce<StageResult | undefined>((a, r) => (!a || r.peakRssBytes > a.peakRssBytes ? r : a), undefined);
    log(
      `done in ${((Date.now() - runStarted) / 1000).toFixed(1)} s, peak RSS ${formatBytes(peakRssBytes)}${top ? ` (in ${top.name})` : ''}; open ${path.join(out, REPORT_FILE)}`,
    );
    const parts = trainedParts(manifestOf(ctx));
    return {
      out,
      report: path.join(out, REPORT_FILE),
      ...(parts.lora ? { lora: { diffusers: path.join(out, DIFFUSERS_LORA_FILE), kohya: path.join(out, KOHYA_LORA_FILE) } } : {}),
      ...(parts.base ? { unet: { pipeline: dirs.pipeline, diffusers: dirs.diffusersUnet } } : {}),
      images: validationGallery(s, dirs).flatMap((v) => v.images.map((im) => path.join(out, im.src))),
      stages: results,
      peakRssBytes,
      loss: ctx.findings.loss,
      subject: ctx.findings.subject,
      manifest: manifestOf(ctx),
    };
  } finally {
    release();
  }
}
