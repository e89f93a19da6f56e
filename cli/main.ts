#!/usr/bin/env node
/**
 * The `hollowc` command. Bad input (HollowcError and the Errors our layers throw for it) prints
 * one line and exits 1; an unexpected failure prints its stack only with HOLLOWC_DEBUG=1.
 */
import * as fs from 'fs';
import * as path from 'path';
import { Command, CommanderError } from 'commander';
import { SpecError } from '../dsl/diagnostics';
import { rerunWithAllocatorSettings } from './allocator';
import { registerBake } from './bake';
import { registerCompile } from './compile';
import { registerInspect } from './inspect';
import { registerModelBuild } from './model-build';
import { registerPlan } from './plan';
import { registerTokenize } from './tokenize';
import { registerDemo } from './demo';
import { registerDecode } from './decode';
import { registerEmbed } from './embed';
import { registerEncode } from './encode';
import { registerExportLora } from './export-lora';
import { registerExportUnet } from './export-unet';
import { registerGenerate } from './generate';
import { registerPersonalize } from './personalize';
import { registerPrecompute } from './precompute';
import { registerTrain } from './train';
import { registerWeb } from './web';
import { registerWorld } from './world';

/** Found upwards from here: the same code runs from dist/cli and from cli/ under jest. */
function packageVersion(): string {
  for (let dir = __dirname; dir !== path.dirname(dir); dir = path.dirname(dir)) {
    const file = path.join(dir, 'package.json');
    if (fs.existsSync(file)) return (JSON.parse(fs.readFileSync(file, 'utf8')) as { version: string }).version;
  }
  return 'unknown';
}

export function buildProgram(): Command {
  const program = new Command();
  program
    .name('hollowc')
    .description('Hollowed-Net compiler and runtime: personalize Stable Diffusion UNets (ONNX) with little memory')
    .version(packageVersion())
    .exitOverride();
  registerInspect(program);
  registerCompile(program);
  registerBake(program);
  registerModelBuild(program);
  registerPrecompute(program);
  registerTrain(program);
  registerGenerate(program);
  registerExportLora(program);
  registerExportUnet(program);
  registerPersonalize(program);
  registerDemo(program);
  registerTokenize(program);
  registerPlan(program);
  registerEmbed(program);
  registerEncode(program);
  registerDecode(program);
  registerWeb(program);
  registerWorld(program);
  pointUsageErrorsAtHelp(program, 'hollowc');
  return program;
}

/**
 * Usage errors are one line like every other error, with where to look for the usage: the
 * command's own help (`hollowc generate --help`), each subcommand's its own.
 */
function pointUsageErrorsAtHelp(command: Command, name: string): void {
  command.configureOutput({ outputError: (text, write) => write(`hollowc: ${text.trim().replace(/\s*\n\s*/g, ' ')} (see ${name} --help)\n`) });
  for (const sub of command.commands) pointUsageErrorsAtHelp(sub, `${name} ${sub.name()}`);
}

/**
 * Out of space (or over a file-size limit) while writing: what the user should know is that
 * every write is atomic, so what was there before is intact and a rerun continues.
 */
function diskFullMessage(err: Error): string | undefined {
  const code = (err as NodeJS.ErrnoException).code;
  if (code !== 'ENOSPC' && code !== 'EFBIG' && code !== 'EDQUOT') return undefined;
  const file = (err as NodeJS.ErrnoException).path;
  const why = code === 'EFBIG' ? 'over the file size limit' : 'no space left on the device';
  return `${file ? `${file}: ` : ''}${why} (${code}) while writing; what was written before is intact: free space and run the command again`;
}

export async function main(argv: string[]): Promise<number> {
  const program = buildProgram();
  try {
    await program.parseAsync(argv);
    return 0;
  } catch (e) {
    if (e instanceof CommanderError) return e.exitCode;
    const err = e as Error;
    // Spec errors render themselves: file:line:col, the source line and a caret.
    if (err instanceof SpecError) process.stderr.write(`${err.formatAll()}\n`);
    else process.stderr.write(`hollowc: error: ${diskFullMessage(err) ?? err.message.split('\n')[0]}\n`);
    if (process.env.HOLLOWC_DEBUG) process.stderr.write(`${err.stack}\n`);
    return 1;
  }
}

if (require.main === module) {
  void (async () => {
    const rerun = await rerunWithAllocatorSettings(process.argv);
    process.exitCode = rerun ?? (await main(process.argv));
  })();
}
