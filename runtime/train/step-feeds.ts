/**
 * One training step's data inputs from store records, for both runtimes (runtime/train/
 * step-graph.ts on onnxruntime-node, the browser page's trainer on onnxruntime-web): each input the
 * step graph takes, its records stacked into one batch. Pure: each runtime makes its own tensors.
 */
import { HollowcError } from '../../compiler/errors';
import {
  ENCODER_HIDDEN_STATES,
  HOLLOW_ACTIVATION,
  LOSS_WEIGHT,
  SAMPLE,
  TARGET,
  TEXT_EMBEDS,
  TIMESTEP,
  TIME_IDS,
} from '../../compiler/manifest';
import type { StoreHeader, StoreRecord } from '../store/store';
import type { Conditioning } from '../sampling/conditioning';

/** What the feeds read of a store (the node Store and the page's WebStore both are one). */
export interface StoreView {
  readonly header: Pick<StoreHeader, 'latentShape' | 'activationShape' | 'timeIds'>;
  conditioning(id: number): Conditioning;
}

export interface FeedValues {
  values: Float32Array | number[];
  dims: number[];
}

/** The step's data inputs (everything but parameters, moments, lr and step) that `takes` says the graph has; `label` names the store in errors. */
export function stepDataValues(
  takes: (name: string) => boolean,
  store: StoreView,
  records: readonly StoreRecord[],
  priorWeight: number,
  label?: string,
): Map<string, FeedValues> {
  const B = records.length;
  const h = store.header;
  const feeds = new Map<string, FeedValues>();
  const stack = (name: string, get: (r: StoreRecord) => Float32Array, shape: readonly number[]) => {
    if (!takes(name)) return;
    const per = shape.reduce((a, b) => a * b, 1);
    const data = new Float32Array(B * per);
    records.forEach((r, b) => data.set(get(r), b * per));
    feeds.set(name, { values: data, dims: [B, ...shape] });
  };
  stack(SAMPLE, (r) => r.zt, h.latentShape);
  stack(TARGET, (r) => r.target, h.latentShape);
  stack(HOLLOW_ACTIVATION, (r) => r.activation, h.activationShape);
  const c0 = store.conditioning(0);
  stack(ENCODER_HIDDEN_STATES, (r) => store.conditioning(r.condId).encoderHiddenStates.data, c0.encoderHiddenStates.shape);
  if (takes(TEXT_EMBEDS)) {
    if (!c0.textEmbeds)
      throw new HollowcError('the step graph takes text_embeds but the store has none (SDXL prompts need pooled embeddings)', label);
    stack(TEXT_EMBEDS, (r) => store.conditioning(r.condId).textEmbeds!.data, c0.textEmbeds.shape);
  }
  if (takes(TIME_IDS)) {
    const ids = Float32Array.from(h.timeIds ?? []);
    if (ids.length === 0) throw new HollowcError('the step graph takes time_ids but the store has none', label);
    stack(TIME_IDS, () => ids, [ids.length]);
  }
  if (takes(TIMESTEP)) feeds.set(TIMESTEP, { values: records.map((r) => r.timestep), dims: [B] });
  feeds.set(LOSS_WEIGHT, { values: records.map((r) => (r.isClass ? priorWeight : 1)), dims: [B] });
  return feeds;
}
