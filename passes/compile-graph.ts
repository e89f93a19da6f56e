/**
 * compile for graphs other than a UNet (compile-unet.ts is the UNet's, with its cuts and LoRA):
 * any model built by models/builder, e.g. the VAE joined into an autoencoder, as a graph-training
 * folder (compiler/manifest.ts) that runtime/train/graph-train.ts trains. Its
 * gradients graph is made by the passes the UNet's grads.onnx is made of:
 *
 *   every parameter an input in torch's layout   make-base-trainable's makeParameterInput
 *   static shapes                                specialize-shapes
 *   loss = mse(prediction, target) [+ w·KL]      add-loss (+ add-kl)
 *   d loss / d every parameter                   differentiate
 *   `<param>.grad` outputs                       expose-gradients' addGradientOutputs
 *
 * Outputs: the loss, each term of it, then one gradient per parameter in graph order. The UNet's
 * memory rewrites (attention blocks, banded convolution gradients, ...) are left out: they pay off
 * at SD's sizes, not at the few-MB models this trains. Written as compile-unet writes: into a
 * temporary folder inside `outDir` under the folder lock, moved into place manifest last, so a
 * failed compile leaves what was there before.
 */
import * as fs from 'fs';
import * as path from 'path';
import { HollowcError } from '../compiler/errors';
import { ExternalDataWriter } from '../compiler/external-data';
import { lockFolder } from '../compiler/folder-lock';
import { GRAPH_GRADS_FILE, GRAPH_MANIFEST_FILE, GRAPH_MANIFEST_FORMAT, GraphTrainingManifest } from '../compiler/manifest';
import { GraphBuilder } from '../compiler/builder';
import { cloneModel } from '../compiler/clone';
import { DataType } from '../compiler/dtype';
import { Model, Value } from '../compiler/ir';
import { OpEmitter, staticShapeOf } from '../compiler/op-emitter';
import { LOSS, TrainedBaseParameter, TrainingSettings, WEIGHTS_FILE } from '../compiler/manifest';
import { saveModel } from '../compiler/serde';
import { writeFileAtomic } from '../compiler/atomic-files';
import { describeArtifact } from './compile-unet';
import { BaseParameter, findBaseParameters, torchLayoutData } from './lib/base-parameters';
import { makeParameterInput } from './structure/make-base-trainable';
import { specializeShapes } from './structure/specialize-shapes';
import { addGaussianKl, KL_LOSS } from './training/add-kl';
import { addLoss } from './training/add-loss';
import { differentiate } from './training/differentiate';
import { addGradientOutputs } from './training/expose-gradients';

/** The loss of a training graph: mean squared error of an output against an input, plus an optional KL term. */
export interface GraphLossSpec {
  /** The output the loss reads (an autoencoder's reconstruction). */
  prediction: string;
  /** The input it is compared with (an autoencoder's own image); absent: a new `target` input. */
  target?: string;
  /**
   * A KL(N(mean, exp(logvar)) ‖ N(0, 1)) term on an output holding mean ‖ logvar along axis 1 (a
   * VAE's `latent_parameters`), averaged over its elements and added with this weight.
   */
  kl?: { output: string; weight: number };
}

/** The loss terms' output names, besides LOSS. */
export const RECONSTRUCTION_LOSS = 'reconstruction_mse';

export interface TrainingGraph {
  model: Model;
  /** The source's parameters, in graph order, with their values (in the source's files). */
  params: BaseParameter[];
  /** The loss outputs: LOSS first, then its terms with their weights. */
  losses: { name: string; weight: number }[];
}

/** A named [1] output copying `v`. */
function namedOutput(model: Model, v: Value, name: string): Value {
  const out = model.graph.addNode({ opType: 'Identity', name: `/loss/${name}`, inputs: [v], outputs: [name] }).outputs[0];
  out.type = { elemType: DataType.FLOAT, shape: [1] };
  return out;
}

