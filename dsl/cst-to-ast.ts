/**
 * CST -> AST: turns one statement's CST (parser.ts) into a typed Statement (ast.ts), checking
 * the values that need no other statement.
 */
import { CstChildrenDictionary, CstNode, IToken } from 'chevrotain';
import {
  BasePrecision,
  BlockItem,
  Hollow,
  GradientPrecision,
  InferLoraPrecision,
  LoraInitStmt,
  Num,
  OptimizerKind,
  Option,
  RecomputeMode,
  Statement,
  Valued,
} from './ast';
import { SourcePos, SourceText, SpecError, specErrorAt } from './diagnostics';
import { globProblem } from './glob';
import { parser } from './parser';
import { ALL_PRESETS, EmitArtifact, ModelChoice, Prediction, SD_PRESETS, presetListText } from './presets';
import { didYouMean } from './suggest';

export function posOf(tok: IToken): SourcePos {
  return { line: tok.startLine ?? 0, col: tok.startColumn ?? 0, length: tok.image.length };
}

/** From the start of `a` to the end of `b` (same line). */
export function spanOf(a: IToken, b: IToken): SourcePos {
  return { line: a.startLine ?? 0, col: a.startColumn ?? 0, length: (b.endOffset ?? 0) - a.startOffset + 1 };
}

function tokens(ctx: CstChildrenDictionary, name: string): IToken[] {
  return (ctx[name] ?? []) as IToken[];
}
function tokenOf(ctx: CstChildrenDictionary, name: string): IToken {
  const t = tokens(ctx, name)[0];
  if (t === undefined) throw new Error(`internal: CST has no ${name}`);
  return t;
}
function nodes(ctx: CstChildrenDictionary, name: string): CstNode[] {
  return (ctx[name] ?? []) as CstNode[];
}
/** All tokens under a CST node, in source order. */
function allTokensOf(node: CstNode): IToken[] {
  const out: IToken[] = [];
  for (const list of Object.values(node.children)) {
    for (const el of list) {
      if ('image' in el) out.push(el);
      else out.push(...allTokensOf(el));
    }
  }
  return out.sort((a, b) => a.startOffset - b.startOffset);
}

export function unquote(image: string): string {
  return image.slice(1, -1).replace(/\\(.)/g, '$1');
}

const BaseVisitor = parser.getBaseCstVisitorConstructor();

/**
 * Turns one statement's CST into a Statement, checking values that need no other statement
 * (rank a positive integer, betas in [0, 1), known preset name, ...). Problems are collected into
 * `errors` and the statement is still returned, so one bad value does not hide other errors.
 */
export class StatementBuilder extends BaseVisitor {
  readonly errors: SpecError[] = [];

  constructor(private readonly source: SourceText) {
    super();
    this.validateVisitor();
  }

  build(cst: CstNode): Statement {
    return this.visit(cst) as Statement;
  }

  private fail(at: SourcePos, message: string, suggestion?: string): void {
    this.errors.push(specErrorAt(this.source, at, message, suggestion));
  }

  // --- value helpers -------------------------------------------------------------------------

