/**
 * `hollowc compile`: from a UNet and what the spec resolved to, the artifacts (each built by its
 * pass list in artifact-passes.ts), one shared weights file and manifest.json, written atomically:
 * everything goes to a temporary folder inside `outDir` first and is renamed into place only
 * when every artifact was written, so a failed compile leaves what was there before.
 */
import * as crypto from 'crypto';
import * as fs from 'fs';
import * as path from 'path';
import { ortTypeName } from '../compiler/dtype';
import { HollowcError } from '../compiler/errors';
import { ExternalDataWriter } from '../compiler/external-data';
import { Model, TensorData, Value } from '../compiler/ir';
import {
  ArtifactDescription,
  ArtifactName,
  CompileManifest,
  FLOAT16_WEIGHTS_SESSION_CONFIG,
  MANIFEST_FILE,
  MANIFEST_FORMAT,
  ManifestCut,
  TensorDescription,
  TrainedBaseParameter,
  TrainingSettings,
  WEIGHTS_FILE,
  loraParamNames,
} from '../compiler/manifest';
import { lockFolder } from '../compiler/folder-lock';
import { modelIdentity, sha256File } from '../compiler/model-identity';
import { PassSites } from '../compiler/pass';
import { loadModel, saveModel } from '../compiler/serde';
import { writeFileAtomic } from '../compiler/atomic-files';
import { defaultTrainingSettings } from '../models/training-defaults';
import { latentMultipleOfLayout } from '../models/latent-sizes';
import { CutInfo, UNetAnalysis, analyzeUNet, isStandardDomain } from './lib/analyze-unet';
import { ArtifactState, ChunkFields, LoraConfig, LoraParam, pickChunkFields } from './lib/artifact-state';
import { BaseParameter, selectBaseParameters, torchLayoutData } from './lib/base-parameters';
import { loraShapes, selectSites } from './lib/lora-sites';
import { buildArtifact } from './artifact-passes';
import { widenFloat16 } from './lib/widen-float16';
import { pretransposeWeights } from './structure/pretranspose-weights';

/** With the memory rewrites' block sizes: the spec's `chunks` line (chunkFieldsFromSpec), or a test's for its small models. */
export interface CompileRequest extends ChunkFields {
  /** The source UNet as loaded from `modelFile` (its weights stay in their files). */
  model?: Model;
  modelFile: string;
  /** `analyzeUNet` of the model, when the caller has it already. */
  analysis?: UNetAnalysis;
  outDir: string;
  /** The deepest down layer (paper id) the hollowed net keeps, or null for `hollow none`. */
  lastKeptDown: string | null;
  /** Module paths that get LoRA. */
  targets: string[];
  /** Base weights that train too, by diffusers parameter name (the spec's `train base`); none when absent. */
  trainBase?: string[];
  lora: LoraConfig;
  emit: ArtifactName[];
  spec?: { file: string; text: string };
  /** Training shapes, optimizer and loop settings; the family's defaults when omitted. */
  training?: TrainingSettings;
  log?: (message: string) => void;
  /** Passes (by name) to leave out of every artifact's pass list: for measuring what a pass buys, and tests. */
  skipPasses?: readonly string[];
  /**
   * Files the caller writes beside the artifacts (the CLI's lora-init.safetensors), into the
   * temporary folder once the manifest is known; returns their names. They move into place with
   * the artifacts, so a caller's failure here also leaves no folder that looks compiled.
   */
  extraFiles?: (dir: string, manifest: CompileManifest) => string[];
  /**
   * Called once the artifacts are written, with the sites each rewrite that looks for them found
   * and matched (rewriteSummary words them), so that a rewrite that missed its sites is seen.
   */
  onRewrites?: (sites: RewriteSites[]) => void;
}

/** One rewrite's sites in one artifact. */
export interface RewriteSites extends PassSites {
  artifact: ArtifactName;
  pass: string;
}

/**
 * compile's summary of the rewrites: per artifact, how many sites each matched and rewrote; then
 * one warning for every rewrite that left sites unmatched (with why), since those are paid for in
 * memory (an attention map left whole).
 */