/**
 * The gradients graph of `source` (left untouched) at the static input `shapes`: inputs are the
 * source's data inputs (less the loss target, when it is one of them) and every parameter by its
 * diffusers name; outputs LOSS, its terms, and `<param>.grad` for each.
 */
export function buildTrainingGraph(source: Model, shapes: Record<string, number[]>, loss: GraphLossSpec, label: string): TrainingGraph {
  const model = cloneModel(source);
  const g = model.graph;
  const params = findBaseParameters(g);
  if (params.length === 0) throw new HollowcError('the graph has no parameters to train', label);
  for (const p of params) {
    if (p.value.initializer!.dataType !== DataType.FLOAT) throw new HollowcError(`parameter ${p.name} is not float32`, label);
  }
  // Before shapes are folded: a constant merge must never fold two equal parameters into one.
  const inputs = params.map((p) => makeParameterInput(g, p));
  specializeShapes(model, shapes);

  const output = (name: string, what: string) =>
    g.outputs.find((o) => o.name === name) ??
    (() => {
      throw new HollowcError(
        `${what} ${JSON.stringify(name)} is not an output of the graph (outputs: ${g.outputs.map((o) => o.name).join(', ')})`,
        label,
      );
    })();
  const prediction = output(loss.prediction, 'the loss prediction');
  const klSource = loss.kl && output(loss.kl.output, 'the KL term');
  const added = addLoss(model, prediction, { lossName: loss.kl ? RECONSTRUCTION_LOSS : LOSS });
  if (loss.target !== undefined) {
    const target = g.inputs.find((v) => v.name === loss.target);
    if (!target) throw new HollowcError(`the loss target ${JSON.stringify(loss.target)} is not an input of the graph`, label);
    const want = staticShapeOf(prediction).join(',');
    if (staticShapeOf(target).join(',') !== want)
      throw new HollowcError(
        `the loss target ${target.name} is [${staticShapeOf(target)}], the prediction ${prediction.name} [${want}]`,
        label,
      );
    g.replaceAllUsesWith(added.target, target);
    g.deleteValue(added.target);
  }
  // Every sample weighs the same: the per-sample weight add-loss takes (prior preservation's) is a constant 1.
  const e = new OpEmitter(new GraphBuilder(g, '/loss'), model.opsetVersion(''));
  g.replaceAllUsesWith(added.lossWeight, e.scalar(1, DataType.FLOAT, staticShapeOf(added.lossWeight)));
  g.deleteValue(added.lossWeight);

  let total = added.loss;
  const losses = [{ name: LOSS, weight: 1 }];
  const terms: Value[] = [];
  if (loss.kl && klSource) {
    const kl = addGaussianKl(model, klSource);
    kl.type = { elemType: DataType.FLOAT, shape: [1] };
    const sum = e.op('Add', [added.loss, e.op('Mul', [kl, e.scalar(loss.kl.weight, DataType.FLOAT)])]);
    total = namedOutput(model, sum, LOSS);
    terms.push(added.loss, kl);
    losses.push({ name: RECONSTRUCTION_LOSS, weight: 1 }, { name: KL_LOSS, weight: loss.kl.weight });
  }
  const { gradients } = differentiate(model, total, inputs, { unreachable: 'error' });
  const gradOutputs = addGradientOutputs(g, gradients);
  g.outputs = [total, ...terms, ...inputs.map((v) => gradOutputs.get(v)!)];
  g.eliminateDeadNodes();
  return { model, params, losses };
}

/**
 * An inference graph (a VAE's encoder or decoder) with every parameter an input in torch's layout,
 * so that a runtime can put trained values in by name without knowing how the graph stores them.
 */
export function parametersAsInputs(source: Model): { model: Model; params: string[] } {
  const model = cloneModel(source);
  const params = findBaseParameters(model.graph);
  for (const p of params) makeParameterInput(model.graph, p);
  model.graph.topologicalSort();
  return { model, params: params.map((p) => p.name) };
}

