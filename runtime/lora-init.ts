/**
 * The LoRA a training run starts from, written at compile time as `lora-init.safetensors`
 * (peft keys): A ~ N(0, std²) from the spec's seed and B = 0 (so step 0 is the base model), or a
 * user's file, checked against the compiled shapes.
 */
import * as path from 'path';
import { HollowcError } from '../compiler/errors';
import type { ResolvedSpec } from '../dsl';
import { Rng, fillNormal } from '../models/random';
import type { CompileManifest } from '../passes/compile';
import { LoraModuleValues, readLoraFile, writeLoraFile } from './lora-file';

export const LORA_INIT_FILE = 'lora-init.safetensors';

export function initialLora(manifest: CompileManifest, std: number, seed: number): LoraModuleValues[] {
  return manifest.lora.targets
    .filter((t) => t.trained)
    .map((t) => {
      const a = new Float32Array(t.lora_A.shape.reduce((x, y) => x * y, 1));
      // One stream per module: a module's init does not depend on which others are targeted.
      fillNormal(new Rng(seed, `${t.module}.lora_A`), a, std);
      return { module: t.module, a: { shape: t.lora_A.shape, data: a }, b: { shape: t.lora_B.shape, data: new Float32Array(t.lora_B.shape.reduce((x, y) => x * y, 1)) } };
    });
}

export function writeInitialLora(outDir: string, manifest: CompileManifest, spec: ResolvedSpec, overrideFile?: string): string {
  const file = path.join(outDir, LORA_INIT_FILE);
  const source = overrideFile ?? (spec.lora.init.kind === 'file' ? path.resolve(path.dirname(spec.spec.file), spec.lora.init.path) : undefined);
  let modules: LoraModuleValues[];
  if (source) {
    const trained = manifest.lora.targets.filter((t) => t.trained);
    const read = readLoraFile(source, trained.map((t) => t.module), manifest.lora.rank, manifest.lora.alpha);
    modules = trained.map((t) => {
      const m = read.get(t.module)!;
      if (m.a.shape.join() !== t.lora_A.shape.join() || m.b.shape.join() !== t.lora_B.shape.join()) {
        throw new HollowcError(`${t.module}: LoRA shapes [${m.a.shape}] / [${m.b.shape}] do not match the compiled [${t.lora_A.shape}] / [${t.lora_B.shape}]`, source);
      }
      return m;
    });
  } else {
    const std = spec.lora.init.kind === 'gaussian' ? spec.lora.init.std : 0;
    modules = initialLora(manifest, std, spec.seed);
  }
  writeLoraFile(file, 'peft', { rank: manifest.lora.rank, alpha: manifest.lora.alpha, modules }, { hollowc_init: source ? `from ${source}` : `gaussian seed ${spec.seed}` });
  return file;
}
