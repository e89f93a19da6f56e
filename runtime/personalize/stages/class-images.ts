/**
 * class images: prior-preservation images generated with the base pipeline (cached in
 * run/class-images/) or read from --class-dir, VAE-encoded -> run/data/class_latents/.
 */
import * as fs from 'fs';
import * as path from 'path';
import { Rng, fillNormal } from '../../../models/random';
import { ImageTensor, loadImage, savePng, stackImages } from '../../formats/images';
import { ProgressLine } from '../../progress';
import { writeLatents } from '../../store/training-data';
import { textToImage } from '../../text-to-image/text-to-image';
import { encodeImages } from '../../text-to-image/vae';
import { Stage, killPoint } from '../stage-runner';
import { StageContext, countFiles } from './context';

/** Class images generated per text-to-image call: bounds the UNet batch (2 rows per image with guidance). */
const CLASS_CHUNK = 4;

export function classImagesStage(ctx: StageContext): Stage {
  const { s, dirs } = ctx;
  const latentsDir = path.join(dirs.data, 'class_latents');
  const rm = (p: string) => fs.rmSync(p, { recursive: true, force: true });
  return {
    name: 'class images',
    key: ctx.keys.class,
    valid: () =>
      countFiles(latentsDir, '.npy') === s.classCount &&
      (s.classMode !== 'generate' || countFiles(dirs.classImages, '.png') === s.classCount),
    clean: () => [latentsDir, dirs.classImages].forEach(rm),
    run: async (resuming) => {
      rm(latentsDir);
      if (s.classMode === 'none') return { summary: 'none (no --class-images or --class-dir): the store holds instance samples only' };
      let tensors: ImageTensor[];
      let made = 0;
      if (s.classMode === 'generate') {
        made = await generateClassImages(ctx, resuming);
        tensors = [];
        for (const f of classImageFiles(ctx)) tensors.push(await loadImage(f, s.size));
      } else tensors = s.classDirImages;
      const z = await encodeImages(s.folder, stackImages(tensors), { session: s.session, seed: s.seed + 1 });
      writeLatents(latentsDir, z);
      const what =
        s.classMode === 'generate'
          ? `generated ${made} class image(s) with the base pipeline on "${s.options.classPrompt}" (${tensors.length - made} already there, ${s.classSteps} steps)`
          : `read ${tensors.length} class image(s) from ${s.options.classDir}`;
      return { summary: `${what}; VAE-encoded them into ${z.shape[0]} class latents` };
    },
  };
}

function classImageFiles(ctx: StageContext): string[] {
  return Array.from({ length: ctx.s.classCount }, (_, i) => path.join(ctx.dirs.classImages, `${String(i).padStart(4, '0')}.png`));
}

/** Generates the class images not on disk yet; returns how many it made. */
async function generateClassImages(ctx: StageContext, resuming: boolean): Promise<number> {
  const { s, dirs } = ctx;
  const n = s.classCount;
  const files = classImageFiles(ctx);
  if (!resuming) fs.rmSync(dirs.classImages, { recursive: true, force: true });
  fs.mkdirSync(dirs.classImages, { recursive: true });
  // fixed chunks of CLASS_CHUNK images: a chunk is made whole (its batch decides its values), and kept once all its images are on disk
  const per = s.latent.reduce((a, b) => a * b, 1);
  const chunks = Array.from({ length: Math.ceil(n / CLASS_CHUNK) }, (_, c) =>
    files.slice(c * CLASS_CHUNK, (c + 1) * CLASS_CHUNK).map((_, k) => c * CLASS_CHUNK + k),
  );
  const todo = chunks.filter((chunk) => chunk.some((i) => !fs.existsSync(files[i])));
  const already = n - todo.reduce((a, c) => a + c.length, 0);
  const bar = todo.length ? new ProgressLine('class images', n, ctx.progress, already) : undefined;
  let made = 0;
  for (const chunk of todo) {
    const init = new Float32Array(chunk.length * per);
    chunk.forEach((i, k) => {
      const noise = new Float32Array(per);
      fillNormal(new Rng(s.seed, `personalize/class/${i}`), noise, 1);
      init.set(noise, k * per);
    });
    const r = await textToImage({
      folder: s.folder,
      prompt: s.options.classPrompt,
      width: s.resolution,
      height: s.resolution,
      steps: s.classSteps,
      guidance: s.guidance,
      seed: s.seed,
      numImages: chunk.length,
      initLatents: init,
      session: s.session,
    });
    for (let k = 0; k < chunk.length; k++) await savePng(files[chunk[k]], r.images!.data, r.images!.dims, k);
    made += chunk.length;
    bar?.update(already + made);
    killPoint('class images');
  }
  bar?.finish();
  return made;
}
