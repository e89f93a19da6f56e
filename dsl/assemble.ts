// Statements -> Spec: rejects duplicates, fills defaults, and checks what involves several
// statements (a preset against an explicit `model`, `emit precompute` under `hollow none`).
import { DEFAULTS, DEFAULT_TARGETS } from '../models/training-defaults';
import { EmitArtifact, EMIT_ARTIFACTS, FamilyName, OptimizerKind, presetListText, presetsFor } from './presets';
import { Hollow, LoraInit, Num, Option, ShapeDecl, Spec, Statement, Valued } from './ast';
import { SourcePos, SourceText, SpecError, specErrorAt } from './diagnostics';

type Of<K extends Statement['kind']> = Extract<Statement, { kind: K }>;

export function assemble(
  source: SourceText,
  statements: readonly Statement[],
  /** Whether earlier stages already failed: then a missing `hollow` is likely a broken line, and
   * saying it is missing would be noise. */
  hadErrors: boolean,
): { spec?: Spec; errors: SpecError[] } {
  const errors: SpecError[] = [];
  const fail = (at: SourcePos | undefined, message: string, suggestion?: string) =>
    errors.push(specErrorAt(source, at, message, suggestion));

  const { model, hollow, rank, init, loraInfer, lossMse, prior, optimizer, emit, seed, train, base, recompute, chunks, gradients } = singleStatements(
    statements,
    fail,
  );
  const alpha = loraAlpha(statements, rank, fail);
  const shapes = accumulateShapes(statements, fail);
  const targets = accumulateGlobs(statements, 'lora targets', 'target', fail);
  const trainBase = accumulateGlobs(statements, 'train base', 'train base glob', fail);
  if (trainBase.length > 0 && targets.length === 0) loraWithoutTargets(statements, fail);
  const optimizerKind = optimizer?.optimizer ?? { value: 'adamw' as const };

  if (hollow === undefined) {
    if (!hadErrors) {
      fail(
        undefined,
        'missing "hollow" statement: the spec must say what to hollow',
        'add one of: hollow preset "39.2%" (SD 1.x/2.x), hollow preset "sdxl-mid" (SDXL), hollow none (plain LoRA)',
      );
    }
    return { errors };
  }
  if (model !== undefined && model.family.value !== 'auto') checkPresetFamily(hollow.hollow, model.family.value, fail);

  const spec: Spec = {
    file: source.file,
    text: source.text,
    model: model?.family ?? { value: 'auto' },
    hollow: hollow.hollow,
    shapes,
    lora: loraSection(rank, alpha, init, loraInfer, targets, trainBase),
    trainBase,
    loss: {
      kind: 'mse',
      prediction: lossMse?.prediction ?? { value: undefined },
      priorWeight: prior?.priorWeight ?? { value: DEFAULTS.priorWeight },
    },
    optimizer: optimizerSection(optimizer, optimizerKind),
    emit: emitList(emit, hollow.hollow, optimizerKind, fail),
    seed: seed?.seed ?? { value: DEFAULTS.seed },
    base: base?.precision ?? { value: 'fp32' },
    recompute: recompute?.mode ?? { value: 'cheap' },
    gradients: gradients?.precision ?? { value: 'fp32' },
    chunks: Object.fromEntries([...options(chunks?.options)].map(([k, [v]]) => [k, v!])),
    train: trainSection(train),
  };
  if (gradients?.precision.value === 'fp16' && !spec.emit.value.includes('grads')) {
    fail(
      gradients.precision.pos,
      '"gradients fp16" sets how grads.onnx outputs the gradients, but this spec does not emit grads',
      'add "grads" to the emit line, or drop the gradients line (train.onnx keeps its gradients inside the graph)',
    );
  }
  return { spec, errors };
}

type Fail = (at: SourcePos | undefined, message: string, suggestion?: string) => void;

