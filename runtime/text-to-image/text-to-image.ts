/**
 * Text to image on a pipeline folder (optimum's ONNX layout), computing what diffusers'
 * StableDiffusionPipeline / StableDiffusionXLPipeline (and their ONNX counterparts) compute:
 *
 *   prompts   tokenized (folder tokenizers) and encoded: SD 1.x/2.x `last_hidden_state`; SDXL the
 *             penultimate hidden state of both encoders concatenated on channels, plus the pooled
 *             `text_embeds` of encoder 2 and time_ids [H, W, 0, 0, H, W]. The unconditional row is
 *             the negative prompt, "" when none is given, or zeros for SDXL folders whose
 *             model_index says force_zeros_for_empty_prompt.
 *   latents   N(0, 1) noise [N, C, H/f, W/f] from the stream `generate/latents` of the seed (or
 *             given), times the scheduler's init_noise_sigma.
 *   loop      with guidance g > 1: UNet on [latents, latents] (scaled by scale_model_input) with
 *             rows [negative ×N, prompt ×N]; eps = u + g (c − u); scheduler step. g = 1: one row.
 *   decode    latents / scaling_factor -> vae_decoder -> clamp(x / 2 + 0.5).
 *
 * The scheduler comes from scheduler/scheduler_config.json (runtime/sampling/scheduler-config.ts). Input
 * dtypes (int32/int64 input_ids, 0-d float or [B] int64 timesteps, float16) are read off the
 * graphs. Each stage opens its session and releases it before the next heavy one starts:
 * text encoders, then the UNet, then the VAE decoder.
 *
 * With `run` (a hollowc compile output folder) the UNet is the two-path infer.onnx: path 1, the
 * base model, sees the class prompt; path 2, the hollowed net with LoRA, the prompt (sample.ts).
 */
import * as ort from 'onnxruntime-node';
import { HollowcError } from '../../compiler/errors';
import {
  ENCODER_HIDDEN_STATES,
  FLOAT16_WEIGHTS_SESSION_CONFIG,
  OUT_SAMPLE,
  SAMPLE,
  TEXT_EMBEDS,
  TIMESTEP,
  TIME_IDS,
} from '../../compiler/manifest';
import { Rng, fillNormal } from '../../models/random';
import { floatValues, tensorFor } from '../ort/artifacts';
import type { GraphIo, PipelineFolder } from './pipeline-folder';
import { Sampler } from '../sampling/two-path';
import { ConfiguredScheduler, configureScheduler, defaultSchedulerFor } from '../sampling/scheduler-config';
import { SchedulerName, TimestepSpacing } from '../sampling/schedulers';
import { SessionOptions, createSession, withArtifactConfig } from '../ort/session';
import { releaseSession } from '../ort/session-pool';
import type { Conditioning } from '../sampling/conditioning';
import { stackRows, zeroConditioning } from '../sampling/conditioning';
import { denoise } from '../sampling/denoise';
import { loadTokenizer } from './tokenizer';
import { LatentBatch, decodeLatents } from './vae';

const INPUT_IDS = 'input_ids';
const LAST_HIDDEN_STATE = 'last_hidden_state';
const HIDDEN_STATE = /^hidden_states\.(\d+)$/;

function isXl(folder: PipelineFolder): boolean {
  return folder.textEncoders.length > 1;
}

function describe(io: readonly GraphIo[], name: string) {
  return io.find((i) => i.name === name);
}

/** Which text-encoder output conditions the UNet: last_hidden_state, or SDXL's penultimate hidden state. */
function conditioningOutput(folder: PipelineFolder, index: number): string {
  const enc = folder.textEncoders[index];
  if (!isXl(folder)) {
    if (!describe(enc.outputs, LAST_HIDDEN_STATE)) throw new HollowcError(`${enc.name} has no output ${LAST_HIDDEN_STATE}`, enc.model);
    return LAST_HIDDEN_STATE;
  }
  const layers = enc.outputs
    .map((o) => HIDDEN_STATE.exec(o.name))
    .filter((m): m is RegExpExecArray => !!m)
    .map((m) => Number(m[1]));
  if (layers.length < 2)
    throw new HollowcError(
      `${enc.name} exports no hidden_states.* outputs (SDXL conditions on the penultimate one: export with output_hidden_states)`,
      enc.model,
    );
  return `hidden_states.${Math.max(...layers) - 1}`;
}

