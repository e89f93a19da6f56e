// CST parser of one `.hollow` statement.
//
// The language is line-oriented, so index.ts lexes the whole file, splits the tokens at newlines
// and runs the `statement` rule once per line. That gives error recovery for free and
// predictably: a broken line costs exactly one diagnostic and the next line parses normally,
// which chevrotain's own re-sync recovery does not guarantee.
//
// Each optional clause (`lora rank`, `lr 1e-4`, ...) is its own rule so that its tokens land in
// their own CST node; otherwise repeated clauses would mix their numbers in one child list.
import { CstNode, CstParser, IRecognitionException, IToken } from 'chevrotain';
import * as T from './lexer';

class HollowParser extends CstParser {
  constructor() {
    super(T.allTokens, { maxLookahead: 2 });
    this.performSelfAnalysis();
  }

  public statement = this.RULE('statement', () => {
    this.OR([
      { ALT: () => this.SUBRULE(this.modelStmt) },
      { ALT: () => this.SUBRULE(this.hollowStmt) },
      { ALT: () => this.SUBRULE(this.shapeStmt) },
      { ALT: () => this.SUBRULE(this.loraStmt) },
      { ALT: () => this.SUBRULE(this.lossStmt) },
      { ALT: () => this.SUBRULE(this.optimizerStmt) },
      { ALT: () => this.SUBRULE(this.emitStmt) },
      { ALT: () => this.SUBRULE(this.seedStmt) },
      { ALT: () => this.SUBRULE(this.trainStmt) },
      { ALT: () => this.SUBRULE(this.baseStmt) },
      { ALT: () => this.SUBRULE(this.recomputeStmt) },
      { ALT: () => this.SUBRULE(this.chunksStmt) },
      { ALT: () => this.SUBRULE(this.gradientsStmt) },
    ]);
  });

  // chunks [attention <size>] [feed_forward <size>] [conv_gradient <size>] [infer_attention <size>]
  private chunksStmt = this.RULE('chunksStmt', () => {
    this.CONSUME(T.Chunks);
    this.AT_LEAST_ONE(() => this.SUBRULE(this.chunkOption));
  });

  private chunkOption = this.RULE('chunkOption', () => {
    this.OR([
      { ALT: () => this.CONSUME(T.Attention) },
      { ALT: () => this.CONSUME(T.FeedForward) },
      { ALT: () => this.CONSUME(T.ConvGradient) },
      { ALT: () => this.CONSUME(T.InferAttention) },
    ]);
    this.CONSUME(T.SizeLit);
  });

  // recompute cheap | blocks
  private recomputeStmt = this.RULE('recomputeStmt', () => {
    this.CONSUME(T.Recompute);
    this.OR([{ ALT: () => this.CONSUME(T.Cheap) }, { ALT: () => this.CONSUME(T.Blocks) }]);
  });

  // gradients fp32 | fp16
  private gradientsStmt = this.RULE('gradientsStmt', () => {
    this.CONSUME(T.Gradients);
    this.OR([{ ALT: () => this.CONSUME(T.Fp32) }, { ALT: () => this.CONSUME(T.Fp16) }]);
  });

  // base fp32 | int8 | fp16
  private baseStmt = this.RULE('baseStmt', () => {
    this.CONSUME(T.Base);
    this.OR([{ ALT: () => this.CONSUME(T.Fp32) }, { ALT: () => this.CONSUME(T.Int8) }, { ALT: () => this.CONSUME(T.Fp16) }]);
  });

  // model sd15 | sd21 | sdxl | auto
  private modelStmt = this.RULE('modelStmt', () => {
    this.CONSUME(T.Model);
    this.OR([
      { ALT: () => this.CONSUME(T.Sd15) },
      { ALT: () => this.CONSUME(T.Sd21) },
      { ALT: () => this.CONSUME(T.Sdxl) },
      { ALT: () => this.CONSUME(T.Auto) },
    ]);
  });

  // hollow preset "39.2%" | hollow blocks 3-3 .. 6-4, 7-1 | hollow after <path|id> | hollow none
  private hollowStmt = this.RULE('hollowStmt', () => {
    this.CONSUME(T.Hollow);
    this.OR([
      {
        ALT: () => {
          this.CONSUME(T.Preset);
          this.CONSUME(T.PresetValue);
        },
      },
      {
        ALT: () => {
          this.CONSUME(T.Blocks);
          this.AT_LEAST_ONE_SEP({ SEP: T.Comma, DEF: () => this.SUBRULE(this.blockItem) });
        },
      },
      {
        ALT: () => {
          this.CONSUME(T.After);
          this.CONSUME(T.LayerRef);
        },
      },
      { ALT: () => this.CONSUME(T.None) },
    ]);
  });

  private blockItem = this.RULE('blockItem', () => {
    this.CONSUME(T.BlockId);
    this.OPTION(() => {
      this.CONSUME(T.DotDot);
      this.CONSUME2(T.BlockId);
    });
  });

  // shape <input> [d0, d1, ...]   ([] for a scalar input)
  private shapeStmt = this.RULE('shapeStmt', () => {
    this.CONSUME(T.Shape);
    this.OR([{ ALT: () => this.CONSUME(T.Name) }, { ALT: () => this.CONSUME(T.StringLit) }]);
    this.CONSUME(T.LBracket);
    this.MANY_SEP({ SEP: T.Comma, DEF: () => this.CONSUME(T.NumberLit) });
    this.CONSUME(T.RBracket);
  });