/** The statements each spec holds at most once, by kind (the first of each kind wins; later ones are reported at their own line). */
function singleStatements(statements: readonly Statement[], fail: Fail) {
  const first = new Map<string, SourcePos>();
  const once = (key: string, pos: SourcePos): boolean => {
    const prev = first.get(key);
    if (prev !== undefined) {
      fail(pos, `duplicate "${key}" statement; the first is on line ${prev.line}`, 'each statement may appear once');
      return false;
    }
    first.set(key, pos);
    return true;
  };
  const single = <K extends Statement['kind']>(kind: K): Of<K> | undefined => {
    let found: Of<K> | undefined;
    for (const s of statements) {
      if (s.kind === kind && once(kind, s.pos) && found === undefined) found = s as Of<K>;
    }
    return found;
  };
  // In this order, so that duplicates are reported in it.
  return {
    model: single('model'),
    hollow: single('hollow'),
    rank: single('lora rank'),
    init: single('lora init'),
    loraInfer: single('lora infer'),
    lossMse: single('loss mse'),
    prior: single('loss prior_weight'),
    optimizer: single('optimizer'),
    emit: single('emit'),
    seed: single('seed'),
    train: single('train'),
    base: single('base'),
    recompute: single('recompute'),
    chunks: single('chunks'),
    gradients: single('gradients'),
  };
}

function loraSection(
  rank: Of<'lora rank'> | undefined,
  alpha: Num | undefined,
  init: Of<'lora init'> | undefined,
  infer: Of<'lora infer'> | undefined,
  targets: readonly Valued<string>[],
  trainBase: readonly Valued<string>[],
): Spec['lora'] {
  const rankValue: Num = rank?.rank ?? { value: DEFAULTS.rank };
  return {
    rank: rankValue,
    // Unset alpha follows rank, making the LoRA scale alpha/rank exactly 1.
    alpha: alpha ?? { value: rankValue.value },
    // Beside `train base`, LoRA trains only where a `lora targets` line asks for it.
    targets: targets.length > 0 || trainBase.length > 0 ? targets : DEFAULT_TARGETS.map((value) => ({ value })),
    init: loraInit(init, rankValue.value),
    infer: infer?.precision ?? { value: 'fp32' },
  };
}

function optimizerSection(optimizer: Of<'optimizer'> | undefined, kind: Valued<OptimizerKind>): Spec['optimizer'] {
  const optOpts = options(optimizer?.options);
  const betas = optOpts.get('betas');
  return {
    kind: kind.value,
    ...(optimizer === undefined ? {} : { pos: optimizer.pos }),
    lr: optOpts.get('lr')?.[0] ?? { value: DEFAULTS.lr },
    betas: betas !== undefined ? [betas[0]!, betas[1]!] : [{ value: DEFAULTS.beta1 }, { value: DEFAULTS.beta2 }],
    eps: optOpts.get('eps')?.[0] ?? { value: DEFAULTS.eps },
    weightDecay: optOpts.get('weight_decay')?.[0] ?? { value: DEFAULTS.weightDecay },
  };
}

function trainSection(train: Of<'train'> | undefined): Spec['train'] {
  const trainOpts = options(train?.options);
  const steps = trainOpts.get('steps')?.[0] ?? { value: DEFAULTS.steps };
  return {
    steps,
    batch: trainOpts.get('batch')?.[0] ?? { value: DEFAULTS.batch },
    // Unset: one checkpoint, at the end.
    checkpointEvery: trainOpts.get('checkpoint_every')?.[0] ?? { value: steps.value },
  };
}

/** Alpha may come from `lora rank r alpha a` or from its own `lora alpha a` line, not both. */
function loraAlpha(statements: readonly Statement[], rank: Of<'lora rank'> | undefined, fail: Fail): Num | undefined {
  let found: Num | undefined;
  for (const s of statements) {
    const a = s.kind === 'lora alpha' ? s.alpha : s.kind === 'lora rank' && s === rank ? s.alpha : undefined;
    if (a === undefined) continue;
    if (found !== undefined)
      fail(a.pos, `duplicate "lora alpha"; the first is on line ${found.pos!.line}`, 'each statement may appear once');
    else found = a;
  }
  return found;
}

function accumulateShapes(statements: readonly Statement[], fail: Fail): ShapeDecl[] {
  const byInput = new Map<string, ShapeDecl>();
  for (const s of statements) {
    if (s.kind !== 'shape') continue;
    const prev = byInput.get(s.shape.input.value);
    if (prev !== undefined) {
      fail(s.shape.input.pos, `duplicate "shape ${s.shape.input.value}"; the first is on line ${prev.pos.line}`);
    } else byInput.set(s.shape.input.value, s.shape);
  }
  return [...byInput.values()];
}

