// Semantic checks of a parsed Spec against a concrete UNet, and resolution of everything the
// compiler needs in plain values (ResolvedSpec).
//
// The model is seen only through ModelFacts, which the graph analysis implements; keeping it this
// small lets the DSL be tested with a hand-written model and keeps dsl/ free of graph code.
import { Hollow, Spec, Valued } from './ast';
import { SourcePos, SpecError, specErrorAt, throwIfAny } from './diagnostics';
import { matchesGlob } from './glob';
import { FAMILIES } from '../models/families';
import {
  BasePrecision,
  ChunkSizes,
  EmitArtifact,
  FamilyName,
  GradientPrecision,
  InferLoraPrecision,
  OptimizerKind,
  Prediction,
  RecomputeMode,
  presetListText,
  presetsFor,
} from './presets';
import { closestFirst } from './suggest';

/** One paper-numbered layer (`3-2`), in graph order: down layers, then mid, then up. */
export interface LayerFacts {
  readonly id: string;
  readonly stage: 'down' | 'mid' | 'up';
  /** Module paths making up the layer, e.g. `down_blocks.2.resnets.1`, `down_blocks.2.attentions.1`. */
  readonly modules: readonly string[];
}

/** A layer LoRA can attach to. For a conv, in/out are its channel counts. */
export interface LoraCandidate {
  readonly module: string;
  readonly in: number;
  readonly out: number;
  readonly kind: 'linear' | 'conv';
}

/** A weight of the UNet that `train base` can make trainable, named and shaped as torch has it. */
export interface BaseParameterFacts {
  /** The diffusers parameter name: `down_blocks.0.resnets.0.conv1.weight`. */
  readonly name: string;
  /** Its module: `down_blocks.0.resnets.0.conv1`. */
  readonly module: string;
  /** torch's shape ([out, in] for a Linear, [C] for a norm's scale). */
  readonly shape: readonly number[];
}

export interface InputFacts {
  readonly name: string;
  readonly rank: number;
  /** Optional: the graph's dims, null where dynamic. When given, static dims are checked. */
  readonly dims?: readonly (number | null)[];
}

/** `after` is always a layer id: module paths are resolved to ids by checkSpec first. */
export type HollowRequest =
  { readonly preset: string } | { readonly blocks: readonly string[] } | { readonly after: string } | { readonly none: true };

export interface ModelFacts {
  readonly family: FamilyName;
  readonly layers: readonly LayerFacts[];
  /** The hollowed layer ids (graph order). Throws an Error whose message explains why the
   * request is invalid (non-contiguous, asymmetric, ...) and which blocks would make it valid. */
  resolveHollow(request: HollowRequest): { hollowed: string[] };
  readonly loraCandidates: readonly LoraCandidate[];
  /** Every parameter of the UNet, in graph order. */
  readonly baseParameters: readonly BaseParameterFacts[];
  readonly inputs: readonly InputFacts[];
}

export interface ResolvedBaseParameter extends BaseParameterFacts {
  /** The first `train base` glob that matched it. */
  readonly glob: string;
}

export interface ResolvedTarget extends LoraCandidate {
  /** The first spec glob that matched this module. */
  readonly glob: string;
  /** Inside a hollowed layer: only the base path (without LoRA) runs it. */
  readonly hollowed: boolean;
}

