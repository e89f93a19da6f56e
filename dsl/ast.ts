/**
 * The `.hollow` spec language: typed AST and the CST-to-AST visitor.
 *
 * One statement per line; `#` starts a comment; statements may come in any order. Each statement
 * may appear once, except `shape` and `lora targets`, which accumulate. `hollow` is required;
 * everything else has a default (in brackets).
 *
 *   model sd15 | sd21 | sdxl | auto                       [auto] checked against the graph
 *   hollow preset "39.2%"                                  paper presets "11.5%" "20.8%" "30.1%"
 *                                                          "39.2%" "56.6%" "73.3%" "84.3%";
 *                                                          SDXL "sdxl-mid" (quotes optional)
 *   hollow blocks 3-3 .. 6-4                               paper ids: ranges and/or ids,
 *   hollow blocks 5-1, 5-2                                 comma-separated, in any mix
 *   hollow after down_blocks.2.attentions.1                the last kept down layer, by module path
 *   hollow after 3-2                                       (a path covering several layers means
 *                                                          the last of them) or paper id
 *   hollow none                                            no hollowing: plain LoRA on the whole UNet
 *   shape <input> [d0, d1, ...]                            static training shape of a UNet input;
 *                                                          repeatable, one per input; [] = scalar;
 *                                                          the input may be a "quoted name"
 *   lora rank <int> [alpha <num>]                          [rank 16, alpha = rank]
 *   lora alpha <num>
 *   lora targets "<glob>" ...                              repeatable [attn1/attn2 to_q, to_k, to_v,
 *                                                          to_out.0]; globs: see glob.ts
 *   lora init gaussian [<std>]                             A ~ N(0, std), B = 0  [std = 1/rank]
 *   lora init from "<file.safetensors>"                    start from saved LoRA weights
 *   loss mse [epsilon | v_prediction]                      [mse, prediction from the family]
 *   loss prior_weight <num >= 0>                           [1.0] weight of prior-preservation samples
 *   optimizer adamw [lr x] [betas b1 b2] [eps e] [weight_decay w]
 *                                                          [1e-4, 0.9 0.999, 1e-8, 0.01] any order
 *   emit precompute train grads infer                      artifacts to write [all four; without
 *                                                          precompute under `hollow none`]
 *   seed <int >= 0>                                        [0] LoRA init and noise sampling
 *   train [steps n] [batch n] [checkpoint_every n]         [1000, 1, = steps] any order
 *
 * Every statement and value keeps its source position (`pos`), absent when it was filled by
 * default, so later passes can point errors at the line that asked for something
 * (diagnostics.ts `specErrorAt`).
 */
import { CstChildrenDictionary, CstNode, IToken } from 'chevrotain';
import { Located, SourcePos, SourceText, SpecError, specErrorAt } from './diagnostics';
import { parser } from './parser';
import { ALL_PRESETS, EmitArtifact, ModelChoice, Prediction, SD_PRESETS, presetListText } from './presets';
import { didYouMean } from './suggest';
import { globProblem } from './glob';

export type { SourcePos, Located } from './diagnostics';
export type { FamilyName, ModelChoice, Prediction, EmitArtifact } from './presets';

/** A value with the position of the token(s) it was written as. */
export interface Valued<T> extends Located {
  readonly value: T;
}
export type Num = Valued<number>;

export type BlockItem =
  | { readonly kind: 'id'; readonly id: Valued<string> }
  | { readonly kind: 'range'; readonly from: Valued<string>; readonly to: Valued<string>; readonly pos: SourcePos };

/** `pos` of a hollow variant spans its head words (`hollow preset`); the value has its own. */
export type Hollow =
  | { readonly kind: 'preset'; readonly pos: SourcePos; readonly preset: Valued<string> }
  | {
      readonly kind: 'blocks';
      readonly pos: SourcePos;
      readonly items: readonly BlockItem[];
      /** The whole list, for errors about the set as a whole. */
      readonly listPos: SourcePos;
    }
  | { readonly kind: 'after'; readonly pos: SourcePos; readonly ref: Valued<string>; readonly refKind: 'id' | 'path' }
  | { readonly kind: 'none'; readonly pos: SourcePos };

export interface ShapeDecl {
  readonly pos: SourcePos;
  readonly input: Valued<string>;
  readonly dims: readonly Num[];
  /** From "[" to "]". */
  readonly dimsPos: SourcePos;
}

export type LoraInit =
  | { readonly kind: 'gaussian'; readonly std: Num; readonly pos?: SourcePos }
  | { readonly kind: 'file'; readonly path: Valued<string>; readonly pos: SourcePos };

