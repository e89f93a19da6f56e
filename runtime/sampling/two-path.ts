/**
 * `hollowc generate`: two-path sampling with classifier-free guidance (paper 4.3, Fig. 3).
 *
 * infer.onnx computes path 1 (the base UNet without LoRA, down to the hollow activation, on
 * `base_encoder_hidden_states`) and path 2 (the hollowed net with LoRA on `encoder_hidden_states`)
 * in one run. Guidance runs it once per step at batch 2:
 *
 *   row 0, unconditional:  path 1 and path 2 both get the negative prompt (default: zeros)
 *   row 1, conditional:    path 1 gets the class prompt ("a photo of a dog"),
 *                          path 2 the personalized prompt ("a photo of sks dog")
 *
 * and out = uncond + guidance · (cond − uncond). With guidance 1 only row 1 runs. SDXL's pooled
 * `text_embeds` / `base_text_embeds` follow the same rows; `time_ids` are shared. A baked model
 * (`hollowc bake`) has the LoRA folded in and takes no LoRA inputs.
 *
 * Initial latents are N(0, 1) from the stream `generate/latents` of the seed (times the
 * scheduler's init sigma); Euler-ancestral noise for step i comes from `generate/noise/<i>`.
 */
import * as fs from 'fs';
import * as path from 'path';
import * as ort from 'onnxruntime-node';
import { HollowcError } from '../../compiler/errors';
import { Rng, fillNormal } from '../../models/random';
import { defaultLatentShape, floatValues, loadManifest, requireArtifact, tensorFor, timestepFor } from '../ort/artifacts';
import { inputValues } from '../formats/float16';
import { readLoraForManifest } from '../formats/lora-file';
import { LORA_INIT_FILE, TRAINED_LORA_FILE } from '../formats/lora-format';
import { NoiseSchedule } from './noise-schedule';
import { defaultTimeIds, twoPathConditioningFeeds } from './conditioning';
import { Scheduler, SchedulerName, TimestepSpacing, makeScheduler } from './schedulers';
import { ExecutionProvider, SessionTuning, createSession, withArtifactConfig } from '../ort/session';
import { releaseSession } from '../ort/session-pool';
import type { Conditioning } from './conditioning';
import { ArtifactDescription, CompileManifest, OUT_SAMPLE, SAMPLE, TIMESTEP } from '../../compiler/manifest';
import { denoise } from './denoise';

export interface GenerateOptions {
  out: string;
  /** The personalized prompt (path 2 of the conditional row). */
  prompt: Conditioning;
  /** The class prompt (path 1 of the conditional row). */
  classPrompt: Conditioning;
  /** The unconditional row's prompt, both paths (default: zeros, see the README). */
  negative?: Conditioning;
  steps: number;
  guidance: number;
  scheduler: SchedulerName;
  seed: number;
  spacing?: TimestepSpacing;
  /** LoRA file (peft or kohya); default `<out>/lora.safetensors`, else lora-init (B = 0: the base model). */
  lora?: string;
  /** A baked infer model (LoRA folded in) instead of infer.onnx + LoRA. */
  baked?: string;
  /** [C, h, w]; default: the training shape. */
  latentShape?: number[];
  /** Starting noise [1, C, h, w] (N(0, 1), scaled by the scheduler); default from the seed. */
  initialNoise?: Float32Array;
  timeIds?: Float32Array;
  ep?: ExecutionProvider;
  fallbackToCpu?: boolean;
  session?: SessionTuning;
  onStep?: (i: number, steps: number, timestep: number) => void;
  /** A configured sampler (e.g. from a pipeline folder's scheduler_config.json) instead of the family's. */
  makeScheduler?: () => Scheduler;
}

export interface GenerateResult {
  latents: Float32Array;
  shape: number[];
  timesteps: number[];
  loraSource: string;
  seconds: number;
}

function checkGuidance(g: number): void {
  if (!(g >= 1 && Number.isFinite(g))) throw new HollowcError(`--guidance must be a number >= 1, got ${g}`);
}

/** LoRA input values for infer.onnx, from a file; returns where they came from. */
function loraFeeds(
  out: string,
  manifest: CompileManifest,
  file: string | undefined,
  wanted: Set<string>,
): { feeds: Record<string, ort.Tensor>; source: string } {
  const feeds: Record<string, ort.Tensor> = {};
  const trained = manifest.lora.targets.filter((t) => t.trained && wanted.has(t.lora_A.name));
  if (!trained.length) return { feeds, source: 'none (the model takes no LoRA inputs)' };
  let source = file;
  if (!source)
    source = fs.existsSync(path.join(out, TRAINED_LORA_FILE)) ? path.join(out, TRAINED_LORA_FILE) : path.join(out, LORA_INIT_FILE);
  const values = readLoraForManifest(source, manifest);
  // Under `lora infer fp16` infer.onnx declares its LoRA inputs float16.
  const declared = new Map((manifest.artifacts.infer?.inputs ?? []).map((i) => [i.name, i.dtype]));
  for (const t of trained)
    for (const p of [t.lora_A, t.lora_B]) {
      const v = inputValues(declared.get(p.name) ?? 'float32', values.get(p.name)!, p.name);
      feeds[p.name] = new ort.Tensor(v.type, v.data, p.shape);
    }
  return { feeds, source };
}

export interface SamplerSource {
  out: string;
  lora?: string;
  baked?: string;
  ep?: ExecutionProvider;
  fallbackToCpu?: boolean;
  session?: SessionTuning;
}

export type SampleRequest = Omit<GenerateOptions, keyof SamplerSource>;

