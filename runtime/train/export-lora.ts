/**
 * `hollowc export-lora`: the trained LoRA as a file other tools load with the original UNet
 * (Hollowed-Net LoRA has plain UNet LoRA shapes): diffusers keys `unet.<module>.lora.down.weight` /
 * `.lora.up.weight` (scale folded in), peft keys `unet.<module>.lora_A.weight` / `.lora_B.weight`, or kohya keys
 * `lora_unet_<module with _>.lora_down.weight` / `.lora_up.weight` / `.alpha` (lora-file.ts).
 * Only trained modules are written; LoRA targets inside the hollow never trained and are left
 * out, which loaders accept (a module without LoRA keeps its base weights).
 */
import * as fs from 'fs';
import * as path from 'path';
import { HollowcError } from '../../compiler/errors';
import { loadManifest, refuseOverwrite } from '../ort/artifacts';
import { LORA_FORMATS, LoraFormat, LoraModuleValues, readLoraFile, writeLoraFile } from '../formats/lora-file';
import { readSafetensors } from '../formats/safetensors';
import { CHECKPOINT_FILE, TRAIN_DIR, paramsFromCheckpoint } from './checkpoint';
import { LORA_INIT_FILE, TRAINED_LORA_FILE } from '../formats/lora-format';
import { loraModules } from './train';

export interface ExportOptions {
  out: string;
  format: LoraFormat;
  output: string;
  /** `checkpoint` (= <out>/train/checkpoint.safetensors), a checkpoint file, or a LoRA file; default <out>/lora.safetensors. */
  from?: string;
}

export interface ExportResult {
  file: string;
  source: string;
  modules: number;
  parameters: number;
}

export function exportLora(options: ExportOptions): ExportResult {
  if (!LORA_FORMATS.includes(options.format))
    throw new HollowcError(`--format must be one of ${LORA_FORMATS.join(', ')}, got ${options.format as string}`);
  const manifest = loadManifest(options.out);
  refuseOverwrite(options.out, manifest, options.output, [LORA_INIT_FILE]);
  const trained = manifest.lora.targets.filter((t) => t.trained);
  let source =
    options.from === 'checkpoint'
      ? path.join(options.out, TRAIN_DIR, CHECKPOINT_FILE)
      : (options.from ?? path.join(options.out, TRAINED_LORA_FILE));
  if (!fs.existsSync(source)) {
    const hint = options.from ? '' : ': train first (hollowc train writes it) or pass --from checkpoint';
    throw new HollowcError(`no such file${hint}`, source);
  }
  source = path.resolve(source);
  let modules: LoraModuleValues[];
  if (readSafetensors(source).metadata.hollowc_checkpoint) {
    modules = loraModules(manifest, paramsFromCheckpoint(source));
    if (modules.length !== trained.length)
      throw new HollowcError(
        `the checkpoint holds ${modules.length} of the ${trained.length} trained modules: it belongs to another compile`,
        source,
      );
  } else {
    const values = readLoraFile(
      source,
      trained.map((t) => t.module),
      manifest.lora.rank,
      manifest.lora.alpha,
    );
    modules = trained.map((t) => values.get(t.module)!);
  }
  writeLoraFile(
    options.output,
    options.format,
    { rank: manifest.lora.rank, alpha: manifest.lora.alpha, modules },
    { hollowc_source: path.basename(source), hollowc_family: manifest.family },
  );
  return {
    file: options.output,
    source,
    modules: modules.length,
    parameters: modules.reduce((a, m) => a + m.a.data.length + m.b.data.length, 0),
  };
}