/** The spec with every choice made concrete for one model. `spec` keeps positions for errors. */
export interface ResolvedSpec {
  readonly spec: Spec;
  readonly family: FamilyName;
  readonly hollow: { readonly kind: Hollow['kind']; readonly hollowed: readonly string[] };
  /** Only the inputs the spec gives shapes for, in spec order. */
  readonly shapes: Readonly<Record<string, readonly number[]>>;
  readonly lora: {
    readonly rank: number;
    readonly alpha: number;
    /** alpha / rank, the factor on the LoRA branch. */
    readonly scale: number;
    readonly init: { readonly kind: 'gaussian'; readonly std: number } | { readonly kind: 'file'; readonly path: string };
    /** How infer.onnx takes the LoRA tensors. */
    readonly infer: InferLoraPrecision;
    /** Every matched candidate, in the model's candidate order. */
    readonly targets: readonly ResolvedTarget[];
  };
  /** The base weights that train (`train base`): matched and outside the hollow, in the model's order. */
  readonly trainBase: readonly ResolvedBaseParameter[];
  readonly loss: { readonly kind: 'mse'; readonly prediction: Prediction; readonly priorWeight: number };
  readonly optimizer: {
    readonly kind: OptimizerKind;
    readonly lr: number;
    readonly betas: readonly [number, number];
    readonly eps: number;
    readonly weightDecay: number;
  };
  readonly emit: readonly EmitArtifact[];
  readonly seed: number;
  readonly train: { readonly steps: number; readonly batch: number; readonly checkpointEvery: number };
  readonly base: BasePrecision;
  readonly recompute: RecomputeMode;
  readonly gradients: GradientPrecision;
  /** The `chunks` line, in bytes. */
  readonly chunks: ChunkSizes;
}

/** Checks `spec` against the model and resolves it. Throws a SpecError carrying every problem
 * found (`.all`), each positioned on the statement or value responsible. */
export function checkSpec(spec: Spec, facts: ModelFacts): ResolvedSpec {
  const errors: SpecError[] = [];
  const fail = (at: Valued<unknown> | SourcePos | undefined, message: string, suggestion?: string) =>
    errors.push(specErrorAt(spec, at, message, suggestion));

  const family = facts.family;
  if (spec.model.value !== 'auto' && spec.model.value !== family) {
    fail(
      spec.model,
      `"model ${spec.model.value}" does not match the graph, which is an ${family} UNet`,
      `write "model ${family}" or "model auto"`,
    );
  }

  const hollowed = resolveHollow(spec, facts, fail);
  const targets = resolveTargets(spec, facts, new Set(hollowed), fail);
  const trainBase = resolveTrainBase(spec, facts, hollowed, fail);
  checkShapes(spec, facts, fail);
  throwIfAny(errors);

  const init = spec.lora.init;
  return {
    spec,
    family,
    hollow: { kind: spec.hollow.kind, hollowed },
    shapes: Object.fromEntries(spec.shapes.map((s) => [s.input.value, s.dims.map((d) => d.value)])),
    lora: {
      rank: spec.lora.rank.value,
      alpha: spec.lora.alpha.value,
      scale: spec.lora.alpha.value / spec.lora.rank.value,
      init: init.kind === 'file' ? { kind: 'file', path: init.path.value } : { kind: 'gaussian', std: init.std.value },
      infer: spec.lora.infer.value,
      targets,
    },
    trainBase,
    loss: {
      kind: 'mse',
      prediction: spec.loss.prediction.value ?? FAMILIES[family].predictionType,
      priorWeight: spec.loss.priorWeight.value,
    },
    optimizer: {
      kind: spec.optimizer.kind,
      lr: spec.optimizer.lr.value,
      betas: [spec.optimizer.betas[0].value, spec.optimizer.betas[1].value],
      eps: spec.optimizer.eps.value,
      weightDecay: spec.optimizer.weightDecay.value,
    },
    emit: spec.emit.value,
    seed: spec.seed.value,
    train: {
      steps: spec.train.steps.value,
      batch: spec.train.batch.value,
      checkpointEvery: spec.train.checkpointEvery.value,
    },
    base: spec.base.value,
    recompute: spec.recompute.value,
    gradients: spec.gradients.value,
    chunks: Object.fromEntries(Object.entries(spec.chunks).map(([k, v]) => [k, v!.value])),
  };
}

type Fail = (at: Valued<unknown> | SourcePos | undefined, message: string, suggestion?: string) => void;

// --- hollow ----------------------------------------------------------------------------------