export function rewriteSummary(sites: readonly RewriteSites[]): string[] {
  const lines: string[] = [];
  for (const artifact of [...new Set(sites.map((s) => s.artifact))]) {
    const parts = sites
      .filter((s) => s.artifact === artifact && s.found > 0)
      .map((s) => {
        const small = s.matched - s.rewritten;
        return `${s.pass} ${s.matched} of ${s.found} ${s.what} matched, ${s.rewritten} rewritten${small ? ` (${small} small enough to leave)` : ''}`;
      });
    if (!parts.length) continue;
    lines.push(`  rewrites in ${artifact}.onnx: ${parts.join('; ')}`);
  }
  for (const s of sites.filter((x) => x.matched < x.found)) {
    const why = s.unmatched.map((u) => `${u.count}: ${u.reason}`).join('; ');
    lines.push(
      `  warning: ${s.pass}: ${s.matched} of ${s.found} ${s.what} matched in ${s.artifact}.onnx, the rest left as they are (${why})`,
    );
  }
  return lines;
}

function describeValues(values: readonly Value[]): TensorDescription[] {
  return values.map((v) => ({ name: v.name, dtype: v.type ? ortTypeName(v.type.elemType) : 'unknown', shape: v.type?.shape ?? [] }));
}

/** The manifest entry of an artifact saved as `file`. */
export function describeArtifact(file: string, model: Model): ArtifactDescription {
  const g = model.graph;
  return { file, inputs: describeValues(g.inputs), outputs: describeValues(g.outputs), nodes: g.nodes.length };
}

/**
 * The source's external data files, hard-linked into `dir` so the artifacts can reference the
 * weights where they are: nothing is read or copied. Where linking is impossible (another
 * file system), the tensors stay as they are and get copied into weights.onnx_data.
 */
function linkExternalData(model: Model, dir: string, log?: (m: string) => void): string[] {
  const linked = new Map<string, string>();
  const names = new Set<string>();
  const relink = (d: TensorData): TensorData => {
    if (d.kind !== 'external') return d;
    let target = linked.get(d.file);
    if (target === undefined) {
      let name = path.basename(d.file);
      while (names.has(name) || name === WEIGHTS_FILE) name = `_${name}`;
      target = path.join(dir, name);
      try {
        fs.linkSync(d.file, target);
        names.add(name);
      } catch (e) {
        log?.(`cannot hard-link ${d.file} (${(e as NodeJS.ErrnoException).code}); its tensors are copied into ${WEIGHTS_FILE}`);
        target = '';
      }
      linked.set(d.file, target);
    }
    return target ? { ...d, file: target } : d;
  };
  for (const v of model.graph.initializers()) {
    const t = v.initializer!;
    t.data = relink(t.data);
    // a float16 export's weight: the artifacts store its float16 bytes (float16-weights.ts)
    if (t.float16Source) t.float16Source = relink(t.float16Source);
  }
  return [...names];
}

function cutOf(analysis: UNetAnalysis, lastKeptDown: string | null, label: string): CutInfo | null {
  if (lastKeptDown === null) return null;
  const cut = analysis.cuts.find((c) => c.lastKeptDown === lastKeptDown);
  if (!cut)
    throw new HollowcError(
      `no valid cut keeps the down path through ${lastKeptDown} (valid: ${analysis.cuts.map((c) => c.lastKeptDown).join(' ')})`,
      label,
    );
  return cut;
}

function manifestCut(cut: CutInfo | null): ManifestCut | null {
  return (
    cut && {
      lastKeptDown: cut.lastKeptDown,
      hollowed: [...cut.hollowed],
      hollowedBlocks: [...cut.hollowedBlocks],
      firstKeptUp: cut.firstKeptUp,
      hollowActivation: { tensor: cut.activation.tensor, shape: cut.activation.shape },
      removedParameters: cut.removedParams,
      fraction: cut.fraction,
    }
  );
}

function loraManifest(source: Model, request: CompileRequest, trained: readonly LoraParam[]): CompileManifest['lora'] {
  const trainedModules = new Set(trained.map((p) => p.module));
  const { rank, alpha } = request.lora;
  return {
    rank,
    alpha,
    scale: alpha / rank,
    targets: selectSites(source.graph, request.targets, request.modelFile).map((s) => {
      const shapes = loraShapes(s, rank);
      const names = loraParamNames(s.module);
      return {
        module: s.module,
        kind: s.kind,
        inFeatures: s.inFeatures,
        outFeatures: s.outFeatures,
        trained: trainedModules.has(s.module),
        lora_A: { name: names.a, shape: shapes.a },
        lora_B: { name: names.b, shape: shapes.b },
      };
    }),
  };
}

