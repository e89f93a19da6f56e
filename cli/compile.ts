/** `hollowc compile` and `hollowc bake`. */
import * as fs from 'fs';
import * as path from 'path';
import { Command } from 'commander';
import { HollowcError } from '../compiler/errors';
import { loadModel, saveModel } from '../compiler/serde';
import { checkSpec, parseSpec, ResolvedSpec } from '../dsl';
import { analyzeUNet } from '../passes/analyze-unet';
import { bakeLora } from '../passes/bake-lora';
import { ArtifactName, CompileManifest, compile } from '../passes/compile';
import { cutAfterFor, modelFacts } from '../passes/spec-facts';
import { trainingGraphBuilders, trainingSettingsOf } from '../passes/training-graphs';
import { readLoraForManifest } from '../runtime/lora-file';
import { writeInitialLora } from '../runtime/lora-init';

export interface CompileCliOptions {
  out: string;
  loraInit?: string;
  verbose?: boolean;
}

function readSpecFile(file: string): string {
  try {
    return fs.readFileSync(file, 'utf8');
  } catch (e) {
    throw new HollowcError(`cannot read spec: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`, file);
  }
}

/** Parses and checks a spec against a model; the library entry behind `hollowc compile`. */
export function resolveSpecForModel(modelFile: string, specFile: string): { resolved: ResolvedSpec; text: string } {
  const text = readSpecFile(specFile);
  const spec = parseSpec(text, specFile);
  const model = loadModel(modelFile);
  const analysis = analyzeUNet(model.graph, modelFile);
  return { resolved: checkSpec(spec, modelFacts(model.graph, analysis)), text };
}

export function compileFromSpec(modelFile: string, specFile: string, options: CompileCliOptions): CompileManifest {
  const { resolved, text } = resolveSpecForModel(modelFile, specFile);
  const analysis = analyzeUNet(loadModel(modelFile).graph, modelFile);
  const emit: ArtifactName[] = [...resolved.emit];
  const manifest = compile({
    modelFile,
    outDir: options.out,
    cutAfter: cutAfterFor(analysis, resolved.hollow.hollowed),
    targets: resolved.lora.targets.map((t) => t.module),
    lora: { rank: resolved.lora.rank, alpha: resolved.lora.alpha },
    emit,
    spec: { file: specFile, text },
    training: trainingSettingsOf(resolved),
    builders: trainingGraphBuilders(resolved),
    log: options.verbose ? (m) => process.stderr.write(`${m}\n`) : undefined,
  });
  writeInitialLora(options.out, manifest, resolved, options.loraInit);
  return manifest;
}

export function registerCompile(program: Command): void {
  program
    .command('compile')
    .description('compile a UNet and a .hollow spec into precompute/train/grads/infer artifacts')
    .argument('<unet>', 'UNet exported to ONNX')
    .argument('<spec>', '.hollow spec')
    .requiredOption('-o, --out <dir>', 'output folder')
    .option('--lora-init <file>', 'initial LoRA weights (safetensors, peft or kohya keys) instead of the spec\'s init')
    .option('-v, --verbose', 'log each artifact as it is built')
    .action((unet: string, spec: string, opts: CompileCliOptions) => {
      const started = Date.now();
      const m = compileFromSpec(unet, spec, opts);
      const held = m.parameters.heldDuringTraining;
      const lines = [
        `compiled ${unet} (${m.family}, ${m.parameters.full.toLocaleString('en-US')} parameters) into ${opts.out}/ in ${((Date.now() - started) / 1000).toFixed(1)} s`,
        m.cut ? `  hollow: ${m.cut.hollowed.join(' ')} (${m.cut.removedParameters.toLocaleString('en-US')} parameters, ${(100 * m.cut.fraction).toFixed(1)}%), activation [${m.cut.hollowActivation.shape.join(', ')}]` : '  hollow: none (plain LoRA on the whole UNet)',
        `  held during training: ${held.toLocaleString('en-US')} base parameters + ${m.parameters.lora.toLocaleString('en-US')} LoRA parameters (rank ${m.lora.rank}, ${m.lora.targets.filter((t) => t.trained).length} layers)`,
        `  artifacts: ${Object.keys(m.artifacts).map((a) => `${a}.onnx`).join(' ')} + ${m.weights.join(' ')} + manifest.json + lora-init.safetensors`,
      ];
      process.stdout.write(lines.join('\n') + '\n');
    });

  program
    .command('bake')
    .description('write infer.onnx with trained LoRA folded into the weights only the personalized path uses')
    .argument('<out>', 'a compiled output folder')
    .requiredOption('--lora <file>', 'trained LoRA (safetensors, peft or kohya keys)')
    .option('-o, --output <file>', 'baked model file (default <out>/infer-baked.onnx)')
    .action((out: string, opts: { lora: string; output?: string }) => {
      const result = bakeCompiled(out, opts.lora, opts.output);
      process.stdout.write(`baked ${opts.lora} into ${result.file}: ${result.folded} layers folded into their weights, ${result.kept} kept as low-rank branches (weights shared with the base path)\n`);
    });
}

export function readManifest(out: string): CompileManifest {
  const file = path.join(out, 'manifest.json');
  try {
    return JSON.parse(fs.readFileSync(file, 'utf8')) as CompileManifest;
  } catch (e) {
    throw new HollowcError(`not a compiled hollowc folder (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`, file);
  }
}

export function bakeCompiled(out: string, loraFile: string, output?: string): { file: string; folded: number; kept: number } {
  const manifest = readManifest(out);
  if (!manifest.artifacts.infer) throw new HollowcError('this folder has no infer.onnx to bake into (add `infer` to the spec\'s emit line)', out);
  const values = readLoraForManifest(loraFile, manifest);
  const model = loadModel(path.join(out, manifest.artifacts.infer.file));
  const result = bakeLora(model.graph, values, manifest.lora.rank, manifest.lora.scale);
  const file = output ?? path.join(out, 'infer-baked.onnx');
  if (path.resolve(path.dirname(file)) !== path.resolve(out)) throw new HollowcError('the baked model must be written into the compiled folder, next to the weights it references', file);
  saveModel(model, file, { externalData: `${path.basename(file)}_data`, referenceInPlace: true });
  return { file, folded: result.folded.length, kept: result.kept.length };
}
