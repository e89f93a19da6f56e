/**
 * `hollowc compile`: from a UNet and a resolved spec, the artifacts (precompute.onnx,
 * infer.onnx, and the training graphs), one shared weights file and manifest.json, written
 * atomically: everything goes to a temporary folder inside `outDir` first and is renamed into
 * place only when every artifact was written, so a failed compile leaves what was there before.
 */
import * as crypto from 'crypto';
import * as fs from 'fs';
import * as path from 'path';
import { cloneModel } from '../compiler/clone';
import { ortTypeName } from '../compiler/dtype';
import { HollowcError } from '../compiler/errors';
import { ExternalDataWriter } from '../compiler/external-data';
import { Dim, Model, Value } from '../compiler/ir';
import { loadModel, saveModel, writeFileAtomic } from '../compiler/serde';
import { assertValidGraph } from '../compiler/verify';
import { CutInfo, UNetAnalysis, analyzeUNet } from './analyze-unet';
import { extractPrecompute } from './extract-precompute';
import { HollowPoint, hollowOut } from './hollow-net';
import { LoraConfig, LoraParam, insertLora, loraShapes } from './insert-lora';
import { LoraSite, findLoraSites } from './lora-targets';
import { addBasePath, isBasePath } from './merge-two-path';
import { isWithin } from './module-scope';

export type ArtifactName = 'precompute' | 'infer' | 'forward' | 'grads' | 'train';

export interface CompileRequest {
  modelFile: string;
  outDir: string;
  /** The last kept down layer (paper id) of the cut, or null for `hollow none`. */
  cutAfter: string | null;
  /** Module paths that get LoRA. */
  targets: string[];
  lora: LoraConfig;
  emit: ArtifactName[];
  spec?: { file: string; text: string };
  /** The spec's training settings, recorded in the manifest for the runtime. */
  training?: TrainingSettings;
  /** Extra artifact builders (the training graphs), keyed by artifact name. */
  builders?: Partial<Record<ArtifactName, (forward: Model, ctx: BuildContext) => Model>>;
  /** Verify every graph after building it (tests). */
  verify?: boolean;
  log?: (message: string) => void;
}

export interface BuildContext {
  analysis: UNetAnalysis;
  cut: CutInfo | null;
  loraParams: LoraParam[];
}

export interface TensorDescription {
  name: string;
  dtype: string;
  shape: Dim[];
}

export interface ArtifactDescription {
  file: string;
  inputs: TensorDescription[];
  outputs: TensorDescription[];
  nodes: number;
}

export interface LoraTargetDescription {
  module: string;
  kind: 'linear' | 'conv';
  inFeatures: number;
  outFeatures: number;
  /** False for targets inside the hollow: they get no LoRA (they never run with it). */
  trained: boolean;
  lora_A: { name: string; shape: number[] };
  lora_B: { name: string; shape: number[] };
}

/** What `hollowc train` and `precompute` need from the spec, resolved at compile time. */
export interface TrainingSettings {
  prediction: 'epsilon' | 'v_prediction';
  priorWeight: number;
  seed: number;
  lr: number;
  steps: number;
  batch: number;
  checkpointEvery: number;
  /** The spec's `shape` lines. */
  shapes?: Record<string, number[]>;
}

export interface CompileManifest {
  hollowc: string;
  family: string;
  model: { file: string; sha256: string; parameters: number };
  cut: null | {
    after: string;
    hollowed: string[];
    hollowedModules: string[];
    firstKeptUp: string;
    hollowActivation: { tensor: string; shape: Dim[] };
    removedParameters: number;
    fraction: number;
  };
  parameters: { full: number; heldDuringTraining: number; lora: number };
  lora: { rank: number; alpha: number; scale: number; targets: LoraTargetDescription[] };
  weights: string[];
  artifacts: Partial<Record<ArtifactName, ArtifactDescription>>;
  training?: TrainingSettings;
  spec?: { file: string; sha256: string; text: string };
}

function describeValues(values: readonly Value[]): TensorDescription[] {
  return values.map((v) => ({ name: v.name, dtype: v.type ? ortTypeName(v.type.elemType) : 'unknown', shape: v.type?.shape ?? [] }));
}

function sha256File(file: string): string {
  const hash = crypto.createHash('sha256');
  const fd = fs.openSync(file, 'r');
  const buf = Buffer.allocUnsafe(8 * 2 ** 20);
  try {
    for (let n; (n = fs.readSync(fd, buf, 0, buf.length, null)) > 0; ) hash.update(buf.subarray(0, n));
  } finally {
    fs.closeSync(fd);
  }
  return hash.digest('hex');
}