  private loraStmt = this.RULE('loraStmt', () => {
    this.CONSUME(T.Lora);
    this.OR([
      { ALT: () => this.SUBRULE(this.loraRank) },
      { ALT: () => this.SUBRULE(this.loraAlpha) },
      { ALT: () => this.SUBRULE(this.loraTargets) },
      { ALT: () => this.SUBRULE(this.loraInit) },
      { ALT: () => this.SUBRULE(this.loraInfer) },
    ]);
  });

  // infer fp32 | fp16
  private loraInfer = this.RULE('loraInfer', () => {
    this.CONSUME(T.Infer);
    this.OR([{ ALT: () => this.CONSUME(T.Fp32) }, { ALT: () => this.CONSUME(T.Fp16) }]);
  });

  // rank 128 [alpha 128]
  private loraRank = this.RULE('loraRank', () => {
    this.CONSUME(T.Rank);
    this.CONSUME(T.NumberLit);
    this.OPTION(() => this.SUBRULE(this.loraAlpha));
  });

  private loraAlpha = this.RULE('loraAlpha', () => {
    this.CONSUME(T.Alpha);
    this.CONSUME(T.NumberLit);
  });

  private loraTargets = this.RULE('loraTargets', () => {
    this.CONSUME(T.Targets);
    this.AT_LEAST_ONE(() => this.CONSUME(T.StringLit));
  });

  // init gaussian [std] | init from "file.safetensors"
  private loraInit = this.RULE('loraInit', () => {
    this.CONSUME(T.Init);
    this.OR([
      {
        ALT: () => {
          this.CONSUME(T.Gaussian);
          this.OPTION(() => this.CONSUME(T.NumberLit));
        },
      },
      {
        ALT: () => {
          this.CONSUME(T.From);
          this.CONSUME(T.StringLit);
        },
      },
    ]);
  });

  // loss mse [epsilon | v_prediction] | loss prior_weight 1.0
  private lossStmt = this.RULE('lossStmt', () => {
    this.CONSUME(T.Loss);
    this.OR([
      {
        ALT: () => {
          this.CONSUME(T.Mse);
          this.OPTION(() => this.OR2([{ ALT: () => this.CONSUME(T.Epsilon) }, { ALT: () => this.CONSUME(T.VPrediction) }]));
        },
      },
      {
        ALT: () => {
          this.CONSUME(T.PriorWeight);
          this.CONSUME(T.NumberLit);
        },
      },
    ]);
  });

  // optimizer adamw|adamw8bit [lr x] [betas b1 b2] [eps e] [weight_decay w]   (any order)
  private optimizerStmt = this.RULE('optimizerStmt', () => {
    this.CONSUME(T.Optimizer);
    this.OR([{ ALT: () => this.CONSUME(T.Adamw) }, { ALT: () => this.CONSUME(T.Adamw8bit) }]);
    this.MANY(() => this.SUBRULE(this.optimizerOption));
  });

  private optimizerOption = this.RULE('optimizerOption', () => {
    this.OR([
      { ALT: () => this.CONSUME(T.Lr) },
      { ALT: () => this.CONSUME(T.Eps) },
      { ALT: () => this.CONSUME(T.WeightDecay) },
      {
        ALT: () => {
          this.CONSUME(T.Betas);
          this.CONSUME(T.NumberLit);
        },
      },
    ]);
    this.CONSUME2(T.NumberLit);
  });

  // emit precompute train grads infer
  private emitStmt = this.RULE('emitStmt', () => {
    this.CONSUME(T.Emit);
    this.AT_LEAST_ONE(() =>
      this.OR([
        { ALT: () => this.CONSUME(T.Precompute) },
        { ALT: () => this.CONSUME(T.Train) },
        { ALT: () => this.CONSUME(T.Grads) },
        { ALT: () => this.CONSUME(T.Infer) },
      ]),
    );
  });

  private seedStmt = this.RULE('seedStmt', () => {
    this.CONSUME(T.Seed);
    this.CONSUME(T.NumberLit);
  });

  // train [steps n] [batch n] [checkpoint_every n]   (any order, at least one)
  // train base "<glob>" ...
  private trainStmt = this.RULE('trainStmt', () => {
    this.CONSUME(T.Train);
    this.OR([
      { ALT: () => this.AT_LEAST_ONE(() => this.SUBRULE(this.trainOption)) },
      {
        ALT: () => {
          this.CONSUME(T.Base);
          this.AT_LEAST_ONE2(() => this.CONSUME(T.StringLit));
        },
      },
    ]);
  });

  private trainOption = this.RULE('trainOption', () => {
    this.OR([{ ALT: () => this.CONSUME(T.Steps) }, { ALT: () => this.CONSUME(T.Batch) }, { ALT: () => this.CONSUME(T.CheckpointEvery) }]);
    this.CONSUME(T.NumberLit);
  });
}

// One instance: chevrotain's self-analysis is the expensive part and the parser is re-entrant
// across calls (each `input =` assignment resets its state).
export const parser = new HollowParser();

export interface LineParse {
  readonly cst: CstNode;
  readonly errors: readonly IRecognitionException[];
}

/** Parses the tokens of one line (no Newline tokens) as a single statement. */
export function parseStatement(tokens: IToken[]): LineParse {
  parser.input = tokens;
  const cst = parser.statement();
  return { cst, errors: parser.errors };
}
