/**
 * `hollowc world build` and `hollowc world score`: the small SD pipeline hollowc trains itself on
 * models/world's captioned scenes (cli/api/world-pipeline.ts), and the world's pixel scores of it.
 */
import * as path from 'path';
import { Command } from 'commander';
import { packWorldPipeline } from './api/world-record';
import { buildWorldPipeline, scoreWorldPipeline } from './api/world-pipeline';
import { out, parseCount, parseNumber, parseSeed, threadsOption } from './options';

export function registerWorld(program: Command): void {
  const world = program.command('world').description("the small SD pipeline hollowc trains from scratch on models/world's scenes");
  world
    .command('build')
    .description('train the VAE, then the UNet from its random init (hollow none, train base "*"), and write the pipeline folder')
    .requiredOption('-o, --out <folder>', 'the pipeline folder to write')
    .option('--work <folder>', 'intermediate folders, kept so a rerun goes on where it stopped (default: <out>.work)')
    .option('--seed <n>', 'seed of everything', parseSeed, 0)
    .option('--vae-steps <n>', 'VAE training steps (default 12000)', parseCount)
    .option('--steps <n>', 'UNet training steps', parseCount, 8000)
    .option('--batch <n>', 'UNet batch', parseCount, 16)
    .option('--scenes <n>', 'distinct training scenes', parseCount, 16384)
    .option('--lr <x>', 'UNet learning rate', parseNumber, 1e-3)
    .addOption(threadsOption())
    .action(
      async (o: {
        out: string;
        work?: string;
        seed: number;
        vaeSteps?: number;
        steps: number;
        batch: number;
        scenes: number;
        lr: number;
        threads?: number;
      }) => {
        const r = await buildWorldPipeline({ ...o, work: o.work ?? `${path.resolve(o.out)}.work`, log: (line) => out(line) });
        const last = r.losses.slice(-100);
        out(
          `wrote ${r.out}: VAE ${r.seconds.vae.toFixed(0)} s, UNet ${r.seconds.unet.toFixed(0)} s, last 100 steps' mean loss ${(last.reduce((a, b) => a + b, 0) / last.length).toFixed(4)}`,
        );
      },
    );
  world
    .command('score')
    .description(
      "sample held-out captions (DDIM, classifier-free guidance) and score each image's background, object color, kind and size from its pixels",
    )
    .argument('<pipeline>', 'a world pipeline folder')
    .option('--samples <n>', 'held-out captions, one image each', parseCount, 100)
    .option('--steps <n>', 'DDIM steps', parseCount, 25)
    .option('--guidance <x>', 'classifier-free guidance', parseNumber, 3)
    .option('--seed <n>', 'seed of the first image (one per image after it)', parseSeed, 0)
    .option('--save <folder>', 'also write each image as a PNG named by its caption')
    .addOption(threadsOption())
    .action(
      async (pipeline: string, o: { samples: number; steps: number; guidance: number; seed: number; save?: string; threads?: number }) => {
        const s = await scoreWorldPipeline(pipeline, o);
        const pct = (x: number) => `${(100 * x).toFixed(0)}%`;
        out(
          `${s.samples} held-out captions: background ${pct(s.background)}, object color ${pct(s.objectColor)}, kind ${pct(s.objectKind)} (${Object.entries(
            s.objectKindBySize,
          )
            .map(([size, x]) => `${size} ${pct(x)}`)
            .join(', ')}), size ${pct(s.size)}`,
        );
      },
    );
  world
    .command('pack')
    .description(
      'copy a built world pipeline into the form the repository keeps (models/data/world-pipeline): everything but the text encoder and tokenizer, which are rebuilt from the recorded seed',
    )
    .argument('<pipeline>', 'a folder written by world build')
    .argument('<dest>', 'where the packed folder goes')
    .action((pipeline: string, dest: string) => {
      packWorldPipeline(pipeline, dest);
      out(`packed ${pipeline} into ${dest}`);
    });
}