export interface GraphCompileRequest {
  /** The built model (its weights stay in their files). */
  model: Model;
  /** Names the model in messages and the manifest. */
  label: string;
  outDir: string;
  /** Static shape of every data input. */
  shapes: Record<string, number[]>;
  loss: GraphLossSpec;
  /** Inference graphs the trained parameters go back into, by name (`vae_encoder`), with metadata to keep. */
  exports?: Record<string, { model: Model; metadata?: Record<string, string> }>;
  optimizer: TrainingSettings['optimizer'];
  log?: (message: string) => void;
}

export function compileGraph(request: GraphCompileRequest): GraphTrainingManifest {
  const { label, outDir } = request;
  const built = buildTrainingGraph(request.model, request.shapes, request.loss, label);
  const trained = new Map(built.params.map((p) => [p.name, p]));
  const exports = Object.entries(request.exports ?? {}).map(([name, e]) => {
    const { model, params } = parametersAsInputs(e.model);
    const foreign = params.find((p) => !trained.has(p));
    if (foreign) throw new HollowcError(`export ${name} has parameter ${foreign}, which the training graph does not have`, label);
    for (const p of params) {
      const want = trained.get(p)!.shape.join(',');
      const got = model.graph.value(p).type!.shape!.join(',');
      if (want !== got) throw new HollowcError(`export ${name}: parameter ${p} is [${got}], trained as [${want}]`, label);
    }
    return { name, model, params, metadata: e.metadata };
  });
  request.log?.(`${GRAPH_GRADS_FILE}: ${built.params.length} parameters, ${built.model.graph.nodes.length} nodes`);

  if (fs.existsSync(outDir) && !fs.statSync(outDir).isDirectory())
    throw new HollowcError('the output is a file, not a folder: give a folder for the training graph', outDir);
  const existed = fs.existsSync(outDir);
  const release = lockFolder(outDir, 'hollowc compile-graph', { create: true });
  let done = false;
  const tmp = fs.mkdtempSync(path.join(outDir, '.hollowc-compile-'));
  const writer = new ExternalDataWriter(path.join(tmp, WEIGHTS_FILE));
  try {
    const parameters: TrainedBaseParameter[] = built.params.map((p) => {
      const t = p.value.initializer!;
      const at = writer.place({ name: p.name, dataType: t.dataType, dims: [...p.shape], data: torchLayoutData(p) });
      return { name: p.name, module: p.module, shape: [...p.shape], init: { file: at.location, offset: at.offset, length: at.length } };
    });
    writer.commit();
    saveModel(built.model, path.join(tmp, GRAPH_GRADS_FILE), { externalData: 'inline' });
    const files = [WEIGHTS_FILE, GRAPH_GRADS_FILE];
    const manifestExports: GraphTrainingManifest['exports'] = {};
    for (const e of exports) {
      const file = `${e.name}.onnx`;
      saveModel(e.model, path.join(tmp, file), { externalData: 'inline' });
      files.push(file);
      manifestExports[e.name] = { file, parameters: e.params, ...(e.metadata ? { metadata: e.metadata } : {}) };
    }
    const grads = describeArtifact(GRAPH_GRADS_FILE, built.model);
    const paramNames = new Set(built.params.map((p) => p.name));
    const manifest: GraphTrainingManifest = {
      hollowc: GRAPH_MANIFEST_FORMAT,
      source: label,
      grads,
      data: grads.inputs.filter((i) => !paramNames.has(i.name)),
      losses: built.losses,
      parameters,
      exports: manifestExports,
      optimizer: request.optimizer,
    };
    writeFileAtomic(path.join(tmp, GRAPH_MANIFEST_FILE), JSON.stringify(manifest, null, 2) + '\n');
    for (const f of [...files, GRAPH_MANIFEST_FILE]) fs.renameSync(path.join(tmp, f), path.join(outDir, f));
    done = true;
    return manifest;
  } catch (e) {
    writer.abort();
    throw e;
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
    release();
    if (!done && !existed) fs.rmSync(outDir, { recursive: true, force: true });
  }
}
