/**
 * `hollowc export-lora`: the trained LoRA as a file other tools load with the original UNet
 * (Hollowed-Net LoRA has plain UNet LoRA shapes): diffusers keys `unet.<module>.lora.down.weight` /
 * `.lora.up.weight` (scale folded in), peft keys `unet.<module>.lora_A.weight` / `.lora_B.weight`, or kohya keys
 * `lora_unet_<module with _>.lora_down.weight` / `.lora_up.weight` / `.alpha` (lora-file.ts).
 * Only trained modules are written; LoRA targets inside the hollow never trained and are left
 * out, which loaders accept (a module without LoRA keeps its base weights).
 *
 * Export says which run a LoRA comes from (its step, seed and when it was written) and refuses
 * while another hollowc writes the folder (a run in progress, or `train --restart` before its
 * first checkpoint, would otherwise export the previous run's LoRA without a word). When the
 * folder's checkpoint is newer than its LoRA file (a run stopped before its end), it says so.
 */
import * as fs from 'fs';
import * as path from 'path';
import { HollowcError } from '../../compiler/errors';
import { withFolderLock } from '../../compiler/folder-lock';
import { loadManifest, refuseOverwrite } from '../ort/artifacts';
import { LORA_FORMATS, LoraFormat, LoraModuleValues, readLoraFile, writeLoraFile } from '../formats/lora-file';
import { readSafetensorsIndex } from '../formats/safetensors-stream';
import { CHECKPOINT_FILE, TRAIN_DIR, paramsFromCheckpoint, readCheckpointState } from './checkpoint';
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
  /** Which run the LoRA comes from, as far as the source says: `step 40, seed 7, written <time>`. */
  run: string;
  /** Said when the folder's checkpoint is newer than the LoRA file exported. */
  note?: string;
  modules: number;
  parameters: number;
}

/** What a trained LoRA or checkpoint file says of its run, and when it was written. */
interface RunOf {
  step?: number;
  seed?: number;
  written: Date;
}

const timeOf = (d: Date) => d.toISOString().replace(/\.\d+Z$/, 'Z');

function describeRun(r: RunOf): string {
  return [
    r.step !== undefined ? `step ${r.step}` : undefined,
    r.seed !== undefined ? `seed ${r.seed}` : undefined,
    `written ${timeOf(r.written)}`,
  ]
    .filter((x) => x !== undefined)
    .join(', ');
}

function numberIn(metadata: Record<string, string>, key: string): number | undefined {
  const v = metadata[key] === undefined ? NaN : Number(metadata[key]);
  return Number.isInteger(v) ? v : undefined;
}

/** Holds the folder's lock: a run writing the folder is refused, naming its pid and command. */
export function exportLora(options: ExportOptions): ExportResult {
  return withFolderLock(options.out, 'hollowc export-lora', () => exportUnlocked(options));
}

function exportUnlocked(options: ExportOptions): ExportResult {
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
  const sourceStat = fs.statSync(source);
  const written = sourceStat.mtime;
  const { metadata } = readSafetensorsIndex(source);
  let modules: LoraModuleValues[];
  let run: RunOf;
  if (metadata.hollowc_checkpoint) {
    const state = readCheckpointState(source);
    run = { step: state.step, seed: state.seed, written };
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
    run = { step: numberIn(metadata, 'hollowc_steps'), seed: numberIn(metadata, 'hollowc_seed'), written };
  }
  const checkpoint = path.resolve(options.out, TRAIN_DIR, CHECKPOINT_FILE);
  let note: string | undefined;
  const checkpointStat = source !== checkpoint && fs.existsSync(checkpoint) ? fs.statSync(checkpoint) : undefined;
  if (checkpointStat && checkpointStat.mtimeMs > sourceStat.mtimeMs) {
    const s = readCheckpointState(checkpoint);
    if (s.step !== run.step || s.seed !== run.seed)
      note = `${checkpoint} is newer (${describeRun({ step: s.step, seed: s.seed, written: checkpointStat.mtime })}), from a run that has not finished: --from checkpoint exports it`;
  }
  writeLoraFile(
    options.output,
    options.format,
    { rank: manifest.lora.rank, alpha: manifest.lora.alpha, modules },
    {
      hollowc_source: path.basename(source),
      hollowc_family: manifest.family,
      ...(run.step !== undefined ? { hollowc_steps: String(run.step) } : {}),
      ...(run.seed !== undefined ? { hollowc_seed: String(run.seed) } : {}),
    },
  );
  return {
    file: options.output,
    source,
    run: describeRun(run),
    note,
    modules: modules.length,
    parameters: modules.reduce((a, m) => a + m.a.data.length + m.b.data.length, 0),
  };
}