function resolveHollow(spec: Spec, facts: ModelFacts, fail: Fail): string[] {
  const h = spec.hollow;
  let request: HollowRequest | undefined;
  let at: SourcePos;
  switch (h.kind) {
    case 'preset': {
      at = h.preset.pos ?? h.pos;
      const valid = presetsFor(facts.family);
      // With an explicit, matching `model`, assemble.ts already reported a foreign preset.
      if (!valid.includes(h.preset.value) && spec.model.value === 'auto') {
        fail(at, `preset "${h.preset.value}" is not for ${facts.family} models`, `${facts.family} presets: ${presetListText(valid)}`);
      } else if (valid.includes(h.preset.value)) request = { preset: h.preset.value };
      break;
    }
    case 'blocks': {
      at = h.listPos;
      const blocks = expandBlocks(h.items, facts.layers, fail);
      if (blocks !== undefined) request = { blocks };
      break;
    }
    case 'after': {
      at = h.ref.pos ?? h.pos;
      const layer = resolveAfter(h.ref, h.refKind, facts.layers, fail);
      if (layer !== undefined) request = { after: layer };
      break;
    }
    case 'none':
      at = h.pos;
      request = { none: true };
  }
  if (request === undefined) return [];
  try {
    return facts.resolveHollow(request).hollowed;
  } catch (e) {
    fail(at, e instanceof Error ? e.message : String(e));
    return [];
  }
}

/** Paper ids and ranges -> the ids they cover, in graph order; undefined if any is unknown. */
function expandBlocks(items: Extract<Hollow, { kind: 'blocks' }>['items'], layers: readonly LayerFacts[], fail: Fail) {
  const index = new Map(layers.map((l, i) => [l.id, i]));
  const known = (v: Valued<string>): number | undefined => {
    const i = index.get(v.value);
    if (i === undefined) unknownBlock(v, layers, fail);
    return i;
  };
  const picked = new Set<number>();
  let ok = true;
  for (const item of items) {
    if (item.kind === 'id') {
      const i = known(item.id);
      if (i === undefined) ok = false;
      else picked.add(i);
      continue;
    }
    const a = known(item.from);
    const b = known(item.to);
    if (a === undefined || b === undefined) {
      ok = false;
      continue;
    }
    for (let i = a; i <= b; i++) picked.add(i);
  }
  return ok ? [...picked].sort((x, y) => x - y).map((i) => layers[i]!.id) : undefined;
}

function unknownBlock(v: Valued<string>, layers: readonly LayerFacts[], fail: Fail): void {
  const ids = layers.map((l) => l.id);
  // Same block number first (4-3 -> 4-1, 4-2), then by edit distance.
  const block = v.value.split('-')[0] + '-';
  const ordered = [
    ...closestFirst(
      v.value,
      ids.filter((id) => id.startsWith(block)),
    ),
    ...closestFirst(v.value, ids),
  ];
  fail(v, `unknown block "${v.value}"; this model has no such layer`, `valid blocks, closest first: ${listSome([...new Set(ordered)])}`);
}

/** The layer id that `hollow after` names, or undefined after reporting why there is none. */
function resolveAfter(ref: Valued<string>, kind: 'id' | 'path', layers: readonly LayerFacts[], fail: Fail): string | undefined {
  let layer: LayerFacts | undefined;
  if (kind === 'id') {
    layer = layers.find((l) => l.id === ref.value);
    if (layer === undefined) {
      unknownBlock(ref, layers, fail);
      return undefined;
    }
  } else {
    const path = ref.value;
    const covering = layers.filter((l) => l.modules.some((m) => m === path || path.startsWith(m + '.') || m.startsWith(path + '.')));
    if (covering.length === 0) {
      const modules = layers.flatMap((l) => l.modules);
      fail(ref, `unknown module path "${path}"`, `valid here, closest first: ${listSome(pathCompletions(path, modules))}`);
      return undefined;
    }
    // A path that covers several layers (a whole `down_blocks.2`) keeps all of them.
    layer = covering[covering.length - 1]!;
  }
  if (layer.stage !== 'down') {
    const lastDown = [...layers].reverse().find((l) => l.stage === 'down');
    fail(
      ref,
      `"hollow after" names the last kept down layer, but ${ref.value} is in the ${layer.stage} ${layer.stage === 'mid' ? 'block' : 'path'}`,
      lastDown === undefined ? undefined : `the last down layer is ${lastDown.id} (${lastDown.modules.join(', ')})`,
    );
    return undefined;
  }
  return layer.id;
}

