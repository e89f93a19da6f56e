/**
 * `hollowc plan` as a function: the paper's resource tables for a UNet (a file, a UNet folder or a
 * pipeline folder), from a spec or from flags (passes/plan/ computes them).
 */
import { HollowcError } from '../../compiler/errors';
import { BasePrecision, GradientPrecision, OptimizerState, RecomputeMode } from '../../compiler/manifest';
import { isWithin } from '../../compiler/module-scope';
import { baseGlobMatches, matchesGlob, rankProblem } from '../../dsl';
import { latentMultipleOfLayout, sideProblem } from '../../models/latent-sizes';
import { DEFAULT_TARGETS, defaultTrainingSettings } from '../../models/training-defaults';
import { chunkFieldsFromSpec } from '../../passes/lib/artifact-state';
import { findBaseParameters } from '../../passes/lib/base-parameters';
import { findLoraSites } from '../../passes/lib/lora-sites';
import { Plan, PlanRequest, planUNet } from '../../passes/plan/plan';
import { recordLayout } from '../../runtime/store/store-format';
import { checkSpecFile } from './spec';
import { trainingSettingsOf } from './spec-facts';
import { LoadedUNet, loadUNet } from './unet';

const storeRecordBytes = (latent: number[], activation: number[]) => recordLayout(latent, activation).recordBytes;

/** `1GB`, `512MiB`, `4g`, `3000000000` -> bytes. */
export function parseBytes(text: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*(b|k|kb|kib|m|mb|mib|g|gb|gib)?\s*$/i.exec(text);
  if (!m) throw new HollowcError(`expected a size such as 4GB or 3500MiB, got ${JSON.stringify(text)}`);
  const unit = (m[2] ?? 'b').toLowerCase();
  const power = { b: 0, k: 1, kb: 1, kib: 1, m: 2, mb: 2, mib: 2, g: 3, gb: 3, gib: 3 }[unit]!;
  // Binary units throughout: memory is counted in MiB/GiB everywhere in hollowc.
  return Math.round(Number(m[1]) * 1024 ** power);
}

/**
 * `train base` for every row of the plan: the parameters the globs match (as the spec's check
 * matches them), less those a row's cut hollows out.
 */
function trainBaseOf(unet: LoadedUNet, globs: readonly string[], flag: string): PlanRequest['trainBase'] {
  if (!globs.length) return undefined;
  const params = findBaseParameters(unet.model.graph);
  for (const g of globs)
    if (!params.some((p) => baseGlobMatches(g, p))) throw new HollowcError(`${flag} "${g}" matches no module of this model`);
  const matched = params.filter((p) => globs.some((g) => baseGlobMatches(g, p)));
  return (hollowed) => matched.filter((p) => !hollowed.some((m) => isWithin(p.module, m))).map((p) => p.name);
}

export interface PlanOptions {
  spec?: string;
  base?: BasePrecision;
  recompute?: RecomputeMode;
  shape?: string[];
  rank: number;
  alpha?: number;
  targets?: string[];
  /** `train base` globs: the base weights of the matching modules train too. */
  trainBase?: string[];
  /** The AdamW moments' precision (the spec's `optimizer adamw8bit`). */
  optimizerState?: OptimizerState;
  /** how grads.onnx hands over the gradients (the spec's gradients line) */
  gradients?: GradientPrecision;
  samples: number;
  steps: number;
  budget?: string;
  json?: boolean;
  plot?: string;
  /** Hears after each row of the table: rows done, rows in all, the row's cut. */
  onRow?: (done: number, total: number, cut: string) => void;
}

function requestOf(unet: LoadedUNet, o: PlanOptions): PlanRequest {
  if (o.spec) {
    const spec = checkSpecFile(unet, o.spec).resolved;
    return {
      unet,
      targets: spec.lora.targets.map((t) => t.module),
      lora: { rank: spec.lora.rank, alpha: spec.lora.alpha },
      training: trainingSettingsOf(spec),
      trainBase: trainBaseOf(
        unet,
        spec.spec.trainBase.map((g) => g.value),
        'train base',
      ),
      ...chunkFieldsFromSpec(spec.chunks),
      samples: o.samples,
      steps: o.steps,
      storeRecordBytes,
      onRow: o.onRow,
    };
  }
  const family = unet.analysis.family;
  const shapes: Record<string, number[]> = {};
  for (const s of o.shape ?? []) {
    const [name, dims] = s.split('=');
    shapes[name] = dims.split(',').map(Number);
  }
  if (!shapes.sample) shapes.sample = [1, 4, 64, 64];
  if (!shapes.timestep) shapes.timestep = [shapes.sample[0]];
  const multiple = latentMultipleOfLayout(unet.analysis.layout);
  for (const [axis, name] of [
    [2, 'height'],
    [3, 'width'],
  ] as const) {
    const problem = shapes.sample.length === 4 ? sideProblem(`--shape sample ${name}`, shapes.sample[axis], multiple) : undefined;
    if (problem) throw new HollowcError(problem);
  }
  const globs = o.targets ?? DEFAULT_TARGETS;
  const sites = findLoraSites(unet.model.graph).filter((s) => globs.some((g) => matchesGlob(g, s.module)));
  if (!sites.length) throw new HollowcError(`no layer matches --targets ${globs.join(' ')}`);
  // the check compile makes of the spec's lora lines
  const tooLarge = rankProblem(
    o.rank,
    sites.map((s) => ({ module: s.module, in: s.inFeatures, out: s.outFeatures, kind: s.kind })),
    { rank: '--rank', targets: '--targets' },
  );
  if (tooLarge) throw new HollowcError(`${tooLarge.message}: ${tooLarge.hint}`);
  return {
    unet,
    targets: sites.map((s) => s.module),
    lora: { rank: o.rank, alpha: o.alpha ?? o.rank },
    training: {
      ...defaultTrainingSettings(family),
      shapes,
      batch: shapes.sample[0],
      base: o.base ?? 'fp32',
      recompute: o.recompute ?? 'cheap',
      optimizer: {
        ...defaultTrainingSettings(family).optimizer,
        ...(o.optimizerState === '8bit' ? { state: '8bit' as const } : {}),
        ...(o.gradients === 'fp16' ? { gradients: 'fp16' as const } : {}),
      },
    },
    trainBase: trainBaseOf(unet, o.trainBase ?? [], '--train-base'),
    samples: o.samples,
    steps: o.steps,
    storeRecordBytes,
    onRow: o.onRow,
  };
}

/** The plan of a UNet file, UNet folder or pipeline folder's UNet. */
export function planFor(unetPath: string, o: PlanOptions): Plan {
  const unet = loadUNet(unetPath);
  return planUNet(requestOf(unet, o), o.budget !== undefined ? parseBytes(o.budget) : undefined);
}
