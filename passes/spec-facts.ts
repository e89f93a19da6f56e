/**
 * The model as the spec checker sees it (dsl/check.ts ModelFacts), answered from the graph
 * analysis: layers, how a hollow request resolves to a cut, LoRA-able layers and inputs.
 */
import type { HollowRequest, ModelFacts } from '../dsl/check';
import { Graph } from '../compiler/ir';
import { cutFromHollowedIds } from '../models/layout';
import { findPreset } from '../models/presets';
import { UNetAnalysis } from './analyze-unet';
import { findLoraSites } from './lora-targets';

export function modelFacts(g: Graph, analysis: UNetAnalysis): ModelFacts {
  const layout = analysis.layout;
  const cutAfter = (id: string) => {
    const cut = analysis.cuts.find((c) => c.after === id);
    if (!cut) throw new Error(`no valid cut keeps the down path through ${id} (valid: ${analysis.cuts.map((c) => c.after).join(' ')})`);
    return cut;
  };
  return {
    family: analysis.family,
    layers: analysis.blocks.filter((b) => b.stage !== 'stem').map((b) => ({ id: b.id, stage: b.stage as 'down' | 'mid' | 'up', modules: b.modules })),
    resolveHollow(request: HollowRequest) {
      if ('none' in request) return { hollowed: [] };
      if ('preset' in request) return { hollowed: cutAfter(findPreset(analysis.family, request.preset).lastKeptDown).hollowed };
      if ('after' in request) return { hollowed: cutAfter(request.after).hollowed };
      return { hollowed: [...cutFromHollowedIds(layout, request.blocks).hollowed] };
    },
    loraCandidates: findLoraSites(g).map((s) => ({ module: s.module, in: s.inFeatures, out: s.outFeatures, kind: s.kind })),
    inputs: g.inputs.map((v) => ({ name: v.name, rank: v.type?.shape?.length ?? 0, dims: v.type?.shape?.map((d) => (typeof d === 'number' ? d : null)) })),
  };
}

/** The cut (its last kept down layer) whose hollow is exactly `hollowed`; null for none. */
export function cutAfterFor(analysis: UNetAnalysis, hollowed: readonly string[]): string | null {
  if (hollowed.length === 0) return null;
  const key = hollowed.join(' ');
  const cut = analysis.cuts.find((c) => c.hollowed.join(' ') === key);
  if (!cut) throw new Error(`internal: resolved hollow ${key} is not a cut`);
  return cut.after;
}