/** Where `path` leaves the known module tree, the valid next segments, closest first:
 * `up_blocks.7` -> up_blocks.0, up_blocks.1, ... */
function pathCompletions(path: string, modules: readonly string[]): string[] {
  const segs = path.split('.');
  for (let k = segs.length - 1; k >= 0; k--) {
    const prefix = segs.slice(0, k).join('.');
    const next = modules
      .filter((m) => k === 0 || m.startsWith(prefix + '.'))
      .map((m) => m.split('.')[k])
      .filter((s): s is string => s !== undefined);
    if (next.length > 0) return closestFirst(segs[k]!, next).map((s) => (k === 0 ? s : `${prefix}.${s}`));
  }
  return [];
}

function listSome(items: readonly string[], max = 8): string {
  return items.length <= max ? items.join(', ') : items.slice(0, max).join(', ') + ', ...';
}

// --- LoRA targets ----------------------------------------------------------------------------

function resolveTargets(spec: Spec, facts: ModelFacts, hollowed: ReadonlySet<string>, fail: Fail): ResolvedTarget[] {
  const candidates = facts.loraCandidates;
  const globOf = new Map<string, string>();
  for (const glob of spec.lora.targets) {
    const matched = candidates.filter((c) => matchesGlob(glob.value, c.module));
    if (matched.length === 0) {
      const what = glob.pos === undefined ? `default lora target "${glob.value}"` : `lora target "${glob.value}"`;
      const near = suffixes(candidates, glob.value.split('.').length);
      const hint = near.length === 0 ? undefined : `closest layer names: ${listSome(closestFirst(glob.value, near), 5)}`;
      fail(glob, `${what} matches no layer of this model`, glob.pos === undefined ? 'set "lora targets" explicitly' : hint);
    }
    for (const c of matched) if (!globOf.has(c.module)) globOf.set(c.module, glob.value);
  }

  const layerOf = (module: string) => facts.layers.find((l) => l.modules.some((m) => module === m || module.startsWith(m + '.')));
  const targets = candidates
    .filter((c) => globOf.has(c.module))
    .map((c) => ({ ...c, glob: globOf.get(c.module)!, hollowed: hollowed.has(layerOf(c.module)?.id ?? '') }));

  checkRank(spec, targets, fail);
  return targets;
}

/** The distinct last-`n`-segment names of the candidates: what a glob of `n` segments can match. */
function suffixes(candidates: readonly LoraCandidate[], n: number): string[] {
  return [...new Set(candidates.map((c) => c.module.split('.').slice(-n).join('.')))];
}

function checkRank(spec: Spec, targets: readonly ResolvedTarget[], fail: Fail): void {
  const problem = rankProblem(spec.lora.rank.value, targets);
  if (problem) fail(spec.lora.rank, problem.message, problem.hint);
}

/**
 * Why a LoRA of `rank` does not fit `targets` (a rank above a layer's narrower side), naming the
 * narrowest and the largest rank that fits; undefined when it fits. `words` name the rank and the
 * targets as the user gave them (the spec's lines, or plan's flags).
 */
export function rankProblem(
  rank: number,
  targets: readonly LoraCandidate[],
  words = { rank: 'lora rank', targets: 'lora targets' },
): { message: string; hint: string } | undefined {
  const tooNarrow = targets.filter((t) => rank > Math.min(t.in, t.out));
  if (tooNarrow.length === 0) return undefined;
  const narrowest = tooNarrow.reduce((a, b) => (Math.min(b.in, b.out) < Math.min(a.in, a.out) ? b : a));
  const limit = Math.min(narrowest.in, narrowest.out);
  const others = tooNarrow.length > 1 ? ` (and ${tooNarrow.length - 1} more targeted layer${tooNarrow.length > 2 ? 's' : ''})` : '';
  return {
    message: `${words.rank} ${rank} is larger than ${narrowest.module} allows: it has in ${narrowest.in}, out ${narrowest.out}${others}`,
    hint: `use ${words.rank} ${limit} or less, or leave the narrow layers out of ${words.targets}`,
  };
}

