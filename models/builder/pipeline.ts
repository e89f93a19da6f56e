/**
 * Writes a whole SD pipeline in optimum's ONNX folder layout, with seeded random weights:
 *
 *   model_index.json
 *   unet/           model.onnx + model.onnx_data + config.json
 *   text_encoder/   (+ text_encoder_2/ for SDXL)
 *   vae_encoder/    vae_decoder/
 *   tokenizer/      (+ tokenizer_2/)   real CLIP vocabulary (models/data/clip)
 *   scheduler/scheduler_config.json
 *
 * Everything is written into a temporary sibling folder and renamed into place at the end, so
 * a failed or interrupted build leaves what was there before.
 */
import * as fs from 'fs';
import * as path from 'path';
import { HollowcError } from '../../compiler/errors';
import { replaceFolder, tempSibling, writeFileAtomic } from '../../compiler/atomic-files';
import { FamilyName, isFamilyName, FAMILY_NAMES } from '../families';
import { DIFFUSERS_VERSION, pipelineVariant, PipelineSize, PipelineVariant } from '../pipeline-families';
import { hashString } from '../random';
import { writeTokenizerFolder } from '../tokenizer-folder';
import { buildClipText } from './clip-text';
import { buildUNet } from './unet';
import { BuildDtype, convertToFloat16InPlace } from './float16';
import { normalizeSeed } from './weights';
import { buildVae } from './vae';

export interface PipelineComponentResult {
  readonly name: string;
  readonly parameterCount: number;
  readonly weightBytes: number;
}

export interface BuildPipelineResult {
  readonly outDir: string;
  readonly variant: PipelineVariant;
  readonly components: readonly PipelineComponentResult[];
  readonly parameterCount: number;
  readonly seconds: number;
}

export interface BuildPipelineOptions {
  /** weight seed (default 0); each component draws from its own streams */
  readonly seed?: number;
  /** fp16: every component in the float16 form optimum's `--dtype fp16` export writes (float16.ts) */
  readonly dtype?: BuildDtype;
  /**
   * Prompt length of the tokenizers and text encoders (default CLIP's 77): a small world's short
   * captions (cli/api/world-pipeline.ts) are not diluted by 60-odd padding positions.
   */
  readonly maxTokens?: number;
  /** The text encoders' embedding init as a multiple of CLIP's (clip-text.ts embeddingScale). */
  readonly textEmbeddingScale?: number;
}

const json = (obj: unknown) => JSON.stringify(obj, null, 2) + '\n';

/** Text encoders share parameter names (`text_model.*`): a per-component seed keeps their weights unrelated. */
function componentSeed(seed: number, component: string): number {
  return component === 'unet' ? seed : (seed ^ hashString(component)) >>> 0;
}

function modelIndex(v: PipelineVariant): Record<string, unknown> {
  const index: Record<string, unknown> = {
    _class_name: v.pipelineClass,
    _diffusers_version: DIFFUSERS_VERSION,
    // which builder preset made this folder (a reader needs no guessing for hollowc's own folders)
    _hollowc: { family: v.family, size: v.size },
    scheduler: ['diffusers', v.scheduler._class_name],
  };
  for (const t of v.textEncoders) {
    index[t.dir] = ['transformers', t.config.architectures[0]];
    index[t.tokenizerDir] = ['transformers', 'CLIPTokenizer'];
  }
  index.unet = ['diffusers', 'UNet2DConditionModel'];
  index.vae_encoder = ['diffusers', 'AutoencoderKL'];
  index.vae_decoder = ['diffusers', 'AutoencoderKL'];
  if (v.pipelineClass === 'StableDiffusionPipeline') {
    index.requires_safety_checker = false;
    index.safety_checker = [null, null];
    index.feature_extractor = [null, null];
  } else {
    index.force_zeros_for_empty_prompt = true;
  }
  return index;
}

/** Moves the finished `tmp` to `outDir`: into an empty or missing folder, or over an earlier pipeline folder. */
function moveIntoPlace(tmp: string, outDir: string): void {
  if (!fs.existsSync(outDir)) {
    fs.renameSync(tmp, outDir);
    return;
  }
  const entries = fs.readdirSync(outDir);
  if (entries.length === 0) {
    fs.rmdirSync(outDir);
    fs.renameSync(tmp, outDir);
    return;
  }
  if (!entries.includes('model_index.json')) {
    throw new HollowcError('output folder exists and is not a pipeline folder (no model_index.json); refusing to replace it', outDir);
  }
  replaceFolder(tmp, outDir);
}