/**
 * The conditioning of each text (encoder_hidden_states [T, D]; SDXL also text_embeds [P]).
 * Opens each text encoder in turn and releases it before the next.
 */
export async function encodePrompts(
  folder: PipelineFolder,
  texts: readonly string[],
  session: SessionOptions = {},
): Promise<Conditioning[]> {
  const perEncoder: { ehs: { shape: number[]; data: Float32Array }[]; pooled?: Float32Array[] }[] = [];
  for (let e = 0; e < folder.textEncoders.length; e++) {
    const enc = folder.textEncoders[e];
    const tokenizer = loadTokenizer(folder.tokenizers[e].dir);
    const hidden = conditioningOutput(folder, e);
    const pooledName = isXl(folder) && e === 1 ? TEXT_EMBEDS : undefined;
    if (pooledName && !describe(enc.outputs, pooledName))
      throw new HollowcError(`${enc.name} has no output ${pooledName} (SDXL's pooled, projected prompt embedding)`, enc.model);
    const ids = describe(enc.inputs, INPUT_IDS);
    const s = await createSession(enc.model, session);
    const result: (typeof perEncoder)[number] = { ehs: [], pooled: pooledName ? [] : undefined };
    try {
      for (const text of texts) {
        const tokens = tokenizer.encode(text).inputIds;
        const r = await s.run({ [INPUT_IDS]: tensorFor(ids, tokens, [1, tokens.length]) }, pooledName ? [hidden, pooledName] : [hidden]);
        result.ehs.push({ shape: [...r[hidden].dims.slice(1)], data: Float32Array.from(floatValues(r[hidden], hidden)) });
        if (pooledName) result.pooled!.push(Float32Array.from(floatValues(r[pooledName], pooledName)));
      }
    } finally {
      await releaseSession(s);
    }
    perEncoder.push(result);
  }
  return texts.map((_, i) => {
    const parts = perEncoder.map((p) => p.ehs[i]);
    const T = parts[0].shape[0];
    if (parts.some((p) => p.shape[0] !== T))
      throw new HollowcError(`the text encoders return different sequence lengths (${parts.map((p) => p.shape[0]).join(' vs ')})`);
    const D = parts.reduce((a, p) => a + p.shape[1], 0);
    const data = new Float32Array(T * D);
    for (let t = 0; t < T; t++) {
      let at = t * D;
      for (const p of parts) {
        const d = p.shape[1];
        data.set(p.data.subarray(t * d, (t + 1) * d), at);
        at += d;
      }
    }
    const c: Conditioning = { encoderHiddenStates: { shape: [T, D], data } };
    const pooled = perEncoder.find((p) => p.pooled)?.pooled?.[i];
    if (pooled) c.textEmbeds = { shape: [pooled.length], data: pooled };
    return c;
  });
}

/** Whether "no negative prompt" is zeros here (SDXL's force_zeros_for_empty_prompt), not the encoded "". */
export function zeroEmptyNegative(folder: PipelineFolder): boolean {
  return isXl(folder) && folder.modelIndex.force_zeros_for_empty_prompt === true;
}

/** Image side / latent side: 2^(VAE blocks - 1). */
export function vaeScaleFactor(folder: PipelineFolder): number {
  const blocks = folder.vaeDecoder.config.block_out_channels ?? folder.vaeEncoder.config.block_out_channels;
  return Array.isArray(blocks) && blocks.length > 0 ? 2 ** (blocks.length - 1) : 8;
}

