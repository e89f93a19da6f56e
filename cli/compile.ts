/**
 * `hollowc compile` and `hollowc bake`, and their library entries: a spec is parsed and checked
 * against the model's analysis, and the model is loaded and analysed once.
 */
import * as fs from 'fs';
import * as path from 'path';
import { Command } from 'commander';
import { HollowcError } from '../compiler/errors';
import { Model } from '../compiler/ir';
import { CompileManifest, readManifest } from '../compiler/manifest';
import { withFolderLock } from '../compiler/folder-lock';
import { loadModel, saveModel } from '../compiler/serde';
import { checkSpec, parseSpec, ResolvedSpec } from '../dsl';
import { bakeLora } from '../passes/fold/bake-lora';
import { storeFloat16 } from '../passes/precision/float16-weights';
import { widenStoredFloat16 } from '../passes/lib/widen-float16';
import { compile } from '../passes/compile-unet';
import { UNetAnalysis, analyzeUNet } from '../passes/lib/analyze-unet';
import { chunkFieldsFromSpec } from '../passes/lib/artifact-state';
import { readLoraForManifest } from '../runtime/formats/lora-file';
import { LoraInit, checkLoraInit, writeInitialLora } from '../runtime/train/lora-init';
import { lastKeptDownFor, modelFacts, trainingSettingsOf } from './spec-facts';

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

/** A UNet loaded (graph only: weights stay in their files) and analysed. */
export interface LoadedUNet {
  file: string;
  model: Model;
  analysis: UNetAnalysis;
}

export function loadUNet(file: string): LoadedUNet {
  const model = loadModel(file);
  return { file, model, analysis: analyzeUNet(model.graph, file) };
}

export interface CheckedSpec {
  resolved: ResolvedSpec;
  file: string;
  text: string;
}

/** Parses a spec file and checks it against the model. */
export function checkSpecFile(unet: LoadedUNet, specFile: string): CheckedSpec {
  const text = readSpecFile(specFile);
  return { resolved: checkSpec(parseSpec(text, specFile), modelFacts(unet.model.graph, unet.analysis)), file: specFile, text };
}

function loraInitOf(spec: CheckedSpec, overrideFile?: string): LoraInit {
  if (overrideFile) return { kind: 'file', file: overrideFile };
  const init = spec.resolved.lora.init;
  return init.kind === 'file'
    ? { kind: 'file', file: path.resolve(path.dirname(spec.file), init.path) }
    : { kind: 'gaussian', std: init.std, seed: spec.resolved.seed };
}

/** Compiles a loaded UNet with a checked spec into `options.out`; the library's compile entry. */
export function compileSpec(unet: LoadedUNet, spec: CheckedSpec, options: CompileCliOptions): CompileManifest {
  const r = spec.resolved;
  // Every input is checked before anything is written: the model and spec are by now, the LoRA here.
  const init = checkLoraInit(loraInitOf(spec, options.loraInit));
  return compile({
    model: unet.model,
    modelFile: unet.file,
    analysis: unet.analysis,
    outDir: options.out,
    lastKeptDown: lastKeptDownFor(unet.analysis, r.hollow.hollowed),
    targets: r.lora.targets.map((t) => t.module),
    lora: { rank: r.lora.rank, alpha: r.lora.alpha, inferPrecision: r.lora.infer },
    emit: [...r.emit],
    spec: { file: spec.file, text: spec.text },
    training: trainingSettingsOf(r),
    ...chunkFieldsFromSpec(r.chunks),
    log: options.verbose ? (m) => process.stderr.write(`${m}\n`) : undefined,
    // Written with the artifacts, so a LoRA whose shapes do not fit leaves no compiled-looking folder.
    extraFiles: (dir, manifest) => [path.basename(writeInitialLora(dir, manifest, init))],
  });
}

/** `hollowc compile <unet> <spec> -o out/` as a function. */
export function compileFromSpec(modelFile: string, specFile: string, options: CompileCliOptions): CompileManifest {
  const unet = loadUNet(modelFile);
  return compileSpec(unet, checkSpecFile(unet, specFile), options);
}

export function registerCompile(program: Command): void {
  program
    .command('compile')
    .description('compile a UNet and a .hollow spec into precompute/train/grads/infer artifacts')
    .argument('<unet>', 'UNet exported to ONNX')
    .argument('<spec>', '.hollow spec')
    .requiredOption('-o, --out <dir>', 'output folder')
    .option('--lora-init <file>', "initial LoRA weights (safetensors, peft or kohya keys) instead of the spec's init")
    .option('-v, --verbose', 'log each artifact as it is built')
    .action((unet: string, spec: string, opts: CompileCliOptions) => {
      const started = Date.now();
      const m = compileFromSpec(unet, spec, opts);
      const held = m.parameters.heldDuringTraining;
      const lines = [
        `compiled ${unet} (${m.family}, ${m.parameters.full.toLocaleString('en-US')} parameters) into ${opts.out}/ in ${((Date.now() - started) / 1000).toFixed(1)} s`,
        m.cut
          ? `  hollow: ${m.cut.hollowed.join(' ')} (${m.cut.removedParameters.toLocaleString('en-US')} parameters, ${(100 * m.cut.fraction).toFixed(1)}%), activation [${m.cut.hollowActivation.shape.join(', ')}]`
          : '  hollow: none (plain LoRA on the whole UNet)',
        `  held during training: ${held.toLocaleString('en-US')} base parameters + ${m.parameters.lora.toLocaleString('en-US')} LoRA parameters (rank ${m.lora.rank}, ${m.lora.targets.filter((t) => t.trained).length} layers)`,
        `  artifacts: ${Object.keys(m.artifacts)
          .map((a) => `${a}.onnx`)
          .join(' ')} + ${m.weights.join(' ')} + manifest.json + lora-init.safetensors`,
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
      process.stdout.write(
        `baked ${opts.lora} into ${result.file}: ${result.folded} layers folded into their weights, ${result.kept} kept as low-rank branches (weights shared with the base path)\n`,
      );
    });
}

export function bakeCompiled(out: string, loraFile: string, output?: string): { file: string; folded: number; kept: number } {
  return withFolderLock(out, 'hollowc bake', () => bakeUnlocked(out, loraFile, output));
}

function bakeUnlocked(out: string, loraFile: string, output?: string): { file: string; folded: number; kept: number } {
  const manifest = readManifest(out);
  if (!manifest.artifacts.infer)
    throw new HollowcError("this folder has no infer.onnx to bake into (add `infer` to the spec's emit line)", out);
  const values = readLoraForManifest(loraFile, manifest);
  const model = loadModel(path.join(out, manifest.artifacts.infer.file));
  // float16 weights cast at each use (a float16 export): seen as float32 weights while baking, stored
  // as they were after; the folded layers' new weights are float32
  const float16 = widenStoredFloat16(model.graph);
  const result = bakeLora(model.graph, values, manifest.lora.rank, manifest.lora.scale);
  if (float16) storeFloat16(model.graph, { float16Io: [], round: false });
  const file = output ?? path.join(out, 'infer-baked.onnx');
  if (path.resolve(path.dirname(file)) !== path.resolve(out))
    throw new HollowcError('the baked model must be written into the compiled folder, next to the weights it references', file);
  saveModel(model, file, { externalData: `${path.basename(file)}_data`, referenceInPlace: true });
  return { file, folded: result.folded.length, kept: result.kept.length };
}
