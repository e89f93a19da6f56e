/**
 * What `personalize` is asked to do, and the same with every default filled in and every input
 * checked: all of it happens before anything in the run folder is touched.
 */
import * as fs from 'fs';
import { HollowcError } from '../../compiler/errors';
import { CompileManifest, GRADIENT_PRECISIONS, GradientPrecision, OPTIMIZER_STATES, OptimizerState } from '../../compiler/manifest';
import { ImageTensor, listImages, loadImage } from '../formats/images';
import { ProgressStream } from '../progress';
import { ExecutionProvider, SessionOptions } from '../ort/session';
import { PipelineFolder, openPipelineFolder } from '../text-to-image/pipeline-folder';
import { checkResolution } from '../text-to-image/image-latents';
import { defaultImageSize, vaeScaleFactor } from '../text-to-image/text-to-image';
import { identifierWords, personalizeSpec } from './spec';

/**
 * Compiles the spec file for the UNet graph into `out` and returns its manifest. The caller hands
 * it in: the runtime never imports the compiler's passes or the spec language.
 */
export type CompileStage = (unetModel: string, specFile: string, out: string) => CompileManifest;

/**
 * Writes the fine-tuned UNet of the compiled folder `compiled` (a run that trained base weights,
 * any trained LoRA folded in) as an ONNX pipeline folder at `onnx` (`pipeline`'s other components
 * beside it) and as a diffusers UNet folder at `diffusers`. The caller hands it in (export-unet
 * reads the source graph with the compiler's serde and passes).
 */
export type ExportUnetStage = (
  compiled: string,
  pipeline: string,
  outputs: { onnx: string; diffusers: string },
) => { changed: number; parameters: number };

export interface PersonalizeOptions {
  model: string;
  photos: string;
  prompt: string;
  classPrompt: string;
  out: string;
  preset?: string;
  spec?: string;
  rank?: number;
  alpha?: number;
  /** LoRA target module globs (default: the paper's attention projections; "conv1" etc. for conv LoRA) */
  loraTargets?: string[];
  /** `train base` globs ("*": full fine-tuning); with them LoRA trains only when `rank` is given */
  trainBase?: string[];
  /** the AdamW moments: '8bit' writes `optimizer adamw8bit` (default 'fp32') */
  optimizerState?: OptimizerState;
  /** how grads.onnx hands over the gradients: 'fp16' writes `gradients fp16` (default 'fp32') */
  gradients?: GradientPrecision;
  steps?: number;
  lr?: number;
  samples?: number;
  classImages?: number;
  classDir?: string;
  priorWeight?: number;
  resolution?: number;
  flip?: boolean;
  validationPrompts?: string[];
  validationSteps?: number;
  classSteps?: number;
  guidance?: number;
  seed?: number;
  ep?: ExecutionProvider;
  fallbackToCpu?: boolean;
  threads?: number;
  /** Hears once per session, after its first run, which provider ran it (SessionTuning.report). */
  reportProvider?: (line: string) => void;
  /** stage lines (default stdout) */
  log?: (line: string) => void;
  /** warnings (default stderr) */
  warn?: (line: string) => void;
  /** progress bars (default stderr) */
  progress?: ProgressStream;
}

export type ClassMode = 'generate' | 'dir' | 'none';

/** The options resolved: defaults filled in, photos decoded, the spec text fixed. */
export interface Settings {
  options: PersonalizeOptions;
  folder: PipelineFolder;
  steps: number;
  lr: number;
  samples: number;
  seed: number;
  /** undefined: the spec's loss prior_weight (the class samples' weight is a per-sample input, so it needs no recompile) */
  priorWeight?: number;
  flip: boolean;
  classSteps: number;
  validationSteps: number;
  guidance: number;
  resolution: number;
  size: { width: number; height: number };
  /** the latent shape of one sample, [C, h, w] */
  latent: number[];
  preset: string;
  /** the spec it compiles: it carries the cut, the LoRA, --train-base, --optimizer-state and --gradients */
  specText: string;
  validationPrompts: string[];
  photoFiles: string[];
  photos: ImageTensor[];
  classMode: ClassMode;
  classFiles: string[];
  classDirImages: ImageTensor[];
  classCount: number;
  instanceCount: number;
  /** the training and precompute sessions' tuning */
  trainTuning: { intraOpThreads?: number; report?: (line: string) => void };
  session: SessionOptions;
}

