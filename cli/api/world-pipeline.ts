/**
 * The small Stable Diffusion hollowc trains itself on models/world (issue 32): a tiny SD 1.5-shaped
 * pipeline (the builder's layout: the real CLIP BPE tokenizer, a CLIP-shaped text encoder, a VAE,
 * a UNet with SD's blocks) whose UNet learns from scratch with hollowc's own training: `hollow
 * none`, `train base "*"`, epsilon prediction on SD's schedule, the world's scenes as a captioned
 * set (precompute's captions), one caption in ten replaced by the empty prompt so that
 * classifier-free guidance has an unconditional prediction to push away from.
 *
 * The text encoder stays as the builder seeded it (WORLD_TOKENS, WORLD_TEXT_EMBEDDING_SCALE): a
 * randomly initialized CLIP already tells the world's captions apart (a linear probe on its output
 * at CLIP's init read size, color, kind and background of held-out captions without error), and
 * the UNet's cross-attention learns to read it once each word is not drowned (below). The VAE
 * comes trained from its own stage (a folder with vae_encoder/ and vae_decoder/).
 */
import * as fs from 'fs';
import * as path from 'path';
import { writeFileAtomic } from '../../compiler/atomic-files';
import { HollowcError } from '../../compiler/errors';
import { readManifest } from '../../compiler/manifest';
import { buildPipeline } from '../../models/builder';
import { SizeName, captionOf, expectedOf, pixelsOfTensor, pngOf, sampleScene, scoreImage } from '../../models/world';
import { SessionPool } from '../../runtime/ort/session-pool';
import { openPipelineFolder } from '../../runtime/text-to-image/pipeline-folder';
import { encodePrompts, textToImage } from '../../runtime/text-to-image/text-to-image';
import { encodeImages } from '../../runtime/text-to-image/vae';
import { Latent, captionedTrainingData } from '../../runtime/store/training-data';
import { precompute } from '../../runtime/store/precompute';
import { Store } from '../../runtime/store/store';
import { CHECKPOINT_FILE, LOSS_LOG_FILE, TRAIN_DIR } from '../../runtime/train/checkpoint';
import { train } from '../../runtime/train/train';
import { compileSpec } from './compile-spec';
import { exportUnet } from './export-unet';
import { checkSpecFile } from './spec';
import { HELD_OUT_SEED, drawScenes, trainVae } from './train-vae';
import { loadUNet } from './unet';
import { lossCurve, textEncoderSha256, writeWorldRecord } from './world-record';

export interface WorldPipelineOptions {
  /** The pipeline folder to write. */
  out: string;
  /** A folder with the trained vae_encoder/ and vae_decoder/ (their config.json carries scaling_factor). */
  vae: string;
  /** Where the intermediate folders go (kept, so a rerun resumes training). */
  work: string;
  seed?: number;
  /** Image side in pixels (the latent side follows from the VAE). */
  size?: number;
  /** Distinct training scenes (each drawn, encoded and captioned once). */
  scenes?: number;
  steps?: number;
  batch?: number;
  lr?: number;
  /** Share of records trained on the empty prompt. */
  captionDropout?: number;
  threads?: number;
  log?: (line: string) => void;
}

function specText(
  o: Required<Pick<WorldPipelineOptions, 'seed' | 'steps' | 'batch' | 'lr'>>,
  latent: readonly number[],
  tokens: number,
  width: number,
): string {
  return [
    '# the world pipeline UNet, trained from its random init (cli/api/world-pipeline.ts)',
    'model sd15',
    'hollow none',
    `shape sample [${o.batch}, ${latent.join(', ')}]`,
    `shape timestep [${o.batch}]`,
    `shape encoder_hidden_states [${o.batch}, ${tokens}, ${width}]`,
    'train base "*"',
    'loss mse epsilon',
    `optimizer adamw lr ${o.lr} weight_decay 0`,
    'emit grads',
    `seed ${o.seed}`,
    `train steps ${o.steps} batch ${o.batch}`,
    '',
  ].join('\n');
}