export function latentChannels(folder: PipelineFolder): number {
  const c = folder.vaeDecoder.config.latent_channels ?? folder.unet.config.in_channels ?? 4;
  if (typeof c !== 'number') throw new HollowcError('vae_decoder/config.json: latent_channels is not a number', folder.dir);
  return c;
}

/** The image size diffusers defaults to: unet sample_size × the VAE factor. */
export function defaultImageSize(folder: PipelineFolder): number {
  const s = folder.unet.config.sample_size;
  const side = Array.isArray(s) ? s[0] : s;
  if (typeof side !== 'number') throw new HollowcError('unet/config.json has no sample_size: give --width and --height', folder.dir);
  return side * vaeScaleFactor(folder);
}

export interface TextToImageOptions {
  folder: PipelineFolder;
  prompt: string;
  /** The unconditional row's prompt (default "", or zeros for SDXL force_zeros_for_empty_prompt). */
  negativePrompt?: string;
  width: number;
  height: number;
  steps: number;
  guidance: number;
  /** default: the folder scheduler's class when hollowc has it, else ddim */
  scheduler?: SchedulerName;
  /** overrides the config's timestep_spacing */
  spacing?: TimestepSpacing;
  seed: number;
  numImages: number;
  /** N(0, 1) noise [N, C, h, w] to start from (scaled by init_noise_sigma), instead of the seed's. */
  initLatents?: Float32Array;
  /** another UNet graph to run instead of unet/model.onnx (e.g. with a LoRA folded in) */
  unetModel?: string;
  /** a compiled hollowc folder: sample with its two-path infer.onnx */
  run?: { out: string; lora?: string; classPrompt?: string; classConditioning?: Conditioning };
  /** skip the VAE (latents only) */
  decode?: boolean;
  session?: SessionOptions;
  onStep?: (i: number, steps: number) => void;
  onStage?: (stage: 'text' | 'unet' | 'vae', state: 'start' | 'end') => void;
}

export interface TextToImageResult {
  latents: LatentBatch;
  images?: { data: Float32Array; dims: number[] };
  scheduler: SchedulerName;
  timesteps: number[];
  prediction: string;
  /** where the LoRA came from in run mode */
  loraSource?: string;
  seconds: number;
}

export function checkImageSize(folder: PipelineFolder, width: number, height: number): void {
  const f = vaeScaleFactor(folder);
  for (const [name, v] of [
    ['width', width],
    ['height', height],
  ] as const) {
    if (!Number.isInteger(v) || v < f || v % f !== 0 || v > 16384)
      throw new HollowcError(`--${name} must be a positive multiple of ${f} (the VAE's factor), got ${v}`);
  }
}

function timeIdsFor(o: TextToImageOptions): Float32Array {
  // original_size + crops_coords_top_left + target_size
  return Float32Array.of(o.height, o.width, 0, 0, o.height, o.width);
}

