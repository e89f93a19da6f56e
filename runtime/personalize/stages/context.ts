/** What every personalize stage is given, and what the stages leave for the report. */
import * as fs from 'fs';
import { CompileManifest, readManifest } from '../../../compiler/manifest';
import { ProgressStream } from '../../progress';
import { StageKeys } from '../keys';
import { RunFolder } from '../run-folder';
import { CompileStage, ExportUnetStage, Settings } from '../settings';

export interface RunFindings {
  manifest?: CompileManifest;
  loss?: { before: number; after: number; records: number };
  /** distance of the first validation prompt's latents to the subject (mean photo latent), personalized vs base */
  subject?: { base: number; personalized: number };
}

export interface StageContext {
  s: Settings;
  dirs: RunFolder;
  keys: StageKeys;
  progress: ProgressStream;
  compile: CompileStage;
  exportUnet: ExportUnetStage;
  findings: RunFindings;
}

export function manifestOf(ctx: StageContext): CompileManifest {
  return (ctx.findings.manifest ??= readManifest(ctx.dirs.compiled));
}

export function countFiles(dir: string, ext: string): number {
  return fs.existsSync(dir) ? fs.readdirSync(dir).filter((f) => f.endsWith(ext)).length : 0;
}

/** What a compiled run trains: LoRA layers, base weights, or both. */
export function trainedParts(m: CompileManifest): { lora: boolean; base: boolean } {
  return { lora: m.lora.targets.some((t) => t.trained), base: !!m.trainBase?.length };
}

/** The `train base` lines of the spec the run compiled, as written (the report's words). */
function trainBaseGlobs(m: CompileManifest): string {
  const lines = (m.spec?.text ?? '').split(/\r?\n/).map((l) => /^\s*train\s+base\s+(.*?)\s*$/.exec(l)?.[1]);
  return lines.filter((l): l is string => !!l).join(' ');
}

/** What trains, in words: the LoRA (rank, alpha, layers), the base weights (tensors, values, globs) and the moments' precision. */
export function trainedWords(m: CompileManifest): { lora?: string; base?: string; optimizer: string } {
  const parts = trainedParts(m);
  const n = (x: number) => x.toLocaleString('en-US');
  return {
    lora: parts.lora
      ? `LoRA rank ${m.lora.rank}, alpha ${m.lora.alpha} on ${m.lora.targets.filter((t) => t.trained).length} layers (${n(m.parameters.lora)} parameters)`
      : undefined,
    base: parts.base
      ? `base weights ${trainBaseGlobs(m)}: ${m.trainBase!.length} tensors, ${n(m.parameters.trainedBase ?? m.trainBase!.reduce((a, p) => a + p.shape.reduce((x, y) => x * y, 1), 0))} parameters`
      : undefined,
    optimizer: `AdamW, ${m.training.optimizer.state === '8bit' ? '8-bit' : 'fp32'} moments`,
  };
}
