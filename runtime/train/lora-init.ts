/**
 * The LoRA a training run starts from, written at compile time as `lora-init.safetensors`
 * (peft keys): A ~ N(0, std²) from the spec's seed and B = 0 (so step 0 is the base model), or a
 * user's file, checked against the compiled shapes; and the parameters a fresh run starts from.
 */
import * as fs from 'fs';
import * as path from 'path';
import { HollowcError } from '../../compiler/errors';
import type { CompileManifest } from '../../compiler/manifest';
import { Rng, fillNormal } from '../../models/random';
import { LoraModuleValues, readLoraForManifest, writeLoraFile } from '../formats/lora-file';
import { LORA_INIT_FILE, loraValues } from '../formats/lora-format';
import { SafetensorsFile, readSafetensors } from '../formats/safetensors';
import { zeroMoments } from './adamw8bit';
import { initialBaseValues, trainedBaseNames } from './base-weights';
import type { ParamState } from './checkpoint';
import type { TrainGraph } from './step-graph';

export function initialLora(manifest: CompileManifest, std: number, seed: number): LoraModuleValues[] {
  return manifest.lora.targets
    .filter((t) => t.trained)
    .map((t) => {
      const a = new Float32Array(t.lora_A.shape.reduce((x, y) => x * y, 1));
      // One stream per module: a module's init does not depend on which others are targeted.
      fillNormal(new Rng(seed, `${t.module}.lora_A`), a, std);
      return {
        module: t.module,
        a: { shape: t.lora_A.shape, data: a },
        b: { shape: t.lora_B.shape, data: new Float32Array(t.lora_B.shape.reduce((x, y) => x * y, 1)) },
      };
    });
}

/**
 * Where training starts: A ~ N(0, std²) from `seed` and B = 0, or a LoRA file (`parsed`: the file
 * as checkLoraInit read it, so compile refuses a bad file before writing anything).
 */
export type LoraInit = { kind: 'gaussian'; std: number; seed: number } | { kind: 'file'; file: string; parsed?: SafetensorsFile };

/** Reads a `--lora-init` file up front: a truncated file or an impossible header fails here, in one line. */
export function checkLoraInit(init: LoraInit): LoraInit {
  return init.kind === 'file' && !init.parsed ? { ...init, parsed: readSafetensors(init.file) } : init;
}

export function writeInitialLora(outDir: string, manifest: CompileManifest, init: LoraInit): string {
  const file = path.join(outDir, LORA_INIT_FILE);
  let modules: LoraModuleValues[];
  if (init.kind === 'file') {
    const source = init.file;
    const trained = manifest.lora.targets.filter((t) => t.trained);
    const read = loraValues(
      init.parsed ?? readSafetensors(source),
      source,
      trained.map((t) => t.module),
      manifest.lora.rank,
      manifest.lora.alpha,
    );
    modules = trained.map((t) => {
      const m = read.get(t.module)!;
      if (m.a.shape.join() !== t.lora_A.shape.join() || m.b.shape.join() !== t.lora_B.shape.join()) {
        throw new HollowcError(
          `${t.module}: LoRA shapes [${m.a.shape}] / [${m.b.shape}] do not match the compiled [${t.lora_A.shape}] / [${t.lora_B.shape}]`,
          source,
        );
      }
      return m;
    });
  } else {
    modules = initialLora(manifest, init.std, init.seed);
  }
  writeLoraFile(
    file,
    'peft',
    { rank: manifest.lora.rank, alpha: manifest.lora.alpha, modules },
    { hollowc_init: init.kind === 'file' ? `from ${init.file}` : `gaussian seed ${init.seed}` },
  );
  return file;
}

/**
 * The tensors a fresh run starts from, with zero moments (8-bit ones under `optimizer adamw8bit`):
 * the LoRA from `<out>/lora-init.safetensors` (written by compile), the base weights that train
 * from their values in the folder's weight files (base-weights.ts).
 */
export function initialParams(out: string, manifest: CompileManifest, graph: TrainGraph): ParamState[] {
  const file = path.join(out, LORA_INIT_FILE);
  const base = trainedBaseNames(manifest);
  const needsLora = graph.params.some((p) => !base.has(p.name));
  if (needsLora && !fs.existsSync(file))
    throw new HollowcError(`no ${LORA_INIT_FILE}: compile with hollowc compile (it writes the initial LoRA)`, out);
  const byName = needsLora ? readLoraForManifest(file, manifest) : new Map<string, Float32Array>();
  const baseValues = base.size ? initialBaseValues(out, manifest) : new Map<string, Float32Array>();
  return graph.params.map((p) => {
    const isBase = base.has(p.name);
    const v = isBase ? baseValues.get(p.name) : byName.get(p.name);
    if (!v) throw new HollowcError(`${isBase ? 'the folder' : LORA_INIT_FILE} has no values for ${p.name}`, isBase ? out : file);
    const n = p.shape.reduce((a, b) => a * b, 1);
    if (v.length !== n) throw new HollowcError(`${p.name}: ${v.length} values, ${path.basename(graph.file)} expects [${p.shape}]`, file);
    // A base weight's array was read for this run alone: no copy of it.
    return { name: p.name, shape: p.shape, value: isBase ? v : Float32Array.from(v), ...zeroMoments(n, manifest.training.optimizer.state) };
  });
}
