/**
 * The training artifacts, built on the hollowed forward graph (UNet inputs + hollow activation +
 * LoRA tensors -> out_sample):
 *   forward -> specialize shapes -> loss -> reverse-mode gradients w.r.t. the LoRA tensors
 *   grads.onnx: + outputs `loss`, `<param>.grad`
 *   train.onnx: + in-graph AdamW (outputs `loss`, `<param>.updated`, moments `.updated`)
 */
import { HollowcError } from '../compiler/errors';
import { Dim, Model, Value } from '../compiler/ir';
import type { ResolvedSpec } from '../dsl';
import { FAMILIES, FamilyName } from '../models/families';
import { addAdamW } from './add-adamw';
import { addLoss } from './add-loss';
import type { ArtifactName, BuildContext, TrainingSettings } from './compile';
import { addGradientOutputs, differentiate } from './differentiate';
import { HOLLOW_ACTIVATION } from './extract-precompute';
import { specializeShapes } from './specialize-shapes';

export interface TrainingOptions {
  /** Static shapes per UNet input; missing ones come from the graph and the family defaults. */
  shapes: Readonly<Record<string, readonly number[]>>;
  batch: number;
  optimizer: { betas: readonly [number, number]; eps: number; weightDecay: number };
}

/** Family default latent side and text length, used for dims a spec leaves open. */
function defaultDims(family: FamilyName, batch: number): Record<string, number> {
  const sample = FAMILIES[family].full.shapes.sample;
  return { batch, height: sample[2], width: sample[3], sequence: FAMILIES[family].full.shapes.encoder_hidden_states[1] };
}

/** `height/4` with height = 64 -> 16. */
function resolveDim(d: Dim, dims: Record<string, number>, input: string): number {
  if (typeof d === 'number') return d;
  if (typeof d === 'string') {
    const m = /^([A-Za-z_]\w*)(?:\/(\d+))?$/.exec(d);
    if (m && dims[m[1]] !== undefined) return m[2] ? dims[m[1]] / Number(m[2]) : dims[m[1]];
  }
  throw new HollowcError(`no static size for dimension ${JSON.stringify(d)} of ${input}: give it with a "shape ${input} [...]" line in the spec`);
}

/** Static shapes for every input of the hollowed forward graph (LoRA tensors are static already). */
export function trainingShapes(forward: Model, family: FamilyName, options: TrainingOptions): Record<string, number[]> {
  const dims = defaultDims(family, options.batch);
  // Dims the spec fixes through the UNet's inputs (e.g. sample [1, 4, 32, 32] -> height 32).
  for (const v of forward.graph.inputs) {
    const given = options.shapes[v.name];
    v.type?.shape?.forEach((d, i) => {
      if (typeof d === 'string' && given?.[i] !== undefined) dims[d] = given[i];
    });
  }
  const shapes: Record<string, number[]> = {};
  for (const v of forward.graph.inputs) {
    if (/\.lora_[AB]\.weight$/.test(v.name)) continue;
    const given = options.shapes[v.name];
    shapes[v.name] = given ? [...given] : (v.type?.shape ?? []).map((d) => resolveDim(d, dims, v.name));
  }
  if (shapes[HOLLOW_ACTIVATION]) {
    const h = shapes[HOLLOW_ACTIVATION];
    if (!h.every((x) => Number.isInteger(x) && x > 0)) throw new HollowcError(`the hollow activation would be [${h}]: the latent size must be divisible by the UNet's downsampling`);
  }
  return shapes;
}

interface Differentiated {
  model: Model;
  loss: Value;
  params: Value[];
  gradients: Map<Value, Value>;
}

function differentiateLoss(forward: Model, ctx: BuildContext, options: TrainingOptions): Differentiated {
  specializeShapes(forward, trainingShapes(forward, ctx.analysis.family, options));
  const g = forward.graph;
  const prediction = g.outputs.find((o) => o.name === 'out_sample') ?? g.outputs[0];
  const { loss } = addLoss(forward, prediction);
  g.outputs = [loss];
  const params = ctx.loraParams.map((p) => g.value(p.name));
  const { gradients } = differentiate(forward, loss, params);
  return { model: forward, loss, params, gradients };
}

export function buildGrads(forward: Model, ctx: BuildContext, options: TrainingOptions): Model {
  const d = differentiateLoss(forward, ctx, options);
  const outputs = addGradientOutputs(d.model.graph, d.gradients);
  d.model.graph.outputs = [d.loss, ...d.params.map((p) => outputs.get(p)!)];
  return d.model;
}

export function buildTrain(forward: Model, ctx: BuildContext, options: TrainingOptions): Model {
  const d = differentiateLoss(forward, ctx, options);
  addAdamW(d.model, d.params, d.gradients, {
    beta1: options.optimizer.betas[0],
    beta2: options.optimizer.betas[1],
    eps: options.optimizer.eps,
    weightDecay: options.optimizer.weightDecay,
  });
  return d.model;
}

/** The settings `hollowc train` reads from the manifest. */
export function trainingSettingsOf(spec: ResolvedSpec): TrainingSettings {
  return {
    prediction: spec.loss.prediction,
    priorWeight: spec.loss.priorWeight,
    seed: spec.seed,
    lr: spec.optimizer.lr,
    steps: spec.train.steps,
    batch: spec.train.batch,
    checkpointEvery: spec.train.checkpointEvery,
    shapes: Object.fromEntries(Object.entries(spec.shapes).map(([k, v]) => [k, [...v]])),
  };
}

export function trainingOptionsOf(spec: ResolvedSpec): TrainingOptions {
  return { shapes: spec.shapes, batch: spec.train.batch, optimizer: spec.optimizer };
}

export function trainingGraphBuilders(spec: ResolvedSpec): Partial<Record<ArtifactName, (forward: Model, ctx: BuildContext) => Model>> {
  const options = trainingOptionsOf(spec);
  return {
    grads: (forward, ctx) => buildGrads(forward, ctx, options),
    train: (forward, ctx) => buildTrain(forward, ctx, options),
  };
}