/**
 * The source's external data files, hard-linked into `dir` so the artifacts can reference the
 * weights where they are: nothing is read or copied. Where linking is impossible (another
 * file system), the tensors stay as they are and get copied into weights.onnx_data.
 */
function linkExternalData(model: Model, dir: string, log?: (m: string) => void): string[] {
  const linked = new Map<string, string>();
  const names = new Set<string>();
  for (const v of model.graph.initializers()) {
    const t = v.initializer!;
    if (t.data.kind !== 'external') continue;
    let target = linked.get(t.data.file);
    if (target === undefined) {
      let name = path.basename(t.data.file);
      while (names.has(name) || name === WEIGHTS_FILE) name = `_${name}`;
      target = path.join(dir, name);
      try {
        fs.linkSync(t.data.file, target);
        names.add(name);
      } catch (e) {
        log?.(`cannot hard-link ${t.data.file} (${(e as NodeJS.ErrnoException).code}); its tensors are copied into ${WEIGHTS_FILE}`);
        target = '';
      }
      linked.set(t.data.file, target);
    }
    if (target) t.data = { ...t.data, file: target };
  }
  return [...names];
}

const WEIGHTS_FILE = 'weights.onnx_data';

function hollowPoint(analysis: UNetAnalysis, cut: CutInfo): HollowPoint {
  const skip = analysis.skips.find((s) => s.consumer === cut.firstKeptUp);
  if (!skip) throw new Error(`internal: no skip consumed by ${cut.firstKeptUp}`);
  return { concat: skip.concat, shape: cut.shape };
}

/** LoRA sites for the requested targets, in graph order; unknown targets are an error. */
export function selectSites(model: Model, targets: readonly string[], label: string): LoraSite[] {
  const sites = findLoraSites(model.graph);
  const byModule = new Map(sites.map((s) => [s.module, s]));
  const missing = targets.filter((t) => !byModule.has(t));
  if (missing.length) throw new HollowcError(`no Linear or Conv layer for LoRA target${missing.length > 1 ? 's' : ''} ${missing.slice(0, 5).join(', ')}${missing.length > 5 ? ', ...' : ''}`, label);
  const wanted = new Set(targets);
  return sites.filter((s) => wanted.has(s.module));
}

/** The hollowed net with LoRA: the model every training graph starts from. */
export function buildHollowedForward(source: Model, analysis: UNetAnalysis, cut: CutInfo | null, targets: readonly string[], lora: LoraConfig, label: string): { model: Model; params: LoraParam[] } {
  const model = cloneModel(source);
  const trained = cut ? targets.filter((t) => !cut.hollowedModules.some((m) => isWithin(t, m))) : [...targets];
  const params = insertLora(model.graph, selectSites(model, trained, label), lora);
  if (cut) hollowOut(model.graph, hollowPoint(analysis, cut));
  return { model, params };
}

export function buildPrecompute(source: Model, cut: CutInfo): Model {
  const model = cloneModel(source);
  extractPrecompute(model.graph, cut.hollowActivation, cut.shape);
  return model;
}

export function buildInfer(source: Model, analysis: UNetAnalysis, cut: CutInfo | null, targets: readonly string[], lora: LoraConfig, label: string): Model {
  const model = cloneModel(source);
  const trained = cut ? targets.filter((t) => !cut.hollowedModules.some((m) => isWithin(t, m))) : [...targets];
  const point = cut ? hollowPoint(analysis, cut) : undefined;
  const baseActivation = point ? addBasePath(model.graph, point) : undefined;
  // Sites are looked up after the base path exists; its copies are skipped, so LoRA goes on
  // path 2's layers only.
  const sites = selectSites(model, trained, label).filter((s) => !isBasePath(s.node));
  insertLora(model.graph, sites, lora);
  if (point && baseActivation) {
    hollowOut(model.graph, point, baseActivation);
    model.graph.topologicalSort();
  }
  return model;
}