async function denoisePipeline(
  o: TextToImageOptions,
  configured: ConfiguredScheduler,
  cond: Conditioning,
  negative: Conditioning,
  noise: Float32Array,
  shape: number[],
): Promise<{ latents: Float32Array; timesteps: number[] }> {
  const folder = o.folder;
  const scheduler = configured.make(o.steps);
  const [N] = shape;
  const guided = o.guidance > 1;
  const rows = guided ? [...new Array(N).fill(negative), ...new Array(N).fill(cond)] : new Array(N).fill(cond);
  const B = rows.length;
  const [T, D] = cond.encoderHiddenStates.shape;
  const inputs = folder.unet.inputs;
  const fixed: Record<string, ort.Tensor> = {
    [ENCODER_HIDDEN_STATES]: tensorFor(
      describe(inputs, ENCODER_HIDDEN_STATES),
      stackRows(
        rows.map((c) => c.encoderHiddenStates.data),
        ENCODER_HIDDEN_STATES,
      ),
      [B, T, D],
    ),
  };
  if (describe(inputs, TEXT_EMBEDS)) {
    if (!cond.textEmbeds) throw new HollowcError('the UNet takes text_embeds but the text encoders gave none');
    fixed[TEXT_EMBEDS] = tensorFor(
      describe(inputs, TEXT_EMBEDS),
      stackRows(
        rows.map((c) => c.textEmbeds?.data),
        TEXT_EMBEDS,
      ),
      [B, cond.textEmbeds.data.length],
    );
  }
  if (describe(inputs, TIME_IDS)) {
    const ids = timeIdsFor(o);
    fixed[TIME_IDS] = tensorFor(
      describe(inputs, TIME_IDS),
      stackRows(
        rows.map(() => ids),
        TIME_IDS,
      ),
      [B, ids.length],
    );
  }
  const unknown = inputs.filter((i) => !(i.name in fixed) && i.name !== SAMPLE && i.name !== TIMESTEP);
  if (unknown.length) throw new HollowcError(`cannot feed the UNet's input(s) ${unknown.map((i) => i.name).join(', ')}`, folder.unet.model);
  const timestepDesc = describe(inputs, TIMESTEP)!;
  const sampleDesc = describe(inputs, SAMPLE);

  // A float16 UNet: keep its weights float16 in memory (cast at each use) instead of the float32
  // copies onnxruntime's CPU provider makes at session start. Full SD 2.1 at 32x32: peak 5.96 ->
  // 3.73 GB, session 13.6 -> 1.0 s, one evaluation 0.63 -> 1.1-1.5 s (the weights cast every run).
  const half = sampleDesc?.dtype === 'float16';
  const session = await createSession(
    o.unetModel ?? folder.unet.model,
    half ? withArtifactConfig(o.session ?? {}, { sessionConfig: { ...FLOAT16_WEIGHTS_SESSION_CONFIG } }) : (o.session ?? {}),
  );
  let latents: Float32Array;
  try {
    const outputName = session.outputNames.includes(OUT_SAMPLE) ? OUT_SAMPLE : session.outputNames[0];
    latents = await denoise({
      scheduler,
      latents: Float32Array.from(noise, (x) => x * scheduler.initNoiseSigma),
      rows: guided ? 2 : 1,
      guidance: o.guidance,
      seed: o.seed,
      predict: async (batch, t) => {
        const timestep =
          timestepDesc.shape.length === 0 ? tensorFor(timestepDesc, [t], []) : tensorFor(timestepDesc, new Array(B).fill(t), [B]);
        const r = await session.run({ ...fixed, [SAMPLE]: tensorFor(sampleDesc, batch, [B, ...shape.slice(1)]), [TIMESTEP]: timestep }, [
          outputName,
        ]);
        return floatValues(r[outputName], outputName);
      },
      onStep: o.onStep ? (done, total) => o.onStep!(done, total) : undefined,
    });
  } finally {
    await releaseSession(session);
  }
  return { latents, timesteps: [...scheduler.timesteps] };
}

/** Two-path sampling with infer.onnx, one image at a time (image k > 0 draws its ancestral noise from seed + k). */
async function denoiseRun(
  o: TextToImageOptions,
  configured: ConfiguredScheduler,
  cond: Conditioning,
  negative: Conditioning | undefined,
  classCond: Conditioning,
  noise: Float32Array,
  shape: number[],
) {
  const run = o.run!;
  const sampler = await Sampler.open({
    out: run.out,
    lora: run.lora,
    ep: o.session?.ep,
    fallbackToCpu: o.session?.fallbackToCpu,
    session: {
      intraOpThreads: o.session?.intraOpThreads,
      optimization: o.session?.optimization,
      report: o.session?.report,
      log: o.session?.log,
      pool: o.session?.pool,
    },
  });
  const [N] = shape;
  const size = noise.length / N;
  const latents = new Float32Array(noise.length);
  let timesteps: number[] = [];
  try {
    for (let k = 0; k < N; k++) {
      const r = await sampler.sample({
        prompt: cond,
        classPrompt: classCond,
        negative,
        steps: o.steps,
        guidance: o.guidance,
        scheduler: configured.name,
        seed: o.seed + k,
        latentShape: shape.slice(1),
        initialNoise: noise.slice(k * size, (k + 1) * size),
        timeIds: timeIdsFor(o),
        makeScheduler: () => configured.make(o.steps),
        onStep: (i) => o.onStep?.(i, o.steps),
      });
      latents.set(r.latents, k * size);
      timesteps = r.timesteps;
    }
    return { latents, timesteps, loraSource: sampler.loraSource };
  } finally {
    await sampler.release();
  }
}

