/**
 * `hollowc model build (<family> [--tiny|--full] | --config unet/config.json) -o dir/ [--seed N]`:
 * writes an SD-shaped ONNX UNet with seeded random weights (model.onnx + model.onnx_data).
 */
import * as fs from 'fs';
import { Command } from 'commander';
import { parseSeed } from './options';
import { HollowcError } from '../compiler/errors';
import { parseUNetConfig, UNetConfig } from '../models/config';
import { FAMILIES, FAMILY_NAMES, isFamilyName } from '../models/families';
import { buildPipeline } from '../models/builder/pipeline';
import { Exporter } from '../models/builder/nn';
import { BUILD_DTYPES, BuildDtype, convertToFloat16InPlace } from '../models/builder/float16';
import { TIMESTEP_FORMS, TimestepForm, buildUNet } from '../models/builder/unet';
import { normalizeSeed } from '../models/builder/weights';

export interface ModelBuildOptions {
  tiny?: boolean;
  full?: boolean;
  config?: string;
  out: string;
  seed?: number;
  pipeline?: boolean;
  exporter?: Exporter;
  timestep?: TimestepForm;
  dtype?: BuildDtype;
}

/** A weight seed as `hollowc model build --seed` takes it. */
function parseWeightSeed(text: string): number {
  return normalizeSeed(parseSeed(text));
}

function parseChoice<T extends string>(option: string, choices: readonly T[]): (text: string) => T {
  return (text) => {
    if (!(choices as readonly string[]).includes(text))
      throw new HollowcError(`${option} must be one of ${choices.join(', ')}, got "${text}"`);
    return text as T;
  };
}

/** The config a `model build` invocation names, with a label for messages. */
export function resolveBuildConfig(family: string | undefined, opts: ModelBuildOptions): { config: UNetConfig; label: string } {
  if (opts.config !== undefined) {
    if (family !== undefined) throw new HollowcError(`give either a family (${family}) or --config, not both`);
    if (opts.tiny || opts.full) throw new HollowcError('--tiny/--full choose a family preset; they do not apply to --config');
    let text: string;
    try {
      text = fs.readFileSync(opts.config, 'utf8');
    } catch (e) {
      throw new HollowcError(`cannot read config: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`, opts.config);
    }
    let json: unknown;
    try {
      json = JSON.parse(text);
    } catch (e) {
      throw new HollowcError(`not valid JSON: ${(e as Error).message}`, opts.config);
    }
    return { config: parseUNetConfig(json, opts.config), label: opts.config };
  }
  if (family === undefined) {
    throw new HollowcError(`name a family (${FAMILY_NAMES.join(', ')}) with --tiny or --full, or give --config unet/config.json`);
  }
  if (!isFamilyName(family)) throw new HollowcError(`unknown model family "${family}" (expected one of: ${FAMILY_NAMES.join(', ')})`);
  if (opts.tiny === opts.full) {
    throw new HollowcError(
      opts.tiny
        ? 'give only one of --tiny and --full'
        : `say which size: --tiny (test widths, a few MB) or --full (the real ${family} architecture)`,
    );
  }
  const variant = opts.tiny ? FAMILIES[family].tiny : FAMILIES[family].full;
  return { config: variant.config, label: variant.name };
}

const mib = (bytes: number) => `${(bytes / 2 ** 20).toFixed(1)} MiB`;

/** `model build <family> --pipeline`: the whole optimum-layout folder around the UNet. */
export async function runPipelineBuild(
  family: string | undefined,
  opts: ModelBuildOptions,
  log: (line: string) => void = console.log,
): Promise<void> {
  if (family === undefined || !isFamilyName(family)) {
    throw new HollowcError(
      `${family === undefined ? 'name a model family' : `unknown model family "${family}"`} (expected one of: ${FAMILY_NAMES.join(', ')})`,
    );
  }
  if (opts.tiny === opts.full) {
    throw new HollowcError(
      opts.tiny
        ? 'give only one of --tiny and --full'
        : `say which size: --tiny (test widths, a few MB) or --full (the real ${family} pipeline)`,
    );
  }
  const result = await buildPipeline(family, opts.tiny ? 'tiny' : 'full', opts.out, { seed: opts.seed, dtype: opts.dtype });
  log(`built ${family}${opts.tiny ? '-tiny' : ''} pipeline (seed ${opts.seed ?? 0}) in ${result.outDir}`);
  for (const c of result.components)
    log(`  ${c.name.padEnd(15)} ${c.parameterCount.toLocaleString('en-US').padStart(14)} parameters  ${mib(c.weightBytes)}`);
  log(`  total           ${result.parameterCount.toLocaleString('en-US').padStart(14)} parameters, ${result.seconds.toFixed(1)} s`);
}

export async function runModelBuild(
  family: string | undefined,
  opts: ModelBuildOptions,
  log: (line: string) => void = console.log,
): Promise<void> {
  const { config, label } = resolveBuildConfig(family, opts);
  const result = await buildUNet(config, { outDir: opts.out, seed: opts.seed, form: { exporter: opts.exporter, timestep: opts.timestep } });
  if (opts.dtype === 'fp16') convertToFloat16InPlace(result.file);
  const peakRss = process.resourceUsage().maxRSS * 1024;
  log(`built ${label} UNet (seed ${opts.seed ?? 0})`);
  log(`  ${result.file}  (${mib(fs.statSync(result.file).size)})`);
  log(`  ${result.dataFile}  (${mib(fs.statSync(result.dataFile).size)})`);
  log(`  parameters: ${result.parameterCount.toLocaleString('en-US')}`);
  log(`  time: ${result.seconds.toFixed(1)} s, peak RSS: ${mib(peakRss)}`);
}

export function registerModelBuild(program: Command): Command {
  const model =
    program.commands.find((c) => c.name() === 'model') ??
    program.command('model').description('SD-family UNet architectures: build models with seeded random weights');
  return model
    .command('build')
    .description('write an ONNX UNet shaped like a diffusers torch.onnx.export, with seeded random weights')
    .argument('[family]', `model family: ${FAMILY_NAMES.join(', ')} (with --tiny or --full)`)
    .option('--tiny', 'the family structure at test widths (seconds to build, a few MB)')
    .option('--full', 'the real architecture (SD 1.5: 3.4 GB, SDXL: 10.3 GB of weights)')
    .option('--config <file>', 'a diffusers unet/config.json (UNet2DConditionModel) instead of a family')
    .requiredOption('-o, --out <dir>', 'output folder (model.onnx + model.onnx_data)')
    .option('--pipeline', 'write a whole pipeline folder (unet, text encoders, VAE, tokenizers, scheduler) in the optimum ONNX layout')
    .option('--seed <n>', 'weight seed (default 0)', parseWeightSeed)
    .option(
      '--exporter <name>',
      'the torch exporter to imitate: torchscript (default) or dynamo (torch >= 2.9, opset 18)',
      parseChoice('--exporter', ['torchscript', 'dynamo']),
    )
    .option(
      '--timestep <form>',
      'timestep input: float [batch] (default), int64 [steps] (optimum < 1.24) or scalar (float 0-d, optimum >= 1.24)',
      parseChoice('--timestep', TIMESTEP_FORMS),
    )
    .option('--dtype <fp32|fp16>', 'fp16: the float16 form optimum-cli export onnx --dtype fp16 writes (default fp32)', parseChoice('--dtype', BUILD_DTYPES))
    .action(async (family: string | undefined, opts: ModelBuildOptions) => {
      await (opts.pipeline ? runPipelineBuild(family, opts) : runModelBuild(family, opts));
    });
}