export interface Spec extends SourceText {
  readonly model: Valued<ModelChoice>;
  readonly hollow: Hollow;
  readonly shapes: readonly ShapeDecl[];
  readonly lora: {
    readonly rank: Num;
    readonly alpha: Num;
    /** In the order written; the defaults (no pos) when no `lora targets` line is given. */
    readonly targets: readonly Valued<string>[];
    readonly init: LoraInit;
  };
  readonly loss: {
    readonly kind: 'mse';
    /** undefined: the family's default (FAMILIES[family].predictionType). */
    readonly prediction: Valued<Prediction | undefined>;
    readonly priorWeight: Num;
  };
  readonly optimizer: {
    readonly kind: 'adamw';
    readonly pos?: SourcePos;
    readonly lr: Num;
    readonly betas: readonly [Num, Num];
    readonly eps: Num;
    readonly weightDecay: Num;
  };
  /** Canonical order (precompute, train, grads, infer), whatever order they were written in. */
  readonly emit: Valued<readonly EmitArtifact[]>;
  readonly seed: Num;
  readonly train: { readonly steps: Num; readonly batch: Num; readonly checkpointEvery: Num };
}

/** One parsed line, before statements are merged and defaults filled (assemble.ts). `pos` spans
 * the head words that name the statement, which is what a duplicate error underlines. */
export type Statement =
  | { readonly kind: 'model'; readonly pos: SourcePos; readonly family: Valued<ModelChoice> }
  | { readonly kind: 'hollow'; readonly pos: SourcePos; readonly hollow: Hollow }
  | { readonly kind: 'shape'; readonly pos: SourcePos; readonly shape: ShapeDecl }
  | { readonly kind: 'lora rank'; readonly pos: SourcePos; readonly rank: Num; readonly alpha?: Num }
  | { readonly kind: 'lora alpha'; readonly pos: SourcePos; readonly alpha: Num }
  | { readonly kind: 'lora targets'; readonly pos: SourcePos; readonly globs: readonly Valued<string>[] }
  | { readonly kind: 'lora init'; readonly pos: SourcePos; readonly init: LoraInitStmt }
  | { readonly kind: 'loss mse'; readonly pos: SourcePos; readonly prediction?: Valued<Prediction> }
  | { readonly kind: 'loss prior_weight'; readonly pos: SourcePos; readonly priorWeight: Num }
  | { readonly kind: 'optimizer'; readonly pos: SourcePos; readonly options: readonly Option[] }
  | { readonly kind: 'emit'; readonly pos: SourcePos; readonly artifacts: readonly Valued<EmitArtifact>[] }
  | { readonly kind: 'seed'; readonly pos: SourcePos; readonly seed: Num }
  | { readonly kind: 'train'; readonly pos: SourcePos; readonly options: readonly Option[] };

/** `lora init` as written: the gaussian std may be left to the default 1/rank. */
export type LoraInitStmt =
  | { readonly kind: 'gaussian'; readonly std?: Num }
  | { readonly kind: 'file'; readonly path: Valued<string> };

/** A `name value...` clause of `optimizer` or `train`. */
export interface Option {
  readonly name: string;
  readonly pos: SourcePos;
  readonly values: readonly Num[];
}

// ---------------------------------------------------------------------------------------------
// CST -> Statement

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
    const input = nameTok.image.startsWith('"')
      ? this.str(nameTok, 'an input name')
      : { value: nameTok.image, pos: posOf(nameTok) };
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
        return { kind: 'lora targets', pos, globs: tokens(c, 'StringLit').map((t) => this.glob(t)) };
      default:
        return { kind: 'lora init', pos, init: this.init(c) };
    }
  }

  private alpha(c: CstChildrenDictionary): Num {
    return this.positive(tokenOf(c, 'NumberLit'), 'lora alpha');
  }

  private glob(tok: IToken): Valued<string> {
    const v = { value: unquote(tok.image), pos: posOf(tok) };
    const problem = globProblem(v.value);
    if (problem !== undefined) this.fail(v.pos, `invalid target glob "${v.value}": ${problem}`);
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
  optimizerOption(): void {}
  trainOption(): void {}

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
    const pos = spanOf(tokenOf(ctx, 'Kw_optimizer'), tokenOf(ctx, 'Kw_adamw'));
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
    return { kind: 'optimizer', pos, options };
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

  seedStmt(ctx: CstChildrenDictionary): Statement {
    const tok = tokenOf(ctx, 'NumberLit');
    const seed = this.num(tok);
    if (!(Number.isSafeInteger(seed.value) && seed.value >= 0)) {
      this.fail(seed.pos!, `seed must be an integer >= 0, not ${tok.image}`);
    }
    return { kind: 'seed', pos: posOf(tokenOf(ctx, 'Kw_seed')), seed };
  }

  trainStmt(ctx: CstChildrenDictionary): Statement {
    const options = nodes(ctx, 'trainOption').map((n) => {
      const [name, value] = allTokensOf(n);
      return { name: name!.image, pos: posOf(name!), values: [this.positiveInt(value!, `train ${name!.image}`)] };
    });
    this.checkDuplicateOptions(options);
    return { kind: 'train', pos: posOf(tokenOf(ctx, 'Kw_train')), options };
  }
}

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