  private num(tok: IToken): Num {
    return { value: Number(tok.image), pos: posOf(tok) };
  }
  private positive(tok: IToken, what: string): Num {
    const n = this.num(tok);
    if (!(n.value > 0)) this.fail(n.pos!, `${what} must be > 0, not ${tok.image}`);
    return n;
  }
  private nonNegative(tok: IToken, what: string): Num {
    const n = this.num(tok);
    if (!(n.value >= 0)) this.fail(n.pos!, `${what} must be >= 0, not ${tok.image}`);
    return n;
  }
  private positiveInt(tok: IToken, what: string): Num {
    const n = this.num(tok);
    if (!(Number.isSafeInteger(n.value) && n.value > 0)) {
      this.fail(n.pos!, `${what} must be a positive integer, not ${tok.image}`);
    }
    return n;
  }
  /** `4MiB` -> bytes, within what a block can sensibly be: below, a rewrite would make millions of nodes. */
  private size(tok: IToken, what: string): Num {
    const [, n, unit] = /^([\d.]+)(KiB|MiB|GiB)$/.exec(tok.image)!;
    const value = Math.round(Number(n) * 2 ** { KiB: 10, MiB: 20, GiB: 30 }[unit as 'KiB' | 'MiB' | 'GiB']);
    if (!(value >= MIN_CHUNK_BYTES && value <= MAX_CHUNK_BYTES))
      this.fail(posOf(tok), `${what} must be between 64KiB and 4GiB, not ${tok.image}`);
    return { value, pos: posOf(tok) };
  }
  private str(tok: IToken, what: string): Valued<string> {
    const v = { value: unquote(tok.image), pos: posOf(tok) };
    if (v.value === '') this.fail(v.pos, `${what} must not be empty`);
    return v;
  }

  // --- rules ---------------------------------------------------------------------------------

  statement(ctx: CstChildrenDictionary): Statement {
    const child = Object.values(ctx)[0]![0] as CstNode;
    return this.visit(child) as Statement;
  }

  modelStmt(ctx: CstChildrenDictionary): Statement {
    const head = tokenOf(ctx, 'Kw_model');
    const value = (['Kw_sd15', 'Kw_sd21', 'Kw_sdxl', 'Kw_auto'] as const).map((k) => tokens(ctx, k)[0]).find(Boolean)!;
    return { kind: 'model', pos: posOf(head), family: { value: value.image as ModelChoice, pos: posOf(value) } };
  }

  hollowStmt(ctx: CstChildrenDictionary): Statement {
    const head = tokenOf(ctx, 'Kw_hollow');
    const sub = ['Kw_preset', 'Kw_blocks', 'Kw_after', 'Kw_none'].map((k) => tokens(ctx, k)[0]).find(Boolean)!;
    const pos = spanOf(head, sub);
    let hollow: Hollow;
    switch (sub.image) {
      case 'preset':
        hollow = { kind: 'preset', pos, preset: this.preset(tokenOf(ctx, 'PresetValue')) };
        break;
      case 'blocks': {
        const items = nodes(ctx, 'blockItem').map((n) => this.visit(n) as BlockItem);
        const all = nodes(ctx, 'blockItem').flatMap(allTokensOf);
        this.checkDuplicateBlocks(items);
        hollow = { kind: 'blocks', pos, items, listPos: spanOf(all[0]!, all[all.length - 1]!) };
        break;
      }
      case 'after': {
        const ref = tokenOf(ctx, 'LayerRef');
        const refKind = ref.tokenType.name === 'BlockId' ? 'id' : 'path';
        if (refKind === 'id') this.blockId(ref);
        hollow = { kind: 'after', pos, ref: { value: ref.image, pos: posOf(ref) }, refKind };
        break;
      }
      default:
        hollow = { kind: 'none', pos };
    }
    return { kind: 'hollow', pos, hollow };
  }

  /** Accepts "39.2%", 39.2% and sdxl-mid alike; rejects names that are no preset at all. */
  private preset(tok: IToken): Valued<string> {
    const name = tok.image.startsWith('"') ? unquote(tok.image) : tok.image;
    const v = { value: name, pos: posOf(tok) };
    if (!ALL_PRESETS.includes(name)) {
      this.fail(
        v.pos,
        `unknown preset "${name}"; the presets are ${presetListText(SD_PRESETS)} (SD 1.x/2.x) and "sdxl-mid" (SDXL)`,
        nearestPreset(name),
      );
    }
    return v;
  }

