/** `hollowc encode`: images -> the VAE latents `precompute --data` reads, resized and cropped as personalize does. */
import * as path from 'path';
import { Command } from 'commander';
import { ExecutionProvider } from '../runtime/ort/session';
import { encodeImageFiles } from '../runtime/text-to-image/image-latents';
import { TuningCli, out, parseCount, parseSeed, sessionOptions, tuning } from './options';

interface EncodeCli extends TuningCli {
  model: string;
  output: string;
  resolution?: number;
  flip?: boolean;
  seed?: number;
  ep: ExecutionProvider;
  cpuFallback?: boolean;
}

export function registerEncode(program: Command): void {
  const command = program
    .command('encode')
    .description(
      "images -> latents through a pipeline folder's VAE encoder (times its scaling factor), resized and centre-cropped as personalize does: a precompute data folder's latents/",
    )
    .argument('<images>', 'an image file or a folder of images (JPEG, PNG, WebP; in name order)')
    .requiredOption('--model <folder>', 'a pipeline folder (optimum ONNX layout)')
    .requiredOption(
      '-o, --output <path>',
      'a new or empty folder (one <i>.npy [C, h, w] per image: <data>/latents or <data>/class_latents) or a .npy file (one batch [N, C, h, w])',
    )
    .option('--resolution <px>', "square side to resize and centre-crop to (default: the UNet's sample_size x the VAE factor)", parseCount)
    .option('--flip', "also each image's mirror image, right after it (as personalize --flip)")
    .option('--seed <n>', "seed of the VAE's sampling noise (personalize uses its --seed; default 0)", parseSeed);
  sessionOptions(command).action(async (images: string, o: EncodeCli) => {
    const r = await encodeImageFiles({
      model: o.model,
      images,
      output: o.output,
      resolution: o.resolution,
      flip: o.flip,
      seed: o.seed,
      session: { ep: o.ep, fallbackToCpu: o.cpuFallback, ...tuning(o) },
    });
    out(
      `encoded ${r.images.length} image${r.images.length === 1 ? '' : 's'}${o.flip ? ' and their mirror images' : ''} at ${r.resolution}x${r.resolution} into latents [${r.shape.join(', ')}] (${path.join(r.folder.dir, 'vae_encoder')}, scaling factor ${r.folder.scalingFactor})`,
    );
    out(`  wrote ${r.written.length > 2 ? `${r.written[0]} .. ${path.basename(r.written[r.written.length - 1])}` : r.written.join(', ')}`);
  });
}