export async function buildPipeline(
  family: FamilyName | string,
  size: PipelineSize,
  outDir: string,
  options: BuildPipelineOptions = {},
): Promise<BuildPipelineResult> {
  if (!isFamilyName(family)) throw new HollowcError(`unknown model family "${family}" (expected one of: ${FAMILY_NAMES.join(', ')})`);
  const started = process.hrtime.bigint();
  const seed = normalizeSeed(options.seed);
  if (options.maxTokens !== undefined && !(Number.isInteger(options.maxTokens) && options.maxTokens >= 2 && options.maxTokens <= 77))
    throw new HollowcError(`maxTokens must be an integer in 2..77 (BOS and EOS at least; CLIP has 77 positions), got ${options.maxTokens}`);
  const v = pipelineVariant(family, size);
  const target = path.resolve(outDir);
  // refuse before spending minutes on weights
  if (fs.existsSync(target) && fs.readdirSync(target).length > 0 && !fs.existsSync(path.join(target, 'model_index.json'))) {
    throw new HollowcError('output folder exists and is not a pipeline folder (no model_index.json); refusing to replace it', target);
  }
  fs.mkdirSync(path.dirname(target), { recursive: true });
  const tmp = tempSibling(target);
  fs.mkdirSync(tmp);
  const components: PipelineComponentResult[] = [];
  try {
    const unetDir = path.join(tmp, 'unet');
    const unet = await buildUNet(v.unet.config, { outDir: unetDir, seed: componentSeed(seed, 'unet') });
    writeFileAtomic(
      path.join(unetDir, 'config.json'),
      json({ _class_name: 'UNet2DConditionModel', _diffusers_version: DIFFUSERS_VERSION, ...v.unet.config }),
    );
    components.push({ name: 'unet', parameterCount: unet.parameterCount, weightBytes: unet.weightBytes });

    for (const t of v.textEncoders) {
      const dir = path.join(tmp, t.dir);
      const config = options.maxTokens ? { ...t.config, max_position_embeddings: options.maxTokens } : t.config;
      const te = buildClipText(config, {
        outDir: dir,
        seed: componentSeed(seed, t.dir),
        hiddenStates: t.hiddenStates,
        embeddingScale: options.textEmbeddingScale,
      });
      writeFileAtomic(path.join(dir, 'config.json'), json(config));
      components.push({ name: t.dir, parameterCount: te.parameterCount, weightBytes: te.weightBytes });
      writeTokenizerFolder(path.join(tmp, t.tokenizerDir), {
        padToken: t.padToken,
        nameOrPath: t.tokenizerSource,
        ...(options.maxTokens ? { maxLength: options.maxTokens } : {}),
      });
    }

    for (const part of ['encoder', 'decoder'] as const) {
      const name = `vae_${part}`;
      const dir = path.join(tmp, name);
      const built = buildVae(v.vae, part, { outDir: dir, seed: componentSeed(seed, 'vae') });
      writeFileAtomic(path.join(dir, 'config.json'), json({ ...v.vae, _diffusers_version: DIFFUSERS_VERSION }));
      components.push({ name, parameterCount: built.parameterCount, weightBytes: built.weightBytes });
    }

    if (options.dtype === 'fp16')
      components.forEach((c, i) => {
        const file = path.join(tmp, c.name, 'model.onnx');
        convertToFloat16InPlace(file);
        components[i] = { ...c, weightBytes: fs.statSync(`${file}_data`).size };
      });

    fs.mkdirSync(path.join(tmp, 'scheduler'));
    writeFileAtomic(path.join(tmp, 'scheduler', 'scheduler_config.json'), json(v.scheduler));
    // model_index.json last: a folder with it is complete
    writeFileAtomic(path.join(tmp, 'model_index.json'), json(modelIndex(v)));
    moveIntoPlace(tmp, target);
  } catch (e) {
    fs.rmSync(tmp, { recursive: true, force: true });
    throw e;
  }
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  return { outDir: target, variant: v, components, parameterCount: components.reduce((a, c) => a + c.parameterCount, 0), seconds };
}
