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
import { registerCompile } from './compile';
import { registerInspect } from './inspect';
import { registerModelBuild } from './model-build';
import { registerTokenize } from './tokenize';
import { registerDemo } from './demo';
import { registerExportLora } from './export-lora';
import { registerGenerate } from './generate';
import { registerPrecompute } from './precompute';
import { registerTrain } from './train';

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
    .showHelpAfterError()
    .exitOverride();
  registerInspect(program);
  registerCompile(program);
  registerModelBuild(program);
  registerPrecompute(program);
  registerTrain(program);
  registerGenerate(program);
  registerExportLora(program);
  registerDemo(program);
  registerTokenize(program);
  return program;
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
    else process.stderr.write(`hollowc: error: ${err.message}\n`);
    if (process.env.HOLLOWC_DEBUG) process.stderr.write(`${err.stack}\n`);
    return 1;
  }
}

if (require.main === module) {
  const rerun = rerunWithAllocatorSettings(process.argv);
  if (rerun !== undefined) process.exitCode = rerun;
  else
    main(process.argv).then((code) => {
      process.exitCode = code;
    });
}