export async function resolveSettings(options: PersonalizeOptions, warn: (line: string) => void): Promise<Settings> {
  const folder = openPipelineFolder(options.model);
  if (!options.prompt.trim()) throw new HollowcError('--prompt is empty');
  if (!options.classPrompt.trim()) throw new HollowcError('--class-prompt is empty (the base path of Hollowed Net runs on it)');
  const steps = options.steps ?? 400;
  const lr = options.lr ?? 1e-4;
  const samples = options.samples ?? 200;
  const seed = options.seed ?? 0;
  const rank = options.rank ?? 4;
  const alpha = options.alpha ?? rank;
  const priorWeight = options.priorWeight;
  const flip = options.flip ?? false;
  const classSteps = options.classSteps ?? 25;
  const validationSteps = options.validationSteps ?? 25;
  const guidance = options.guidance ?? 7.5;
  const resolution = options.resolution ?? defaultImageSize(folder);
  const factor = vaeScaleFactor(folder);
  // what the UNet takes, before any stage runs (the check encode makes)
  checkResolution(folder, resolution);
  for (const [flag, v] of [
    ['--steps', steps],
    ['--samples', samples],
    ['--rank', rank],
    ['--class-steps', classSteps],
    ['--validation-steps', validationSteps],
  ] as const) {
    if (!(Number.isInteger(v) && v > 0)) throw new HollowcError(`${flag} must be a positive integer, got ${v}`);
  }
  if (!(lr > 0 && Number.isFinite(lr))) throw new HollowcError(`--lr must be a finite number > 0, got ${lr}`);
  if (priorWeight !== undefined && !(priorWeight >= 0 && Number.isFinite(priorWeight)))
    throw new HollowcError(`--prior-weight must be a finite number >= 0, got ${priorWeight}`);
  if (options.classImages !== undefined && options.classDir !== undefined)
    throw new HollowcError('give --class-images or --class-dir, not both');
  if (options.spec && (options.preset || options.rank !== undefined || options.alpha !== undefined || options.loraTargets))
    throw new HollowcError('--spec sets the cut and the LoRA: --preset, --rank, --alpha and --lora-targets go with the generated spec only');
  const trainBase = options.trainBase ?? [];
  const optimizerState = options.optimizerState ?? 'fp32';
  if (options.spec && trainBase.length)
    throw new HollowcError('--spec says what trains: --train-base goes with the generated spec only (write train base lines in the spec)');
  if (options.spec && options.optimizerState !== undefined)
    throw new HollowcError(
      '--spec says the optimizer: --optimizer-state goes with the generated spec only (write optimizer adamw8bit in the spec)',
    );
  const gradients = options.gradients ?? 'fp32';
  if (options.spec && options.gradients !== undefined)
    throw new HollowcError('--spec says how gradients are handed over: --gradients goes with the generated spec only (write gradients fp16 in the spec)');
  if (!(GRADIENT_PRECISIONS as readonly string[]).includes(gradients))
    throw new HollowcError(`--gradients must be one of ${GRADIENT_PRECISIONS.join(', ')}, got ${JSON.stringify(gradients)}`);
  if (!(OPTIMIZER_STATES as readonly string[]).includes(optimizerState))
    throw new HollowcError(`--optimizer-state must be one of ${OPTIMIZER_STATES.join(', ')}, got ${JSON.stringify(optimizerState)}`);
  const badGlob = trainBase.find((g) => !g.trim() || /[\r\n]/.test(g));
  if (badGlob !== undefined)
    throw new HollowcError(`--train-base needs a module glob such as "up_blocks.*", got ${JSON.stringify(badGlob)}`);
  if (trainBase.length && options.rank === undefined && options.alpha !== undefined)
    throw new HollowcError('--alpha without --rank beside --train-base: LoRA trains beside the base weights only when --rank is given');
  // with --train-base, LoRA only when asked for (the spec language's rule for train base)
  const lora = !trainBase.length || options.rank !== undefined;
  const validationPrompts = options.validationPrompts?.length ? options.validationPrompts : [options.prompt];
  const trainTuning = { intraOpThreads: options.threads, report: options.reportProvider };
  const session: SessionOptions = { ...trainTuning, ep: options.ep, fallbackToCpu: options.fallbackToCpu };

  const photoFiles = listImages(options.photos);
  const size = { width: resolution, height: resolution };
  const photos: ImageTensor[] = [];
  for (const f of photoFiles) photos.push(await loadImage(f, size)); // a corrupt photo fails here, naming its file
  const classFiles = options.classDir ? listImages(options.classDir) : [];
  const classDirImages: ImageTensor[] = [];
  for (const f of classFiles) classDirImages.push(await loadImage(f, size));
  const latent = [Number(folder.unet.config.in_channels ?? 4), resolution / factor, resolution / factor];
  const preset = options.preset ?? (folder.family === 'sdxl' ? 'sdxl-mid' : '39.2%');
  const specText = options.spec
    ? fs.readFileSync(options.spec, 'utf8')
    : personalizeSpec(folder, { preset, lora: lora ? { rank, alpha, targets: options.loraTargets } : undefined, trainBase, optimizerState, gradients, seed, latent });
  if (identifierWords(options.prompt, options.classPrompt).length === 0) {
    warn(
      `hollowc: warning: the prompt "${options.prompt}" has no word that the class prompt "${options.classPrompt}" lacks: without an identifier (such as "sks") the LoRA is trained onto the class itself`,
    );
  }
  const classMode: ClassMode = options.classImages ? 'generate' : classFiles.length ? 'dir' : 'none';
  return {
    options,
    folder,
    steps,
    lr,
    samples,
    seed,
    priorWeight,
    flip,
    classSteps,
    validationSteps,
    guidance,
    resolution,
    size,
    latent,
    preset,
    specText,
    validationPrompts,
    photoFiles,
    photos,
    classMode,
    classFiles,
    classDirImages,
    classCount: classMode === 'generate' ? options.classImages! : classFiles.length,
    instanceCount: photos.length * (flip ? 2 : 1),
    trainTuning,
    session,
  };
}
