/** `hollowc decode`: latents (generate's --latents-out, a data folder's latents/) -> PNG through a pipeline folder's VAE decoder. */
import * as fs from 'fs';
import * as path from 'path';
import { Command } from 'commander';
import { HollowcError } from '../compiler/errors';
import { savePng } from '../runtime/formats/images';
import { ExecutionProvider } from '../runtime/ort/session';
import { decodeLatentFiles } from '../runtime/text-to-image/image-latents';
import { imageFileName } from './api/generate-pipeline';
import { TuningCli, out, sessionOptions, tuning } from './options';

interface DecodeCli extends TuningCli {
  model: string;
  output: string;
  ep: ExecutionProvider;
  cpuFallback?: boolean;
}

export function registerDecode(program: Command): void {
  const command = program
    .command('decode')
    .description(
      "latents (times the VAE's scaling factor, as generate --latents-out writes them) -> PNG through a pipeline folder's VAE decoder",
    )
    .argument('<latents>', 'a .npy [N, C, h, w] or [C, h, w], a .safetensors batch, or a folder of .npy latents')
    .requiredOption('--model <folder>', 'a pipeline folder (optimum ONNX layout)')
    .requiredOption('-o, --output <file.png>', 'the image; several latents are written as <name>-0.png, <name>-1.png, ...');
  sessionOptions(command).action(async (latents: string, o: DecodeCli) => {
    if (path.extname(o.output).toLowerCase() !== '.png') throw new HollowcError('the output must be a .png file', o.output);
    const r = await decodeLatentFiles({ model: o.model, latents, session: { ep: o.ep, fallbackToCpu: o.cpuFallback, ...tuning(o) } });
    const n = r.latents.length;
    fs.mkdirSync(path.dirname(path.resolve(o.output)), { recursive: true });
    const written: string[] = [];
    for (let i = 0; i < n; i++) {
      const file = imageFileName(o.output, i, n);
      await savePng(file, r.images.data, r.images.dims, i);
      written.push(file);
    }
    out(
      `decoded ${n} latent${n === 1 ? '' : 's'} [${r.latents[0].shape.join(', ')}] into ${r.images.dims[3]}x${r.images.dims[2]} images (${path.join(r.folder.dir, 'vae_decoder')}, scaling factor ${r.folder.scalingFactor})`,
    );
    out(`  wrote ${written.join(', ')}`);
  });
}