/**
 * A trained base weight for the manifest, with its value before training in torch's layout: where
 * the source stores it so (a hard-linked external file) that range itself, else written once more
 * into the shared weights file (pre-transposed or unsqueezed weights, weights held inline).
 */
function describeBaseParameter(p: BaseParameter, dir: string, writer: ExternalDataWriter): TrainedBaseParameter {
  const t = p.value.initializer!;
  const data = torchLayoutData(p);
  const inPlace = data.kind === 'external' && path.dirname(data.file) === dir;
  const at = inPlace
    ? { location: path.basename(data.file), offset: data.offset, length: data.length }
    : writer.place({ name: `${p.name}.init`, dataType: t.dataType, dims: [...p.shape], data });
  return { name: p.name, module: p.module, shape: [...p.shape], init: { file: at.location, offset: at.offset, length: at.length } };
}

/**
 * The source as every pass reads it: a float16 export widened to float32 and a dynamo export's
 * Linear weights stored transposed, with the identity of the model as loaded.
 */
function prepareSource(request: CompileRequest): { source: Model; identity: string; float16Io?: readonly string[] } {
  const loaded = request.model ?? loadModel(request.modelFile);
  // before anything moves the weights' files: what the folder will record it was made from
  const identity = modelIdentity(request.modelFile, loaded);
  // A float16 export is compiled as float32 and its weights stored float16 again (float16-weights.ts).
  const widened = widenFloat16(loaded);
  if (widened)
    request.log?.(`float16 export: ${widened.weights} float16 weights computed in float32; float16 I/O: ${widened.float16Io.join(' ')}`);
  // A dynamo export's Linear weights are stored as their layers read them (pretranspose-weights.ts).
  const transposed = pretransposeWeights(widened?.model ?? loaded);
  if (transposed) request.log?.(`${transposed.weights} weights read through a Transpose stored transposed`);
  return { source: transposed?.model ?? widened?.model ?? loaded, identity, float16Io: widened?.float16Io };
}

/** What writeArtifacts saved into the temporary folder. */
interface WrittenArtifacts {
  artifacts: CompileManifest['artifacts'];
  /** The LoRA the first artifact built holds, if any artifact inserts LoRA. */
  trained: LoraParam[] | undefined;
  rewrites: RewriteSites[];
}

/** Every artifact in `request.emit`, built by its pass list and saved into `dir`, weights through `writer`. */
function writeArtifacts(
  request: CompileRequest,
  source: Model,
  inputs: ArtifactState,
  dir: string,
  writer: ExternalDataWriter,
): WrittenArtifacts {
  const artifacts: CompileManifest['artifacts'] = {};
  let trained: LoraParam[] | undefined;
  const rewrites: RewriteSites[] = [];
  for (const name of request.emit) {
    request.log?.(`${name}.onnx:`);
    const { model, state, passes } = buildArtifact(name, source, inputs, request.log, request.skipPasses);
    for (const r of passes) if (r.sites) rewrites.push({ artifact: name, pass: r.pass, ...r.sites });
    trained ??= state.loraParams;
    // The source was refused if it had any (analyzeUNet); no pass may add one either.
    const contrib = model.graph.nodes.find((n) => !isStandardDomain(n.domain));
    if (contrib) throw new Error(`${name}.onnx: node ${contrib.name} is ${contrib.domain}.${contrib.opType}, not standard ONNX`);
    saveModel(model, path.join(dir, `${name}.onnx`), { externalData: writer, referenceInPlace: true });
    artifacts[name] = describeArtifact(`${name}.onnx`, model);
    if (state.float16Weights) artifacts[name]!.sessionConfig = { ...FLOAT16_WEIGHTS_SESSION_CONFIG };
    if (state.cpuArena) artifacts[name]!.cpuArena = true;
  }
  return { artifacts, trained, rewrites };
}

/** What buildManifest records beyond the request. */
interface ManifestParts {
  source: Model;
  identity: string;
  analysis: UNetAnalysis;
  cut: CutInfo | null;
  training: TrainingSettings;
  trained: readonly LoraParam[];
  trainBase: TrainedBaseParameter[];
  linked: readonly string[];
  artifacts: CompileManifest['artifacts'];
}