/**
 * The world's captions are at most 11 tokens with BOS and EOS ("a small sks toy on a blue
 * background" included). At CLIP's 77 positions the UNet's cross-attention starts out averaging 77 positions,
 * so a caption word is 1/77 of what it reads: after 2000 steps (batch 16) the trained UNet's output
 * moved 0.0066 rms between "... on a blue background" and "... on a yellow background" (0.86 rms
 * output) and backgrounds came out right at chance. Tokenizer and text encoder take WORLD_TOKENS.
 */
export const WORLD_TOKENS = 16;

/**
 * The frozen text encoder's embeddings are drawn 50x CLIP's init (about N(0, 1)): at CLIP's own
 * 0.02 its two random fan-in-scaled layers drown each word, and changing the background word moved
 * that word's own position by 0.19 rms (of unit-scaled features), the rest by ~0.1. At 50x the
 * word's position moves by 0.91 and the object's color word by 0.97, so the UNet can read both.
 */
export const WORLD_TEXT_EMBEDDING_SCALE = 50;

/** Whether precompute filled the store at `dir` (a killed one is resumed by precompute itself). */
function storeFinished(dir: string): boolean {
  if (!Store.exists(dir)) return false;
  const { store } = Store.open(dir, { readOnly: true });
  try {
    return store.progress()?.finished === true;
  } finally {
    store.close();
  }
}

/** Builds, trains and writes the world pipeline; returns the pipeline folder. */
export async function trainWorldPipeline(options: WorldPipelineOptions): Promise<{ out: string; losses: number[] }> {
  // an option given as undefined keeps its default (a spread would overwrite it with undefined)
  const given = Object.fromEntries(Object.entries(options).filter(([, v]) => v !== undefined)) as WorldPipelineOptions;
  const o = { seed: 0, size: 32, scenes: 16384, steps: 8000, batch: 16, lr: 1e-3, captionDropout: 0.1, ...given };
  const log = o.log ?? (() => {});
  for (const part of ['vae_encoder', 'vae_decoder'])
    if (!fs.existsSync(path.join(o.vae, part, 'model.onnx'))) throw new HollowcError(`no ${part}/model.onnx`, o.vae);
  fs.mkdirSync(o.work, { recursive: true });
  const base = path.join(o.work, 'base');
  if (!fs.existsSync(base)) {
    log('building the tiny SD 1.5 pipeline (random init)');
    // made whole beside its place and renamed: a kill leaves no base with the builder's random VAE
    const tmp = `${base}.tmp`;
    fs.rmSync(tmp, { recursive: true, force: true });
    await buildPipeline('sd15', 'tiny', tmp, { seed: o.seed, maxTokens: WORLD_TOKENS, textEmbeddingScale: WORLD_TEXT_EMBEDDING_SCALE });
    for (const part of ['vae_encoder', 'vae_decoder']) {
      fs.rmSync(path.join(tmp, part), { recursive: true, force: true });
      fs.cpSync(path.join(o.vae, part), path.join(tmp, part), { recursive: true });
    }
    fs.renameSync(tmp, base);
  }
  const folder = openPipelineFolder(base);
  const session = o.threads ? { intraOpThreads: o.threads } : {};
  const compiled = path.join(o.work, 'compiled');
  if (!storeFinished(path.join(compiled, 'store'))) {
    log(`drawing and encoding ${o.scenes} scenes at ${o.size} px`);
    // the VAE's training scenes are these too (seeds 0, 1, ...); scoring draws from HELD_OUT_SEED on
    const scenes = Array.from({ length: o.scenes }, (_, i) => sampleScene(i));
    const latents: Latent[] = [];
    const chunk = 64;
    for (let start = 0; start < scenes.length; start += chunk) {
      const part = scenes.slice(start, start + chunk);
      const data = await drawScenes(part, o.size);
      const z = await encodeImages(folder, { data, dims: [part.length, 3, o.size, o.size] }, { seed: o.seed + start, session });
      const per = z.shape.slice(1);
      const n = per.reduce((a, b) => a * b, 1);
      for (let k = 0; k < part.length; k++)
        latents.push({ name: `scene ${start + k}`, file: 'world', shape: per, data: z.data.slice(k * n, (k + 1) * n) });
    }
    const texts = [...new Set(scenes.map(captionOf)), ''];
    const index = new Map(texts.map((t, k) => [t, k]));
    log(`encoding ${texts.length} captions`);
    const table = await encodePrompts(folder, texts, session);
    const data = captionedTrainingData(
      latents,
      { table, texts, ofSample: scenes.map((s) => index.get(captionOf(s))!), dropout: { index: texts.length - 1, rate: o.captionDropout } },
      'world',
    );
    const [tokens, width] = table[0].encoderHiddenStates.shape;
    const spec = path.join(o.work, 'unet.hollow');
    fs.writeFileSync(spec, specText(o, latents[0].shape, tokens, width));
    const unet = loadUNet(path.join(base, 'unet', 'model.onnx'));
    if (!fs.existsSync(path.join(compiled, 'manifest.json'))) compileSpec(unet, checkSpecFile(unet, spec), { out: compiled });
    await precompute({ out: compiled, data, count: o.steps * o.batch, session });
  }
  log(`training ${o.steps} steps of batch ${o.batch}`);
  // a run killed before its first checkpoint left train/ without one: that starts over, as train would
  const resume = fs.existsSync(path.join(compiled, TRAIN_DIR, CHECKPOINT_FILE));
  const r = await train({ out: compiled, steps: o.steps, resume, session });
  // generate's default size is the UNet's sample_size times the VAE's factor: make it the latent side trained at
  const unetConfig = path.join(base, 'unet', 'config.json');
  const latentSide = readManifest(compiled).training.shapes.sample[2];
  writeFileAtomic(
    unetConfig,
    JSON.stringify({ ...JSON.parse(fs.readFileSync(unetConfig, 'utf8')), sample_size: latentSide }, null, 2) + '\n',
  );
  exportUnet({ out: compiled, format: 'onnx', pipeline: base, output: o.out });
  return { out: o.out, losses: r.losses.map((l) => l.loss) };
}