/**
 * infer.onnx (or a baked model) loaded once with its LoRA, for sampling several times: creating
 * the session is most of the cost of a short run.
 */
export class Sampler {
  private constructor(
    readonly source: SamplerSource,
    private readonly manifest: CompileManifest,
    private readonly session: ort.InferenceSession,
    private readonly infer: ArtifactDescription | undefined,
    private readonly lora: { feeds: Record<string, ort.Tensor>; source: string },
  ) {}

  static async open(source: SamplerSource): Promise<Sampler> {
    const manifest = loadManifest(source.out);
    // infer.onnx holds the compiled base weights: it would sample without the fine-tune, silently.
    if (manifest.trainBase?.length)
      throw new HollowcError(
        `this folder trains base weights (train base), which infer.onnx does not take: export the fine-tuned UNet (hollowc export-unet ${source.out} --format onnx --pipeline <pipeline folder> -o <folder>) and run generate --model <folder>`,
        source.out,
      );
    const infer = source.baked ? undefined : requireArtifact(source.out, manifest, 'infer', 'generate');
    const modelFile = source.baked ?? infer!.path;
    // a baked infer.onnx keeps infer.onnx's float16 weights and needs its session config too
    const session = await createSession(
      modelFile,
      withArtifactConfig({ ...source.session, ep: source.ep, fallbackToCpu: source.fallbackToCpu }, manifest.artifacts.infer),
    );
    try {
      const lora = source.baked
        ? { feeds: {}, source: `baked into ${source.baked}` }
        : loraFeeds(source.out, manifest, source.lora, new Set(session.inputNames));
      return new Sampler(source, manifest, session, infer, lora);
    } catch (e) {
      await releaseSession(session);
      throw e;
    }
  }

  get loraSource(): string {
    return this.lora.source;
  }

  async release(): Promise<void> {
    await releaseSession(this.session);
  }

  async sample(options: SampleRequest): Promise<GenerateResult> {
    const started = Date.now();
    const manifest = this.manifest;
    const session = this.session;
    const settings = manifest.training;
    const schedule = NoiseSchedule.forFamily(manifest.family);
    const modelFile = this.source.baked ?? this.infer!.file;
    checkGuidance(options.guidance);
    const scheduler: Scheduler =
      options.makeScheduler?.() ??
      makeScheduler(options.scheduler, schedule, options.steps, { prediction: settings.prediction, spacing: options.spacing });
    const latentShape = options.latentShape ?? defaultLatentShape(manifest);
    const shape = [1, ...latentShape];
    const size = latentShape.reduce((a, b) => a * b, 1);

    let latents: Float32Array;
    if (options.initialNoise) {
      if (options.initialNoise.length !== size)
        throw new HollowcError(`initial latents have ${options.initialNoise.length} values, [${shape}] needs ${size}`);
      latents = options.initialNoise.map((x) => x * scheduler.initNoiseSigma);
    } else {
      latents = new Float32Array(size);
      fillNormal(new Rng(options.seed, 'generate/latents'), latents, 1);
      if (scheduler.initNoiseSigma !== 1) latents = latents.map((x) => x * scheduler.initNoiseSigma);
    }

    const names = new Set(session.inputNames);
    const describe = (name: string) => this.infer?.inputs.find((i) => i.name === name);
    const guided = options.guidance !== 1;
    const B = guided ? 2 : 1;
    const fixed: Record<string, ort.Tensor> = { ...this.lora.feeds };
    const conditioning = twoPathConditioningFeeds(names, {
      prompt: options.prompt,
      classPrompt: options.classPrompt,
      negative: options.negative,
      guided,
      timeIds: options.timeIds ?? defaultTimeIds(latentShape),
    });
    for (const [name, { data, dims }] of conditioning) fixed[name] = tensorFor(describe(name), data, dims);
    const missing = [...names].filter((n) => !(n in fixed) && n !== SAMPLE && n !== TIMESTEP);
    if (missing.length)
      throw new HollowcError(`cannot feed input${missing.length > 1 ? 's' : ''} ${missing.slice(0, 3).join(', ')}`, modelFile);

    const outputName = session.outputNames.includes(OUT_SAMPLE) ? OUT_SAMPLE : session.outputNames[0];
    latents = await denoise({
      scheduler,
      latents,
      rows: B,
      guidance: options.guidance,
      seed: options.seed,
      predict: async (batch, t) => {
        const result = await session.run({
          ...fixed,
          [SAMPLE]: tensorFor(describe(SAMPLE), batch, [B, ...latentShape]),
          [TIMESTEP]: timestepFor(describe(TIMESTEP), new Array(B).fill(t)),
        });
        return floatValues(result[outputName], outputName); // float16 for a float16 export
      },
      onStep: options.onStep,
    });
    return { latents, shape, timesteps: [...scheduler.timesteps], loraSource: this.lora.source, seconds: (Date.now() - started) / 1000 };
  }
}

/** Opens the model, samples once, releases it. */
export async function generate(options: GenerateOptions): Promise<GenerateResult> {
  const started = Date.now();
  // Option errors first: opening the model takes a while.
  checkGuidance(options.guidance);
  makeScheduler(options.scheduler, NoiseSchedule.forFamily(loadManifest(options.out).family), options.steps, {
    prediction: 'epsilon',
    spacing: options.spacing,
  });
  const sampler = await Sampler.open(options);
  try {
    const r = await sampler.sample(options);
    return { ...r, seconds: (Date.now() - started) / 1000 };
  } finally {
    await sampler.release();
  }
}