function parameterCount(params: readonly { shape: readonly number[] }[]): number {
  return params.reduce((a, p) => a + p.shape.reduce((x, y) => x * y, 1), 0);
}

function buildManifest(request: CompileRequest, parts: ManifestParts): CompileManifest {
  const { source, identity, analysis, cut, training, trained, trainBase, linked, artifacts } = parts;
  return {
    hollowc: MANIFEST_FORMAT,
    family: analysis.family,
    model: {
      file: path.resolve(request.modelFile),
      sha256: sha256File(request.modelFile),
      parameters: analysis.totalParams,
      identity,
      latentMultiple: latentMultipleOfLayout(analysis.layout),
    },
    cut: manifestCut(cut),
    parameters: {
      full: analysis.totalParams,
      heldDuringTraining: analysis.totalParams - (cut?.removedParams ?? 0),
      lora: parameterCount(trained),
      ...(trainBase.length ? { trainedBase: parameterCount(trainBase) } : {}),
    },
    lora: loraManifest(source, request, trained),
    ...(trainBase.length ? { trainBase } : {}),
    weights: [WEIGHTS_FILE, ...linked],
    artifacts,
    training,
    ...(request.spec
      ? {
          spec: {
            file: request.spec.file,
            sha256: crypto.createHash('sha256').update(request.spec.text).digest('hex'),
            text: request.spec.text,
          },
        }
      : {}),
  };
}

export function compile(request: CompileRequest): CompileManifest {
  const label = request.modelFile;
  const { source, identity, float16Io } = prepareSource(request);
  const analysis = request.analysis ?? analyzeUNet(source.graph, label);
  const cut = cutOf(analysis, request.lastKeptDown, label);
  if (request.emit.includes('precompute') && !cut)
    throw new HollowcError('precompute.onnx needs a hollow: with `hollow none` there is no hollow activation to precompute');
  const training = request.training ?? defaultTrainingSettings(analysis.family);
  // Checked before anything is written: a name the model lacks, or one inside the hollow, is refused.
  const trainedBase = selectBaseParameters(source.graph, request.trainBase ?? [], cut?.hollowedModules ?? [], label);
  const inputs: ArtifactState = {
    analysis,
    cut,
    targets: request.targets,
    trainBase: trainedBase.map((p) => p.name),
    lora: request.lora,
    training,
    label,
    float16Io,
    ...pickChunkFields(request),
  };

  if (fs.existsSync(request.outDir) && !fs.statSync(request.outDir).isDirectory())
    throw new HollowcError('the output is a file, not a folder: give -o a folder for the artifacts', request.outDir);
  const existed = fs.existsSync(request.outDir);
  // One writer per folder (compiler/folder-lock.ts); the lock also creates the folder.
  const release = lockFolder(request.outDir, 'hollowc compile', { create: true });
  let done = false;
  const tmp = fs.mkdtempSync(path.join(request.outDir, '.hollowc-compile-'));
  const writer = new ExternalDataWriter(path.join(tmp, WEIGHTS_FILE));
  try {
    const linked = linkExternalData(source, tmp, request.log);
    const { artifacts, trained: firstTrained, rewrites } = writeArtifacts(request, source, inputs, tmp, writer);
    const trainBase = trainedBase.map((p) => describeBaseParameter(p, tmp, writer));
    writer.commit();
    // The LoRA a training run holds: what insert-lora adds outside the hollow.
    const trained = firstTrained ?? buildArtifact('forward', source, inputs).state.loraParams!;

    const manifest = buildManifest(request, { source, identity, analysis, cut, training, trained, trainBase, linked, artifacts });
    const extra = request.extraFiles?.(tmp, manifest) ?? [];
    writeFileAtomic(path.join(tmp, MANIFEST_FILE), JSON.stringify(manifest, null, 2) + '\n');

    // Everything is written: move it into place, manifest last.
    for (const file of [...manifest.weights, ...Object.values(artifacts).map((a) => a!.file), ...extra, MANIFEST_FILE]) {
      fs.renameSync(path.join(tmp, file), path.join(request.outDir, file));
    }
    done = true;
    request.onRewrites?.(rewrites);
    return manifest;
  } catch (e) {
    writer.abort();
    throw e;
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
    release();
    // A failed compile into a new folder leaves no folder behind.
    if (!done && !existed) fs.rmSync(request.outDir, { recursive: true, force: true });
  }
}