  blockItem(ctx: CstChildrenDictionary): BlockItem {
    const [a, b] = tokens(ctx, 'BlockId');
    const from = this.blockId(a!);
    if (b === undefined) return { kind: 'id', id: from };
    const to = this.blockId(b);
    const pos = spanOf(a!, b);
    if (compareBlockIds(to.value, from.value) < 0) {
      this.fail(pos, `block range ${from.value} .. ${to.value} ends before it starts`, `write ${to.value} .. ${from.value}`);
    }
    return { kind: 'range', from, to, pos };
  }

  private blockId(tok: IToken): Valued<string> {
    const v = { value: tok.image, pos: posOf(tok) };
    const [b, j] = tok.image.split('-').map(Number);
    if (b === 0 || j === 0) this.fail(v.pos, `block ids count from 1, as in 1-1; "${tok.image}" does not exist`);
    return v;
  }

  private checkDuplicateBlocks(items: readonly BlockItem[]): void {
    const seen = new Set<string>();
    for (const item of items) {
      if (item.kind !== 'id') continue;
      if (seen.has(item.id.value)) this.fail(item.id.pos!, `block ${item.id.value} is listed twice`);
      seen.add(item.id.value);
    }
  }

  shapeStmt(ctx: CstChildrenDictionary): Statement {
    const head = tokenOf(ctx, 'Kw_shape');
    const nameTok = tokens(ctx, 'Name')[0] ?? tokenOf(ctx, 'StringLit');
    const input = nameTok.image.startsWith('"') ? this.str(nameTok, 'an input name') : { value: nameTok.image, pos: posOf(nameTok) };
    const dims = tokens(ctx, 'NumberLit').map((t) => this.positiveInt(t, `dimension ${t.image} of "${input.value}"`));
    const dimsPos = spanOf(tokenOf(ctx, 'LBracket'), tokenOf(ctx, 'RBracket'));
    return { kind: 'shape', pos: posOf(head), shape: { pos: posOf(head), input, dims, dimsPos } };
  }

  loraStmt(ctx: CstChildrenDictionary): Statement {
    const head = tokenOf(ctx, 'Kw_lora');
    const clause = Object.entries(ctx).find(([k]) => k !== 'Kw_lora')![1][0] as CstNode;
    const sub = allTokensOf(clause)[0]!;
    const pos = spanOf(head, sub);
    const c = clause.children;
    switch (clause.name) {
      case 'loraRank': {
        const rank = this.positiveInt(tokenOf(c, 'NumberLit'), 'lora rank');
        const alphaNode = nodes(c, 'loraAlpha')[0];
        const alpha = alphaNode === undefined ? undefined : this.alpha(alphaNode.children);
        return alpha === undefined ? { kind: 'lora rank', pos, rank } : { kind: 'lora rank', pos, rank, alpha };
      }
      case 'loraAlpha':
        return { kind: 'lora alpha', pos, alpha: this.alpha(c) };
      case 'loraTargets':
        return { kind: 'lora targets', pos, globs: tokens(c, 'StringLit').map((t) => this.glob(t, 'lora targets')) };
      case 'loraInfer': {
        const value = (c.Kw_fp32 ?? c.Kw_fp16)![0] as IToken;
        return { kind: 'lora infer', pos, precision: { value: value.image as InferLoraPrecision, pos: posOf(value) } };
      }
      default:
        return { kind: 'lora init', pos, init: this.init(c) };
    }
  }

  private alpha(c: CstChildrenDictionary): Num {
    return this.positive(tokenOf(c, 'NumberLit'), 'lora alpha');
  }

  private glob(tok: IToken, statement: 'lora targets' | 'train base'): Valued<string> {
    const v = { value: unquote(tok.image), pos: posOf(tok) };
    const problem = globProblem(v.value);
    const what = statement === 'lora targets' ? 'target glob' : 'train base glob';
    if (problem !== undefined) this.fail(v.pos, `invalid ${what} "${v.value}": ${problem}`);
    return v;
  }

