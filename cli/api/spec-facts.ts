/**
 * The adapter between the spec language and the compiler: the model as the spec checker sees it
 * (dsl/check.ts ModelFacts), answered from the graph analysis, and a checked spec turned into
 * what `compile` and the manifest take.
 */
import { Graph } from '../../compiler/ir';
import type { TrainingSettings } from '../../compiler/manifest';
import type { HollowRequest, ModelFacts, ResolvedSpec } from '../../dsl/check';
import { cutFromHollowedIds } from '../../models/layout';
import { findPreset } from '../../models/presets';
import { UNetAnalysis } from '../../passes/lib/analyze-unet';
import { findBaseParameters } from '../../passes/lib/base-parameters';
import { findLoraSites } from '../../passes/lib/lora-sites';

export function modelFacts(g: Graph, analysis: UNetAnalysis): ModelFacts {
  const layout = analysis.layout;
  const cutKeeping = (id: string) => {
    const cut = analysis.cuts.find((c) => c.lastKeptDown === id);
    if (!cut)
      throw new Error(`no valid cut keeps the down path through ${id} (valid: ${analysis.cuts.map((c) => c.lastKeptDown).join(' ')})`);
    return cut;
  };
  return {
    family: analysis.family,
    layers: analysis.blocks
      .filter((b) => b.stage !== 'stem')
      .map((b) => ({ id: b.id, stage: b.stage as 'down' | 'mid' | 'up', modules: b.modules })),
    resolveHollow(request: HollowRequest) {
      if ('none' in request) return { hollowed: [] };
      if ('preset' in request) return { hollowed: [...cutKeeping(findPreset(analysis.family, request.preset).lastKeptDown).hollowed] };
      if ('after' in request) return { hollowed: [...cutKeeping(request.after).hollowed] };
      return { hollowed: [...cutFromHollowedIds(layout, request.blocks).hollowed] };
    },
    loraCandidates: findLoraSites(g).map((s) => ({ module: s.module, in: s.inFeatures, out: s.outFeatures, kind: s.kind })),
    baseParameters: findBaseParameters(g).map((p) => ({ name: p.name, module: p.module, shape: p.shape })),
    inputs: g.inputs.map((v) => ({
      name: v.name,
      rank: v.type?.shape?.length ?? 0,
      dims: v.type?.shape?.map((d) => (typeof d === 'number' ? d : null)),
    })),
  };
}

/** The last kept down layer of the cut whose hollow is exactly `hollowed`; null for none. */
export function lastKeptDownFor(analysis: UNetAnalysis, hollowed: readonly string[]): string | null {
  if (hollowed.length === 0) return null;
  const key = hollowed.join(' ');
  const cut = analysis.cuts.find((c) => c.hollowed.join(' ') === key);
  if (!cut) throw new Error(`internal: resolved hollow ${key} is not a cut`);
  return cut.lastKeptDown;
}

/** The settings compile records in the manifest for the runtime. */
export function trainingSettingsOf(spec: ResolvedSpec): TrainingSettings {
  return {
    prediction: spec.loss.prediction,
    priorWeight: spec.loss.priorWeight,
    seed: spec.seed,
    lr: spec.optimizer.lr,
    steps: spec.train.steps,
    batch: spec.train.batch,
    checkpointEvery: spec.train.checkpointEvery,
    base: spec.base,
    recompute: spec.recompute,
    shapes: Object.fromEntries(Object.entries(spec.shapes).map(([k, v]) => [k, [...v]])),
    optimizer: {
      betas: [spec.optimizer.betas[0], spec.optimizer.betas[1]],
      eps: spec.optimizer.eps,
      weightDecay: spec.optimizer.weightDecay,
      ...(spec.optimizer.kind === 'adamw8bit' ? { state: '8bit' as const } : {}),
      ...(spec.gradients === 'fp16' ? { gradients: 'fp16' as const } : {}),
    },
  };
}