export interface WorldScores {
  samples: number;
  background: number;
  objectColor: number;
  objectKind: number;
  /** The kind's share among the captions of each size (small objects are the hard part at 32 px). */
  objectKindBySize: Partial<Record<SizeName, number>>;
  size: number;
}

/** Samples held-out captions (DDIM, CFG) and scores each image with the world's pixel scorers: the share right per attribute. */
export async function scoreWorldPipeline(
  pipeline: string,
  o: { samples?: number; steps?: number; guidance?: number; seed?: number; size?: number; threads?: number; save?: string } = {},
): Promise<WorldScores> {
  const folder = openPipelineFolder(pipeline);
  const samples = o.samples ?? 100;
  const size = o.size ?? 32;
  const tally = { background: 0, objectColor: 0, objectKind: 0, size: 0 };
  const bySize: Record<SizeName, { right: number; of: number }> = { small: { right: 0, of: 0 }, large: { right: 0, of: 0 } };
  if (o.save) fs.mkdirSync(o.save, { recursive: true });
  // one caption after another through the same graphs: each opens once (session-pool.ts)
  const pool = new SessionPool();
  try {
    for (let i = 0; i < samples; i++) await scoreOne(i);
  } finally {
    await pool.close();
  }
  return {
    samples,
    background: tally.background / samples,
    objectColor: tally.objectColor / samples,
    objectKind: tally.objectKind / samples,
    objectKindBySize: Object.fromEntries(
      Object.entries(bySize)
        .filter(([, t]) => t.of > 0)
        .map(([k, t]) => [k, t.right / t.of]),
    ),
    size: tally.size / samples,
  };

  async function scoreOne(i: number): Promise<void> {
    const scene = sampleScene(HELD_OUT_SEED + i);
    const r = await textToImage({
      folder,
      prompt: captionOf(scene),
      width: size,
      height: size,
      steps: o.steps ?? 25,
      guidance: o.guidance ?? 4,
      scheduler: 'ddim',
      seed: (o.seed ?? 0) + i,
      numImages: 1,
      session: { ...(o.threads && { intraOpThreads: o.threads }), pool },
    });
    const pixels = pixelsOfTensor(r.images!.data, r.images!.dims, 0);
    const card = scoreImage(pixels, size, expectedOf(scene));
    tally.background += Number(card.background);
    tally.objectColor += Number(!!card.objectColor);
    tally.objectKind += Number(!!card.objectKind);
    bySize[scene.size].right += Number(!!card.objectKind);
    bySize[scene.size].of++;
    tally.size += Number(!!card.size);
    if (o.save) fs.writeFileSync(path.join(o.save, `${i}-${captionOf(scene).replace(/ /g, '_')}.png`), await pngOf(pixels, size));
  }
}