  private init(c: CstChildrenDictionary): LoraInitStmt {
    const file = tokens(c, 'StringLit')[0];
    if (file !== undefined) return { kind: 'file', path: this.str(file, 'the LoRA init file name') };
    const std = tokens(c, 'NumberLit')[0];
    if (std === undefined) return { kind: 'gaussian' };
    return { kind: 'gaussian', std: this.positive(std, 'the gaussian init std') };
  }

  // These sub-rules are visited through their parents' CST children directly; chevrotain's
  // validateVisitor still wants a method for every rule.
  loraRank(): void {}
  loraAlpha(): void {}
  loraTargets(): void {}
  loraInit(): void {}
  loraInfer(): void {}
  optimizerOption(): void {}
  trainOption(): void {}
  chunkOption(): void {}

  lossStmt(ctx: CstChildrenDictionary): Statement {
    const head = tokenOf(ctx, 'Kw_loss');
    const mse = tokens(ctx, 'Kw_mse')[0];
    if (mse !== undefined) {
      const p = tokens(ctx, 'Kw_epsilon')[0] ?? tokens(ctx, 'Kw_v_prediction')[0];
      const pos = spanOf(head, mse);
      if (p === undefined) return { kind: 'loss mse', pos };
      return { kind: 'loss mse', pos, prediction: { value: p.image as Prediction, pos: posOf(p) } };
    }
    const pw = tokenOf(ctx, 'Kw_prior_weight');
    return {
      kind: 'loss prior_weight',
      pos: spanOf(head, pw),
      priorWeight: this.nonNegative(tokenOf(ctx, 'NumberLit'), 'loss prior_weight'),
    };
  }

  optimizerStmt(ctx: CstChildrenDictionary): Statement {
    const kind = (ctx.Kw_adamw ?? ctx.Kw_adamw8bit)![0] as IToken;
    const pos = spanOf(tokenOf(ctx, 'Kw_optimizer'), kind);
    const options = nodes(ctx, 'optimizerOption').map((n) => {
      const [name, ...values] = allTokensOf(n);
      const what = `adamw ${name!.image}`;
      const nums =
        name!.image === 'betas'
          ? values.map((t, i) => this.beta(t, i))
          : name!.image === 'weight_decay'
            ? values.map((t) => this.nonNegative(t, what))
            : values.map((t) => this.positive(t, what));
      return { name: name!.image, pos: posOf(name!), values: nums };
    });
    this.checkDuplicateOptions(options);
    return { kind: 'optimizer', pos, optimizer: { value: kind.image as OptimizerKind, pos: posOf(kind) }, options };
  }

  private beta(tok: IToken, i: number): Num {
    const n = this.num(tok);
    if (!(n.value >= 0 && n.value < 1)) this.fail(n.pos!, `adamw beta${i + 1} must be in [0, 1), not ${tok.image}`);
    return n;
  }

  private checkDuplicateOptions(options: readonly Option[]): void {
    const first = new Map<string, Option>();
    for (const o of options) {
      const prev = first.get(o.name);
      if (prev !== undefined) this.fail(o.pos, `duplicate "${o.name}"; the first is on line ${prev.pos.line}`);
      else first.set(o.name, o);
    }
  }

  emitStmt(ctx: CstChildrenDictionary): Statement {
    const head = tokenOf(ctx, 'Kw_emit');
    const toks = Object.entries(ctx)
      .filter(([k]) => k !== 'Kw_emit')
      .flatMap(([, v]) => v as IToken[])
      .sort((a, b) => a.startOffset - b.startOffset);
    const seen = new Set<string>();
    const artifacts: Valued<EmitArtifact>[] = [];
    for (const t of toks) {
      if (seen.has(t.image)) this.fail(posOf(t), `"${t.image}" is listed twice`);
      seen.add(t.image);
      artifacts.push({ value: t.image as EmitArtifact, pos: posOf(t) });
    }
    return { kind: 'emit', pos: posOf(head), artifacts };
  }

