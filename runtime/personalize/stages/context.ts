/** What every personalize stage is given, and what the stages leave for the report. */
import * as fs from 'fs';
import { CompileManifest, readManifest } from '../../../compiler/manifest';
import { ProgressStream } from '../../progress';
import { StageKeys } from '../keys';
import { RunFolder } from '../run-folder';
import { CompileStage, Settings } from '../settings';

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
  findings: RunFindings;
}

export function manifestOf(ctx: StageContext): CompileManifest {
  return (ctx.findings.manifest ??= readManifest(ctx.dirs.compiled));
}

export function countFiles(dir: string, ext: string): number {
  return fs.existsSync(dir) ? fs.readdirSync(dir).filter((f) => f.endsWith(ext)).length : 0;
}