/** Where `world build` keeps the VAE stage's loss log (one line per step: step, loss and its terms, seconds). */
const VAE_LOSS_LOG = 'loss.jsonl';

/**
 * The whole pipeline from a seed, as one call: the VAE (train-vae.ts, in `<work>/vae`), then the
 * UNet on its latents (trainWorldPipeline), then hollowc-world.json (world-record.ts) beside them.
 * Each stage is skipped when its output is there, so a rerun after a crash goes on where it stopped.
 */
export async function buildWorldPipeline(
  o: Omit<WorldPipelineOptions, 'vae'> & { vaeSteps?: number },
): Promise<{ out: string; losses: number[]; seconds: { vae: number; unet: number } }> {
  const vae = path.join(o.work, 'vae');
  if (!fs.existsSync(vae)) {
    // trained beside its place and renamed when whole: a kill mid-way leaves no VAE folder that looks done
    const tmp = `${vae}.tmp`;
    fs.rmSync(tmp, { recursive: true, force: true });
    fs.mkdirSync(o.work, { recursive: true });
    const r = await trainVae({ out: tmp, seed: o.seed, steps: o.vaeSteps, threads: o.threads, log: o.log });
    fs.writeFileSync(
      path.join(tmp, VAE_LOSS_LOG),
      r.log.map((st) => JSON.stringify({ step: st.step, loss: st.losses.loss, ...st.losses, seconds: st.seconds })).join('\n') + '\n',
    );
    fs.renameSync(tmp, vae);
  }
  const r = await trainWorldPipeline({ ...o, vae });
  // times and curves from the logs, so a resumed build reports the whole run, not its last piece
  const unetLog = path.join(o.work, 'compiled', TRAIN_DIR, LOSS_LOG_FILE);
  const unetLines = fs.readFileSync(unetLog, 'utf8').trim().split('\n');
  const vaeLog = path.join(vae, VAE_LOSS_LOG);
  const vaeSteps = fs.existsSync(vaeLog)
    ? fs
        .readFileSync(vaeLog, 'utf8')
        .trim()
        .split('\n')
        .map((l) => JSON.parse(l) as { seconds: number })
    : [];
  const seconds = {
    vae: vaeSteps.reduce((a, st) => a + st.seconds, 0),
    unet: (JSON.parse(unetLines[unetLines.length - 1]) as { elapsed_s: number }).elapsed_s,
  };
  const options = {
    seed: o.seed ?? 0,
    steps: o.steps ?? 8000,
    batch: o.batch ?? 16,
    scenes: o.scenes ?? 16384,
    lr: o.lr ?? 1e-3,
    vaeSteps: o.vaeSteps ?? 12000,
  };
  writeWorldRecord(o.out, {
    command: `hollowc world build -o ${o.out} --seed ${options.seed} --vae-steps ${options.vaeSteps} --steps ${options.steps} --batch ${options.batch} --scenes ${options.scenes} --lr ${options.lr}`,
    options: {
      seed: options.seed,
      vaeSteps: options.vaeSteps,
      steps: options.steps,
      batch: options.batch,
      scenes: options.scenes,
      lr: options.lr,
      size: o.size ?? 32,
    },
    builder: { family: 'sd15', size: 'tiny', seed: options.seed, maxTokens: WORLD_TOKENS, textEmbeddingScale: WORLD_TEXT_EMBEDDING_SCALE },
    textEncoderSha256: textEncoderSha256(o.out),
    seconds,
    loss: { vae: fs.existsSync(vaeLog) ? lossCurve(vaeLog) : [], unet: lossCurve(unetLog) },
    date: new Date().toISOString().slice(0, 10),
  });
  return { ...r, seconds };
}
