/**
 * Trains a graph-training folder (compiler/manifest.ts; passes/compile-graph.ts
 * writes it): grads.onnx gives the loss, its terms and every parameter's gradient, and HostAdamW
 * updates the parameters in place, as `hollowc train` does in host mode. The caller supplies each
 * step's data feeds; a step is a pure function of them, the parameters and the step number, so a
 * seeded caller makes the run deterministic. The trained values go back into the folder's export
 * graphs as standard ONNX files (writeTrainedExport).
 */
import * as fs from 'fs';
import * as path from 'path';
import * as ort from 'onnxruntime-node';
import { HollowcError } from '../../compiler/errors';
import { GraphTrainingManifest, readGraphTrainingManifest } from '../../compiler/manifest';
import { DataType } from '../../compiler/dtype';
import { inlineTensor } from '../../compiler/ir';
import { gradientName } from '../../compiler/manifest';
import { loadModel, saveModel } from '../../compiler/serde';
import { float32Data } from '../ort/artifacts';
import { createSession } from '../ort/session';
import { initialBaseValues } from './base-weights';
import type { ParamState } from './checkpoint';
import { collectGarbage } from './collect-garbage';
import { HostAdamW } from './host-adamw';

export interface GraphStep {
  /** 1-based. */
  step: number;
  /** Each loss output of the step (the loss, then its terms), before the update. */
  losses: Record<string, number>;
  seconds: number;
}

export interface GraphTrainOptions {
  dir: string;
  steps: number;
  /** Learning rate of step `t` (1-based). */
  lr: number | ((step: number) => number);
  /** The data feeds of step `t` (1-based): every input the manifest's `data` lists. */
  feeds: (step: number) => Record<string, ort.Tensor> | Promise<Record<string, ort.Tensor>>;
  /** Parameters to start from (a previous call's); the folder's initial values when absent. */
  params?: ParamState[];
  /** Step number of the first step (default 1): a run continued from `params`. */
  firstStep?: number;
  intraOpThreads?: number;
  onStep?: (s: GraphStep) => void;
}

export interface GraphTrainResult {
  manifest: GraphTrainingManifest;
  params: ParamState[];
  log: GraphStep[];
}

/** The folder's parameters at their initial values, with zero moments. */
export function initialParams(dir: string, manifest: GraphTrainingManifest): ParamState[] {
  const values = initialBaseValues(dir, { trainBase: manifest.parameters });
  return manifest.parameters.map((p) => {
    const n = p.shape.reduce((a, b) => a * b, 1);
    return { name: p.name, shape: [...p.shape], value: values.get(p.name)!, expAvg: new Float32Array(n), expAvgSq: new Float32Array(n) };
  });
}

export async function trainGraph(o: GraphTrainOptions): Promise<GraphTrainResult> {
  const manifest = readGraphTrainingManifest(o.dir);
  const params = o.params ?? initialParams(o.dir, manifest);
  const adamw = new HostAdamW(manifest.optimizer);
  const session = await createSession(path.join(o.dir, manifest.grads.file), { intraOpThreads: o.intraOpThreads });
  const lossNames = manifest.losses.map((l) => l.name);
  const fetches = [...lossNames, ...params.map((p) => gradientName(p.name))];
  const log: GraphStep[] = [];
  const first = o.firstStep ?? 1;
  try {
    for (let step = first; step < first + o.steps; step++) {
      const started = process.hrtime.bigint();
      const data = await o.feeds(step);
      const missing = manifest.data.find((d) => !data[d.name]);
      if (missing) throw new HollowcError(`step ${step}: no feed for the data input ${missing.name}`, o.dir);
      const feeds: Record<string, ort.Tensor> = { ...data };
      for (const p of params) feeds[p.name] = new ort.Tensor('float32', p.value, p.shape);
      const result = await session.run(feeds, fetches);
      const losses = Object.fromEntries(lossNames.map((n) => [n, Number((result[n].data as Float32Array)[0])]));
      if (!Number.isFinite(losses[lossNames[0]]))
        throw new HollowcError(`step ${step}: the loss is ${losses[lossNames[0]]}; stopped before updating`, o.dir);
      const lr = typeof o.lr === 'number' ? o.lr : o.lr(step);
      adamw.step(
        params,
        params.map((p) => float32Data(result[gradientName(p.name)], gradientName(p.name))),
        lr,
        step,
      );
      collectGarbage();
      const entry = { step, losses, seconds: Number(process.hrtime.bigint() - started) / 1e9 };
      log.push(entry);
      o.onStep?.(entry);
    }
  } finally {
    await session.release();
  }
  return { manifest, params, log };
}

/**
 * Writes the export graph `name` with the trained `params` in it as `<outDir>/model.onnx` +
 * `model.onnx_data` (a component folder of the optimum layout). `outDir` must be new or empty:
 * the caller moves the finished folder into place.
 */
export function writeTrainedExport(
  dir: string,
  manifest: GraphTrainingManifest,
  name: string,
  params: readonly ParamState[],
  outDir: string,
): string {
  const e = manifest.exports[name];
  if (!e)
    throw new HollowcError(`the folder exports no graph ${name} (it has: ${Object.keys(manifest.exports).join(', ') || 'none'})`, dir);
  if (fs.existsSync(outDir) && fs.readdirSync(outDir).length > 0) throw new HollowcError('the export folder is not empty', outDir);
  const model = loadModel(path.join(dir, e.file));
  const g = model.graph;
  const byName = new Map(params.map((p) => [p.name, p]));
  for (const param of e.parameters) {
    const p = byName.get(param);
    if (!p) throw new HollowcError(`no trained value for ${param}`, dir);
    const v = g.value(param);
    const bytes = new Uint8Array(p.value.buffer.slice(p.value.byteOffset, p.value.byteOffset + p.value.byteLength));
    v.initializer = inlineTensor(param, DataType.FLOAT, [...p.shape], bytes);
    g.inputs = g.inputs.filter((x) => x !== v);
  }
  model.metadataProps = [...(model.metadataProps ?? []), ...Object.entries(e.metadata ?? {}).map(([key, value]) => ({ key, value }))];
  fs.mkdirSync(outDir, { recursive: true });
  const file = path.join(outDir, 'model.onnx');
  saveModel(model, file, { externalData: 'model.onnx_data' });
  return file;
}