export function compile(request: CompileRequest): CompileManifest {
  const label = request.modelFile;
  const source = loadModel(request.modelFile);
  const analysis = analyzeUNet(source.graph, label);
  const cut = request.cutAfter === null ? null : analysis.cuts.find((c) => c.after === request.cutAfter);
  if (cut === undefined) throw new HollowcError(`no valid cut keeps the down path through ${request.cutAfter} (valid: ${analysis.cuts.map((c) => c.after).join(' ')})`, label);
  for (const name of request.emit) {
    if (name === 'precompute' && !cut) throw new HollowcError('precompute.onnx needs a hollow: with `hollow none` there is no hollow activation to precompute');
    if ((name === 'grads' || name === 'train') && !request.builders?.[name]) throw new HollowcError(`${name}.onnx cannot be built by this compile (no builder registered)`);
  }

  fs.mkdirSync(request.outDir, { recursive: true });
  const tmp = fs.mkdtempSync(path.join(request.outDir, '.hollowc-compile-'));
  const written: string[] = [];
  const writer = new ExternalDataWriter(path.join(tmp, WEIGHTS_FILE));
  try {
    const linked = linkExternalData(source, tmp, request.log);
    const save = (name: ArtifactName, model: Model) => {
      if (request.verify) assertValidGraph(model.graph, `building ${name}.onnx`);
      saveModel(model, path.join(tmp, `${name}.onnx`), { externalData: writer, referenceInPlace: true });
      written.push(name);
      request.log?.(`${name}.onnx: ${model.graph.nodes.length} nodes`);
      return model;
    };
    const artifacts: CompileManifest['artifacts'] = {};
    const describe = (name: ArtifactName, model: Model) => {
      artifacts[name] = { file: `${name}.onnx`, inputs: describeValues(model.graph.inputs), outputs: describeValues(model.graph.outputs), nodes: model.graph.nodes.length };
    };

    const forward = buildHollowedForward(source, analysis, cut, request.targets, request.lora, label);
    const ctx: BuildContext = { analysis, cut, loraParams: forward.params };
    for (const name of request.emit) {
      let model: Model;
      if (name === 'precompute') model = buildPrecompute(source, cut!);
      else if (name === 'infer') model = buildInfer(source, analysis, cut, request.targets, request.lora, label);
      else if (name === 'forward') model = forward.model;
      else model = request.builders![name]!(cloneModel(forward.model), ctx);
      describe(name, save(name, model));
    }
    writer.commit();

    const sites = selectSites(source, request.targets, label);
    const trainedNames = new Set(forward.params.map((p) => p.module));
    const manifest: CompileManifest = {
      hollowc: '1',
      family: analysis.family,
      model: { file: path.resolve(request.modelFile), sha256: sha256File(request.modelFile), parameters: analysis.totalParams },
      cut: cut && {
        after: cut.after,
        hollowed: cut.hollowed,
        hollowedModules: cut.cut.hollowedBlocks as string[],
        firstKeptUp: cut.firstKeptUp,
        hollowActivation: { tensor: cut.hollowActivation, shape: cut.shape },
        removedParameters: cut.removedParams,
        fraction: cut.fraction,
      },
      parameters: {
        full: analysis.totalParams,
        heldDuringTraining: analysis.totalParams - (cut?.removedParams ?? 0),
        lora: forward.params.reduce((a, p) => a + p.shape.reduce((x, y) => x * y, 1), 0),
      },
      lora: {
        rank: request.lora.rank,
        alpha: request.lora.alpha,
        scale: request.lora.alpha / request.lora.rank,
        targets: sites.map((s) => {
          const shapes = loraShapes(s, request.lora.rank);
          return {
            module: s.module,
            kind: s.kind,
            inFeatures: s.inFeatures,
            outFeatures: s.outFeatures,
            trained: trainedNames.has(s.module),
            lora_A: { name: `${s.module}.lora_A.weight`, shape: shapes.a },
            lora_B: { name: `${s.module}.lora_B.weight`, shape: shapes.b },
          };
        }),
      },
      weights: [WEIGHTS_FILE, ...linked],
      artifacts,
      ...(request.training ? { training: request.training } : {}),
      ...(request.spec ? { spec: { file: request.spec.file, sha256: crypto.createHash('sha256').update(request.spec.text).digest('hex'), text: request.spec.text } } : {}),
    };
    writeFileAtomic(path.join(tmp, 'manifest.json'), JSON.stringify(manifest, null, 2) + '\n');

    // Everything is written: move it into place, manifest last.
    for (const file of [...manifest.weights, ...written.map((n) => `${n}.onnx`), 'manifest.json']) {
      fs.renameSync(path.join(tmp, file), path.join(request.outDir, file));
    }
    return manifest;
  } catch (e) {
    writer.abort();
    throw e;
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}
