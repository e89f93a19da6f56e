/**
 * The loss of a LoRA on the store without training it: the step graph at lr = 0 (in graph mode
 * AdamW then changes nothing; host mode runs no optimizer) over batches in store order.
 */
import * as ort from 'onnxruntime-node';
import { LOSS } from '../../compiler/manifest';
import type { ParamState } from './checkpoint';
import type { TrainGraph } from './step-graph';
import { readLoss } from './step-runner';
import { dataFeeds, paramFeeds } from './step-tensors';
import { planRecord } from '../store/precompute';
import type { Store } from '../store/store';

/** How many batches of `batch` an evaluation over `asked` batches of `records` records averages: at least one, at most all of them. */
export function evaluationBatches(batch: number, records: number, asked: number): number {
  return Math.max(1, Math.min(asked, Math.ceil(records / batch)));
}

/** Mean loss over the first `batches` batches (of `indices`, default every record) in store order. */
export async function lossAtRest(
  session: ort.InferenceSession,
  graph: TrainGraph,
  store: Store,
  params: readonly ParamState[],
  batches: number,
  priorWeight: number,
  indices?: readonly number[],
): Promise<number> {
  const pool = indices ?? Array.from({ length: store.count }, (_, i) => i);
  const n = evaluationBatches(graph.batch, pool.length, batches);
  let sum = 0;
  for (let b = 0; b < n; b++) {
    const records = Array.from({ length: graph.batch }, (_, k) => store.read(pool[(b * graph.batch + k) % pool.length]));
    sum += readLoss(await session.run({ ...dataFeeds(graph, store, records, priorWeight), ...paramFeeds(graph, params, 0, 1) }, [LOSS]));
  }
  return sum / n;
}

/** The store's instance records (not prior-preservation ones), in store order, from precompute's plan. */
export function instanceRecords(store: Store): number[] {
  const classes = store.header.classSamples.length;
  const instances = store.header.instanceSamples.length;
  return Array.from({ length: store.count }, (_, i) => i).filter((i) => !planRecord(i, instances, classes).isClass);
}