  baseStmt(ctx: CstChildrenDictionary): Statement {
    const value = (ctx.Kw_fp32 ?? ctx.Kw_int8 ?? ctx.Kw_fp16)![0] as IToken;
    return { kind: 'base', pos: posOf(tokenOf(ctx, 'Kw_base')), precision: { value: value.image as BasePrecision, pos: posOf(value) } };
  }

  gradientsStmt(ctx: CstChildrenDictionary): Statement {
    const value = (ctx.Kw_fp32 ?? ctx.Kw_fp16)![0] as IToken;
    return {
      kind: 'gradients',
      pos: posOf(tokenOf(ctx, 'Kw_gradients')),
      precision: { value: value.image as GradientPrecision, pos: posOf(value) },
    };
  }

  chunksStmt(ctx: CstChildrenDictionary): Statement {
    const options = nodes(ctx, 'chunkOption').map((n) => {
      const [name, size] = allTokensOf(n);
      return { name: name!.image, pos: posOf(name!), values: [this.size(size!, `chunks ${name!.image}`)] };
    });
    this.checkDuplicateOptions(options);
    return { kind: 'chunks', pos: posOf(tokenOf(ctx, 'Kw_chunks')), options };
  }

  recomputeStmt(ctx: CstChildrenDictionary): Statement {
    const value = (ctx.Kw_cheap ?? ctx.Kw_blocks)![0] as IToken;
    return {
      kind: 'recompute',
      pos: posOf(tokenOf(ctx, 'Kw_recompute')),
      mode: { value: value.image as RecomputeMode, pos: posOf(value) },
    };
  }

  seedStmt(ctx: CstChildrenDictionary): Statement {
    const tok = tokenOf(ctx, 'NumberLit');
    const seed = this.num(tok);
    if (!(Number.isSafeInteger(seed.value) && seed.value >= 0)) {
      this.fail(seed.pos!, `seed must be an integer >= 0, not ${tok.image}`);
    }
    return { kind: 'seed', pos: posOf(tokenOf(ctx, 'Kw_seed')), seed };
  }

  trainStmt(ctx: CstChildrenDictionary): Statement {
    const base = tokens(ctx, 'Kw_base')[0];
    if (base !== undefined) {
      const globs = tokens(ctx, 'StringLit').map((t) => this.glob(t, 'train base'));
      return { kind: 'train base', pos: spanOf(tokenOf(ctx, 'Kw_train'), base), globs };
    }
    const options = nodes(ctx, 'trainOption').map((n) => {
      const [name, value] = allTokensOf(n);
      return { name: name!.image, pos: posOf(name!), values: [this.positiveInt(value!, `train ${name!.image}`)] };
    });
    this.checkDuplicateOptions(options);
    return { kind: 'train', pos: posOf(tokenOf(ctx, 'Kw_train')), options };
  }
}

const MIN_CHUNK_BYTES = 64 * 2 ** 10;
const MAX_CHUNK_BYTES = 4 * 2 ** 30;

/** Orders paper ids `b-j` by block, then layer. */
export function compareBlockIds(a: string, b: string): number {
  const [ab, aj] = a.split('-').map(Number) as [number, number];
  const [bb, bj] = b.split('-').map(Number) as [number, number];
  return ab - bb || aj - bj;
}

function nearestPreset(name: string): string | undefined {
  const pct = /^(\d+(?:\.\d+)?)%?$/.exec(name);
  if (pct !== null) {
    // A percentage: the numerically nearest preset is what the user meant, not the textually nearest.
    const x = Number(pct[1]);
    const best = [...SD_PRESETS].sort((a, b) => Math.abs(parseFloat(a) - x) - Math.abs(parseFloat(b) - x))[0];
    return `the nearest preset is "${best}"`;
  }
  const best = didYouMean(name, ALL_PRESETS);
  return best === undefined ? undefined : `did you mean "${best}"?`;
}
