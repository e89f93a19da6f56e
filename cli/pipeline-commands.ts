/**
 * Pipeline-folder commands:
 *
 *   hollowc tokenize <tokenizer dir> "<text>" [--json]
 *   hollowc model pipeline <family> --tiny|--full -o folder/ [--seed N]
 *
 * `model pipeline` is the whole-pipeline sibling of `model build` (which writes a UNet only);
 * `runPipelineBuild` is what a `model build --pipeline` flag calls.
 */
import { Command, InvalidArgumentError } from 'commander';
import { HollowcError } from '../compiler/errors';
import { FAMILY_NAMES, isFamilyName } from '../models/families';
import { buildPipeline } from '../models/builder/pipeline';
import { normalizeSeed } from '../models/builder/unet';
import { loadTokenizer } from '../runtime/tokenizer';

export interface PipelineBuildOptions {
  tiny?: boolean;
  full?: boolean;
  out: string;
  seed?: number;
}

function parseSeed(text: string): number {
  const n = /^\d+$/.test(text.trim()) ? Number(text) : NaN;
  if (!Number.isSafeInteger(n) || n > 0xffffffff) throw new InvalidArgumentError(`expected an integer in 0..4294967295, got ${JSON.stringify(text)}`);
  return normalizeSeed(n);
}

const mib = (bytes: number) => `${(bytes / 2 ** 20).toFixed(1)} MiB`;

export async function runPipelineBuild(family: string | undefined, opts: PipelineBuildOptions, log: (line: string) => void = console.log): Promise<void> {
  if (family === undefined || !isFamilyName(family)) {
    throw new HollowcError(`${family === undefined ? 'name a model family' : `unknown model family "${family}"`} (expected one of: ${FAMILY_NAMES.join(', ')})`);
  }
  if (opts.tiny === opts.full) {
    throw new HollowcError(opts.tiny ? 'give only one of --tiny and --full' : `say which size: --tiny (test widths, a few MB) or --full (the real ${family} pipeline)`);
  }
  const result = await buildPipeline(family, opts.tiny ? 'tiny' : 'full', opts.out, { seed: opts.seed });
  log(`built ${family}${opts.tiny ? '-tiny' : ''} pipeline (seed ${opts.seed ?? 0}) in ${result.outDir}`);
  for (const c of result.components) log(`  ${c.name.padEnd(15)} ${c.parameterCount.toLocaleString('en-US').padStart(14)} parameters  ${mib(c.weightBytes)}`);
  log(`  total           ${result.parameterCount.toLocaleString('en-US').padStart(14)} parameters, ${result.seconds.toFixed(1)} s`);
}

export function runTokenize(dir: string, text: string, opts: { json?: boolean }, write: (line: string) => void = (l) => process.stdout.write(`${l}\n`)): void {
  const tokenizer = loadTokenizer(dir);
  const encoded = tokenizer.encode(text);
  if (opts.json) {
    write(JSON.stringify({ input_ids: encoded.inputIds }));
    return;
  }
  write(`tokens: ${tokenizer.tokenize(text).join(' ')}`);
  write(`input_ids: ${encoded.inputIds.join(' ')}`);
  if (encoded.truncated) write(`(truncated to ${tokenizer.maxLength} ids)`);
}

export function registerPipelineCommands(program: Command): void {
  program
    .command('tokenize')
    .description('CLIP-tokenize a prompt with a tokenizer folder (padded and truncated to model_max_length)')
    .argument('<tokenizer-dir>', 'tokenizer folder: vocab.json + merges.txt (+ configs), or tokenizer.json')
    .argument('<text>', 'the prompt')
    .option('--json', 'print one JSON object {"input_ids": [...]}')
    .action((dir: string, text: string, opts: { json?: boolean }) => runTokenize(dir, text, opts));

  const model =
    program.commands.find((c) => c.name() === 'model') ??
    program.command('model').description('SD-family architectures: build models with seeded random weights');
  model
    .command('pipeline')
    .description('write a whole SD pipeline folder (optimum ONNX layout: unet, text encoders, VAE, tokenizers, scheduler) with seeded random weights')
    .argument('<family>', `model family: ${FAMILY_NAMES.join(', ')}`)
    .option('--tiny', 'test widths (seconds to build, a few MB per model)')
    .option('--full', 'the real architectures (SD 1.5: about 4 GB of weights, SDXL: about 14 GB)')
    .requiredOption('-o, --out <dir>', 'output folder (written atomically)')
    .option('--seed <n>', 'weight seed (default 0)', parseSeed)
    .action(async (family: string, opts: PipelineBuildOptions) => {
      await runPipelineBuild(family, opts);
    });
}
