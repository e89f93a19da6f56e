/**
 * The `.hollow` spec language: the typed AST (cst-to-ast.ts builds it from the parser's CST).
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
 *   lora infer fp32 | fp16                                 [fp32] how infer.onnx takes the LoRA
 *                                                          tensors (training keeps them fp32)
 *   train base "<glob>" ...                                repeatable [none] the base weights of the
 *                                                          matching modules train too ("*": full
 *                                                          fine-tuning); with it, LoRA trains only
 *                                                          where a `lora targets` line asks
 *   loss mse [epsilon | v_prediction]                      [mse, prediction from the family]
 *   loss prior_weight <num >= 0>                           [1.0] weight of prior-preservation samples
 *   optimizer adamw [lr x] [betas b1 b2] [eps e] [weight_decay w]
 *                                                          [1e-4, 0.9 0.999, 1e-8, 0.01] any order
 *   optimizer adamw8bit [...]                              the same with 8-bit moments (blockwise,
 *                                                          host optimizer only: no train.onnx)
 *   emit precompute train grads infer                      artifacts to write [all four; without
 *                                                          precompute under `hollow none`]
 *   seed <int >= 0>                                        [0] LoRA init and noise sampling
 *   train [steps n] [batch n] [checkpoint_every n]         [1000, 1, = steps] any order
 *   base fp32 | int8 | fp16                                [fp32] how the training graphs hold the
 *                                                          frozen base weights: int8 = per-channel
 *                                                          symmetric, dequantized at each use;
 *                                                          fp16 = rounded, cast at each use
 *   recompute cheap | blocks                               [cheap] what the training graphs'
 *                                                          backward recomputes: blocks = every
 *                                                          transformer block, from its input
 *   gradients fp32 | fp16                                  [fp32] how grads.onnx hands the gradients
 *                                                          to the host optimizer: fp16 = each tensor
 *                                                          scaled by its largest magnitude into
 *                                                          float16 (halves the step's end)
 *   chunks [attention s] [feed_forward s] [conv_gradient s] [infer_attention s]
 *                                                          sizes such as 4MiB: the largest block
 *                                                          of each memory rewrite [the passes']
 *
 * Every statement and value keeps its source position (`pos`), absent when it was filled by
 * default, so later passes can point errors at the line that asked for something
 * (diagnostics.ts `specErrorAt`).
 */
import { Located, SourcePos, SourceText } from './diagnostics';
import {
  BasePrecision,
  ChunkKind,
  EmitArtifact,
  GradientPrecision,
  InferLoraPrecision,
  ModelChoice,
  OptimizerKind,
  Prediction,
  RecomputeMode,
} from './presets';

export type { SourcePos, Located } from './diagnostics';
export type {
  BasePrecision,
  ChunkKind,
  ChunkSizes,
  FamilyName,
  GradientPrecision,
  InferLoraPrecision,
  ModelChoice,
  OptimizerKind,
  Prediction,
  EmitArtifact,
  RecomputeMode,
} from './presets';

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
    readonly infer: Valued<InferLoraPrecision>;
  };
  /** `train base` globs, in the order written; empty without a `train base` line. */
  readonly trainBase: readonly Valued<string>[];
  readonly loss: {
    readonly kind: 'mse';
    /** undefined: the family's default (FAMILIES[family].predictionType). */
    readonly prediction: Valued<Prediction | undefined>;
    readonly priorWeight: Num;
  };
  readonly optimizer: {
    readonly kind: OptimizerKind;
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
  readonly base: Valued<BasePrecision>;
  readonly recompute: Valued<RecomputeMode>;
  readonly gradients: Valued<GradientPrecision>;
  /** The `chunks` line's sizes in bytes; a size not given is left to the passes. */
  readonly chunks: Readonly<Partial<Record<ChunkKind, Num>>>;
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
  | { readonly kind: 'lora infer'; readonly pos: SourcePos; readonly precision: Valued<InferLoraPrecision> }
  | { readonly kind: 'loss mse'; readonly pos: SourcePos; readonly prediction?: Valued<Prediction> }
  | { readonly kind: 'loss prior_weight'; readonly pos: SourcePos; readonly priorWeight: Num }
  | { readonly kind: 'optimizer'; readonly pos: SourcePos; readonly optimizer: Valued<OptimizerKind>; readonly options: readonly Option[] }
  | { readonly kind: 'emit'; readonly pos: SourcePos; readonly artifacts: readonly Valued<EmitArtifact>[] }
  | { readonly kind: 'seed'; readonly pos: SourcePos; readonly seed: Num }
  | { readonly kind: 'train'; readonly pos: SourcePos; readonly options: readonly Option[] }
  | { readonly kind: 'train base'; readonly pos: SourcePos; readonly globs: readonly Valued<string>[] }
  | { readonly kind: 'base'; readonly pos: SourcePos; readonly precision: Valued<BasePrecision> }
  | { readonly kind: 'recompute'; readonly pos: SourcePos; readonly mode: Valued<RecomputeMode> }
  | { readonly kind: 'gradients'; readonly pos: SourcePos; readonly precision: Valued<GradientPrecision> }
  | { readonly kind: 'chunks'; readonly pos: SourcePos; readonly options: readonly Option[] };

/** `lora init` as written: the gaussian std may be left to the default 1/rank. */
export type LoraInitStmt = { readonly kind: 'gaussian'; readonly std?: Num } | { readonly kind: 'file'; readonly path: Valued<string> };

/** A `name value...` clause of `optimizer` or `train`. */
export interface Option {
  readonly name: string;
  readonly pos: SourcePos;
  readonly values: readonly Num[];
}
