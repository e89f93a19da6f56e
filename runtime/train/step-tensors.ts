/**
 * One step's feeds as onnxruntime-node tensors: the data inputs from store records (their values
 * from step-feeds.ts, which the browser trainer shares) and the LoRA tensors, moments, lr and step.
 */
import * as ort from 'onnxruntime-node';
import { LEARNING_RATE, STEP, TIMESTEP, expAvgName, expAvgSqName } from '../../compiler/manifest';
import { scalarFor, tensorFor, timestepFor } from '../ort/artifacts';
import type { ParamState } from './checkpoint';
import { stepDataValues } from './step-feeds';
import type { TrainGraph } from './step-graph';
import type { Store, StoreRecord } from '../store/store';

/** Feeds for one step's data inputs (everything but parameters, moments, lr and step). */
export function dataFeeds(graph: TrainGraph, store: Store, records: StoreRecord[], priorWeight: number): Record<string, ort.Tensor> {
  const feeds: Record<string, ort.Tensor> = {};
  for (const [name, f] of stepDataValues((n) => graph.inputs.has(n), store, records, priorWeight, store.dir))
    feeds[name] =
      name === TIMESTEP ? timestepFor(graph.inputs.get(name), f.values as number[]) : tensorFor(graph.inputs.get(name), f.values, f.dims);
  return feeds;
}

/** Feeds for the LoRA tensors (and in graph mode their moments, lr and the 1-based step). */
export function paramFeeds(graph: TrainGraph, params: readonly ParamState[], lr: number, step: number): Record<string, ort.Tensor> {
  const feeds: Record<string, ort.Tensor> = {};
  for (const p of params) {
    feeds[p.name] = new ort.Tensor('float32', p.value, p.shape);
    if (graph.mode === 'host') continue;
    feeds[expAvgName(p.name)] = new ort.Tensor('float32', p.expAvg, p.shape);
    feeds[expAvgSqName(p.name)] = new ort.Tensor('float32', p.expAvgSq, p.shape);
  }
  if (graph.mode === 'host') return feeds;
  feeds[LEARNING_RATE] = scalarFor(graph.inputs.get(LEARNING_RATE), lr);
  feeds[STEP] = scalarFor(graph.inputs.get(STEP), step);
  return feeds;
}
