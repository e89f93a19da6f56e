/**
 * The training loss: loss = mean_b( loss_weight[b] · mean_chw((pred_b − target_b)²) ).
 *
 * Adds graph inputs `target` (shaped like the prediction: eps or v) and `loss_weight` [B]
 * (prior-preservation weight per sample) and the graph output `loss`, shape [1] like the
 * fixture's loss.npy. With loss_weight = 1 it is plain mean((pred − target)²).
 */
import { GraphBuilder } from '../../compiler/builder';
import { HollowcError } from '../../compiler/errors';
import { Model, Value } from '../../compiler/ir';
import { LOSS, LOSS_WEIGHT, OUT_SAMPLE, TARGET } from '../../compiler/manifest';
import { OpEmitter, staticShapeOf } from '../../compiler/op-emitter';
import { Pass } from '../../compiler/pass';
import { ArtifactState } from '../lib/artifact-state';

export interface LossOptions {
  targetName?: string;
  weightName?: string;
  lossName?: string;
}

export interface LossResult {
  loss: Value;
  target: Value;
  lossWeight: Value;
}

export function addLoss(model: Model, prediction: Value, options: LossOptions = {}): LossResult {
  const g = model.graph;
  const names = { target: options.targetName ?? TARGET, weight: options.weightName ?? LOSS_WEIGHT, loss: options.lossName ?? LOSS };
  for (const name of Object.values(names)) {
    if (g.tryValue(name)) throw new HollowcError(`addLoss: the graph already has a value named ${JSON.stringify(name)}`);
  }
  const shape = staticShapeOf(prediction);
  if (shape.length < 2) throw new HollowcError(`addLoss: prediction ${prediction.name} has shape [${shape}]; expected [batch, ...]`);
  const elemType = prediction.type!.elemType;
  const target = g.addInput(names.target, { elemType, shape: [...shape] });
  const lossWeight = g.addInput(names.weight, { elemType, shape: [shape[0]] });
  const e = new OpEmitter(new GraphBuilder(g, '/loss'), model.opsetVersion(''));
  const diff = e.op('Sub', [prediction, target]);
  const perSample = e.reduce(
    'ReduceMean',
    e.op('Mul', [diff, diff]),
    shape.slice(1).map((_, i) => i + 1),
    false,
  );
  const weighted = e.op('Mul', [perSample, lossWeight]);
  const mean = e.reduce('ReduceMean', weighted, [0], true);
  const loss = g.addNode({ opType: 'Identity', name: '/loss/Identity', inputs: [mean], outputs: [names.loss] }).outputs[0];
  loss.type = { elemType, shape: [1] };
  g.outputs.push(loss);
  return { loss, target, lossWeight };
}

/** The UNet's prediction goes into the loss, which becomes the graph's only output. */
export const addLossPass: Pass<ArtifactState> = {
  name: 'add-loss',
  ensures: ['loss'],
  run(model, state) {
    const g = model.graph;
    const prediction = g.outputs.find((o) => o.name === OUT_SAMPLE) ?? g.outputs[0];
    state.loss = addLoss(model, prediction).loss;
    g.outputs = [state.loss];
    return { changed: true, summary: `mse(${prediction.name}, ${TARGET}) weighted by ${LOSS_WEIGHT}` };
  },
};