// --- train base ------------------------------------------------------------------------------

/**
 * A parameter trains when a glob matches its name (`*.bias`), its module, or a module containing
 * it (`up_blocks.1` trains the whole block), each matched as lora target globs match a path.
 */
export function baseGlobMatches(glob: string, p: Pick<BaseParameterFacts, 'name' | 'module'>): boolean {
  if (matchesGlob(glob, p.name)) return true;
  const segments = p.module.split('.');
  for (let k = segments.length; k >= 1; k--) if (matchesGlob(glob, segments.slice(0, k).join('.'))) return true;
  return false;
}

function resolveTrainBase(spec: Spec, facts: ModelFacts, hollowed: readonly string[], fail: Fail): ResolvedBaseParameter[] {
  const hollowedIds = new Set(hollowed);
  const hollowedModules = facts.layers.filter((l) => hollowedIds.has(l.id)).flatMap((l) => l.modules);
  const isHollowed = (module: string) => hollowedModules.some((m) => module === m || module.startsWith(m + '.'));
  const globOf = new Map<string, string>();
  for (const glob of spec.trainBase) {
    const matched = facts.baseParameters.filter((p) => baseGlobMatches(glob.value, p));
    if (matched.length === 0) {
      const near = modulePrefixes(facts.baseParameters, glob.value.split('.').length);
      fail(
        glob,
        `train base "${glob.value}" matches no module of this model`,
        `closest module names: ${listSome(closestFirst(glob.value, near), 5)}`,
      );
      continue;
    }
    const kept = matched.filter((p) => !isHollowed(p.module));
    if (kept.length === 0) {
      fail(
        glob,
        `train base "${glob.value}" matches only hollowed modules (the cut hollows ${hollowed[0]} .. ${hollowed[hollowed.length - 1]}): nothing of it trains`,
        'name modules the hollowed net keeps (the down layers before the cut, the up layers after it), or hollow less',
      );
    }
    for (const p of kept) if (!globOf.has(p.name)) globOf.set(p.name, glob.value);
  }
  return facts.baseParameters.filter((p) => globOf.has(p.name)).map((p) => ({ ...p, glob: globOf.get(p.name)! }));
}

/** The distinct first-`n`-segment paths of the parameters' modules: what a glob of `n` segments names. */
function modulePrefixes(params: readonly BaseParameterFacts[], n: number): string[] {
  return [...new Set(params.map((p) => p.module.split('.').slice(0, n).join('.')))];
}

// --- shapes ----------------------------------------------------------------------------------

function checkShapes(spec: Spec, facts: ModelFacts, fail: Fail): void {
  const names = facts.inputs.map((i) => i.name);
  for (const s of spec.shapes) {
    const input = facts.inputs.find((i) => i.name === s.input.value);
    if (input === undefined) {
      fail(
        s.input,
        `the model has no input "${s.input.value}"`,
        `its inputs, closest first: ${closestFirst(s.input.value, names).join(', ')}`,
      );
      continue;
    }
    if (s.dims.length !== input.rank) {
      fail(
        s.dimsPos,
        `shape of "${input.name}" has ${s.dims.length} dimension${s.dims.length === 1 ? '' : 's'}, but the input has rank ${input.rank}`,
      );
      continue;
    }
    input.dims?.forEach((fixed, i) => {
      const d = s.dims[i]!;
      if (fixed !== null && fixed !== d.value) {
        fail(d, `dimension ${i} of "${input.name}" is ${d.value}, but the model fixes it to ${fixed}`);
      }
    });
  }
}