export async function textToImage(o: TextToImageOptions): Promise<TextToImageResult> {
  const started = Date.now();
  const folder = o.folder;
  checkImageSize(folder, o.width, o.height);
  if (!(o.guidance >= 1 && Number.isFinite(o.guidance))) throw new HollowcError(`--guidance must be a number >= 1, got ${o.guidance}`);
  if (!(Number.isInteger(o.numImages) && o.numImages >= 1))
    throw new HollowcError(`--num-images must be a positive integer, got ${o.numImages}`);
  const name = o.scheduler ?? defaultSchedulerFor(folder.scheduler.className);
  const configured = configureScheduler(folder.scheduler.config, name, o.spacing);
  configured.make(o.steps); // option errors before any model is loaded

  const f = vaeScaleFactor(folder);
  const shape = [o.numImages, latentChannels(folder), o.height / f, o.width / f];
  const count = shape.reduce((a, b) => a * b, 1);
  let noise: Float32Array;
  if (o.initLatents) {
    if (o.initLatents.length !== count)
      throw new HollowcError(`--init-latents has ${o.initLatents.length} values, [${shape.join(', ')}] needs ${count}`);
    noise = o.initLatents;
  } else {
    noise = new Float32Array(count);
    fillNormal(new Rng(o.seed, 'generate/latents'), noise, 1);
  }

  // text encoders (released before the UNet loads)
  o.onStage?.('text', 'start');
  const zeroNegative = o.negativePrompt === undefined && zeroEmptyNegative(folder);
  const classText = o.run && !o.run.classConditioning ? o.run.classPrompt : undefined;
  if (o.run && !o.run.classConditioning && classText === undefined)
    throw new HollowcError('--run needs the class prompt for the base path: give --class-prompt');
  const texts = [
    o.prompt,
    ...(o.guidance > 1 && !zeroNegative ? [o.negativePrompt ?? ''] : []),
    ...(classText !== undefined ? [classText] : []),
  ];
  const encoded = await encodePrompts(folder, texts, o.session);
  const cond = encoded[0];
  const negative = o.guidance > 1 ? (zeroNegative ? zeroConditioning(cond) : encoded[1]) : zeroConditioning(cond);
  o.onStage?.('text', 'end');

  o.onStage?.('unet', 'start');
  let result: { latents: Float32Array; timesteps: number[]; loraSource?: string };
  if (o.run) {
    const classCond = o.run.classConditioning ?? encoded[encoded.length - 1];
    if (classCond.encoderHiddenStates.shape.join() !== cond.encoderHiddenStates.shape.join()) {
      throw new HollowcError(
        `the class prompt embedding is [${classCond.encoderHiddenStates.shape}], the prompt's [${cond.encoderHiddenStates.shape}]: they must come from the same text encoders`,
      );
    }
    result = await denoiseRun(o, configured, cond, negative, classCond, noise, shape);
  } else {
    result = await denoisePipeline(o, configured, cond, negative, noise, shape);
  }
  o.onStage?.('unet', 'end');

  const latents = { data: result.latents, shape };
  let images: TextToImageResult['images'];
  if (o.decode ?? true) {
    o.onStage?.('vae', 'start');
    images = await decodeLatents(folder, latents, o.session);
    o.onStage?.('vae', 'end');
  }
  return {
    latents,
    images,
    scheduler: name,
    timesteps: result.timesteps,
    prediction: configured.prediction,
    loraSource: result.loraSource,
    seconds: (Date.now() - started) / 1000,
  };
}