/** The globs of every `lora targets` (or `train base`) line, in order; a glob given twice is an error. */
function accumulateGlobs(
  statements: readonly Statement[],
  kind: 'lora targets' | 'train base',
  what: string,
  fail: Fail,
): Valued<string>[] {
  const byGlob = new Map<string, Valued<string>>();
  for (const s of statements) {
    if (s.kind !== kind) continue;
    for (const g of s.globs) {
      const prev = byGlob.get(g.value);
      if (prev !== undefined) fail(g.pos, `duplicate ${what} "${g.value}"; the first is on line ${prev.pos!.line}`);
      else byGlob.set(g.value, g);
    }
  }
  return [...byGlob.values()];
}

/** Beside `train base` without `lora targets` no LoRA trains: a `lora` line would set nothing. */
function loraWithoutTargets(statements: readonly Statement[], fail: Fail): void {
  for (const s of statements) {
    if (!s.kind.startsWith('lora ')) continue;
    fail(
      s.pos,
      `"${s.kind}" sets LoRA, but no LoRA trains: beside "train base", LoRA trains only the layers a "lora targets" line names`,
      'add a "lora targets" line, or drop this line',
    );
  }
}

function loraInit(init: Of<'lora init'> | undefined, rank: number): LoraInit {
  const std = { value: 1 / rank };
  if (init === undefined) return { kind: 'gaussian', std };
  if (init.init.kind === 'file') return { kind: 'file', path: init.init.path, pos: init.pos };
  return { kind: 'gaussian', std: init.init.std ?? std, pos: init.pos };
}

function options(list: readonly Option[] | undefined): Map<string, readonly Num[]> {
  // Duplicates were reported by the statement builder; the first occurrence wins.
  const out = new Map<string, readonly Num[]>();
  for (const o of list ?? []) if (!out.has(o.name)) out.set(o.name, o.values);
  return out;
}

function emitList(
  emit: Of<'emit'> | undefined,
  hollow: Hollow,
  optimizer: Valued<OptimizerKind>,
  fail: Fail,
): Valued<readonly EmitArtifact[]> {
  if (emit === undefined) {
    // Without a hollow activation there is nothing to precompute; 8-bit moments live on the host only.
    const value = EMIT_ARTIFACTS.filter(
      (a) => !(a === 'precompute' && hollow.kind === 'none') && !(a === 'train' && optimizer.value === 'adamw8bit'),
    );
    return { value };
  }
  const train = emit.artifacts.find((a) => a.value === 'train');
  if (train !== undefined && optimizer.value === 'adamw8bit') {
    fail(
      train.pos,
      'cannot emit "train" with "optimizer adamw8bit": train.onnx updates float32 moments in the graph; 8-bit moments are kept by the host optimizer, after grads.onnx',
      'drop "train" from emit (hollowc train runs grads.onnx), or use "optimizer adamw"',
    );
  }
  const asked = new Set(emit.artifacts.map((a) => a.value));
  const pre = emit.artifacts.find((a) => a.value === 'precompute');
  if (pre !== undefined && hollow.kind === 'none') {
    fail(
      pre.pos,
      'cannot emit "precompute" with "hollow none": nothing is hollowed, so there is no hollow activation to precompute',
      'drop "precompute" from emit, or hollow some blocks',
    );
  }
  return { value: EMIT_ARTIFACTS.filter((a) => asked.has(a)), pos: emit.pos };
}

function checkPresetFamily(hollow: Hollow, family: FamilyName, fail: Fail): void {
  if (hollow.kind !== 'preset') return;
  const valid = presetsFor(family);
  if (valid.includes(hollow.preset.value)) return;
  // Unknown names were already reported by the statement builder.
  if (!presetsFor('sd15').includes(hollow.preset.value) && !presetsFor('sdxl').includes(hollow.preset.value)) return;
  fail(hollow.preset.pos, `preset "${hollow.preset.value}" is not for ${family} models`, `${family} presets: ${presetListText(valid)}`);
}
