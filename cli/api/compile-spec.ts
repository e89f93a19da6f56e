/**
 * Compiling from a spec, the library's entry (`hollowc compile` calls it): a checked spec turned
 * into the compiler's request, with the initial LoRA written beside the artifacts.
 */
import * as path from 'path';
import { CompileManifest } from '../../compiler/manifest';
import { RewriteSites, compile } from '../../passes/compile-unet';
import { chunkFieldsFromSpec } from '../../passes/lib/artifact-state';
import { LoraInit, checkLoraInit, writeInitialLora } from '../../runtime/train/lora-init';
import { CheckedSpec, checkSpecFile } from './spec';
import { lastKeptDownFor, trainingSettingsOf } from './spec-facts';
import { LoadedUNet, loadUNet } from './unet';

export interface CompileOptions {
  out: string;
  loraInit?: string;
  verbose?: boolean;
  /** Hears the sites each memory rewrite matched (compile-unet's rewriteSummary words them). */
  onRewrites?: (sites: RewriteSites[]) => void;
}

function loraInitOf(spec: CheckedSpec, overrideFile?: string): LoraInit {
  if (overrideFile) return { kind: 'file', file: overrideFile };
  const init = spec.resolved.lora.init;
  return init.kind === 'file'
    ? { kind: 'file', file: path.resolve(path.dirname(spec.file), init.path) }
    : { kind: 'gaussian', std: init.std, seed: spec.resolved.seed };
}

/** Compiles a loaded UNet with a checked spec into `options.out`; the library's compile entry. */
export function compileSpec(unet: LoadedUNet, spec: CheckedSpec, options: CompileOptions): CompileManifest {
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
    trainBase: r.trainBase.map((p) => p.name),
    lora: { rank: r.lora.rank, alpha: r.lora.alpha, inferPrecision: r.lora.infer },
    emit: [...r.emit],
    spec: { file: spec.file, text: spec.text },
    training: trainingSettingsOf(r),
    ...chunkFieldsFromSpec(r.chunks),
    log: options.verbose ? (m) => process.stderr.write(`${m}\n`) : undefined,
    onRewrites: options.onRewrites,
    // Written with the artifacts, so a LoRA whose shapes do not fit leaves no compiled-looking folder.
    extraFiles: (dir, manifest) => [path.basename(writeInitialLora(dir, manifest, init))],
  });
}

/** `hollowc compile <unet> <spec> -o out/` as a function. */
export function compileFromSpec(modelFile: string, specFile: string, options: CompileOptions): CompileManifest {
  const unet = loadUNet(modelFile);
  return compileSpec(unet, checkSpecFile(unet, specFile), options);
}
