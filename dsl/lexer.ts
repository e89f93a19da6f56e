// Tokens of the `.hollow` language.
//
// Every fixed word of the language (statement heads, option names, enumerated values such as
// `sd21` or `epsilon`) is its own keyword token rather than an identifier checked later: the
// parser then knows exactly which words may come next, and the friendly syntax errors in
// syntax-errors.ts can list them and suggest the closest one for a typo.
//
// A few token *categories* (Name, PresetValue, LayerRef) group tokens that are accepted at one
// grammar position. Their `label` is what a syntax error says was expected there, so a category
// doubles as "what this slot means to the user".
import { createToken, Lexer, TokenType } from 'chevrotain';

/** Any word usable as an input name in `shape`: identifiers, and keywords too (an ONNX input may
 * well be called `model` or `train`). */
export const Name = createToken({ name: 'Name', pattern: Lexer.NA, label: 'an input name' });
/** What may follow `hollow preset`: "39.2%", 39.2% or sdxl-mid. */
export const PresetValue = createToken({
  name: 'PresetValue',
  pattern: Lexer.NA,
  label: 'a preset name such as "39.2%"',
});
/** What may follow `hollow after`: a module path or a paper block id. */
export const LayerRef = createToken({
  name: 'LayerRef',
  pattern: Lexer.NA,
  label: 'a module path or a block id such as 3-2',
});

export const WhiteSpace = createToken({ name: 'WhiteSpace', pattern: /[ \t\r]+/, group: Lexer.SKIPPED });
export const Comment = createToken({ name: 'Comment', pattern: /#[^\n]*/, group: Lexer.SKIPPED });
// Newlines are tokens: a statement is one line, and index.ts splits the token stream on them.
export const Newline = createToken({ name: 'Newline', pattern: /\n/, label: 'the end of the line' });

export const StringLit = createToken({
  name: 'StringLit',
  pattern: /"(?:[^"\\\n]|\\.)*"/,
  label: 'a quoted string',
  categories: [PresetValue],
});
// Before BlockId and Number, so `39.2%` is not lexed as the number 39.2 followed by junk.
export const Percent = createToken({
  name: 'Percent',
  pattern: /\d+(?:\.\d+)?%/,
  label: 'a percentage',
  categories: [PresetValue],
});
// Before Number: `4MiB` is one size, not the number 4 followed by a word.
export const SizeLit = createToken({
  name: 'SizeLit',
  pattern: /\d+(?:\.\d+)?(?:KiB|MiB|GiB)/,
  label: 'a size such as 4MiB',
});
// Before Number: `3-3` is a paper block id, never "3 minus 3".
export const BlockId = createToken({
  name: 'BlockId',
  pattern: /\d+-\d+/,
  label: 'a block id such as 3-3',
  categories: [LayerRef],
});
// Signed, so `lr -1` is a value error ("lr must be > 0") rather than an odd-character error.
export const NumberLit = createToken({
  name: 'NumberLit',
  pattern: /-?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?/,
  label: 'a number',
});
export const DotDot = createToken({ name: 'DotDot', pattern: /\.\./, label: '".."' });
export const LBracket = createToken({ name: 'LBracket', pattern: /\[/, label: '"["' });
export const RBracket = createToken({ name: 'RBracket', pattern: /\]/, label: '"]"' });
export const Comma = createToken({ name: 'Comma', pattern: /,/, label: '","' });

/** Module paths (`down_blocks.2.attentions.1`) and other bare words. `-` is allowed inside a
 * segment so that `sdxl-mid` is one word. */
export const Identifier = createToken({
  name: 'Identifier',
  pattern: /[A-Za-z_][A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]+)*/,
  label: 'a module path',
  categories: [Name, PresetValue, LayerRef],
});

const keywordTokens: TokenType[] = [];
function keyword(word: string): TokenType {
  const tok = createToken({
    name: 'Kw_' + word,
    pattern: new RegExp(word.replace(/[.]/g, '\\.')),
    // `trainer` or `model.x` must lex as one identifier, not as a keyword plus leftovers.
    longer_alt: Identifier,
    label: `"${word}"`,
    categories: [Name],
  });
  keywordTokens.push(tok);
  return tok;
}

// Statement heads.
export const Model = keyword('model');
export const Hollow = keyword('hollow');
export const Shape = keyword('shape');
export const Lora = keyword('lora');
export const Loss = keyword('loss');
export const Optimizer = keyword('optimizer');
export const Emit = keyword('emit');
export const Seed = keyword('seed');
export const Train = keyword('train'); // also an artifact name in `emit`
export const Base = keyword('base');
export const Recompute = keyword('recompute');
export const Chunks = keyword('chunks');
export const Gradients = keyword('gradients');
// model
export const Sd15 = keyword('sd15');
export const Sd21 = keyword('sd21');
export const Sdxl = keyword('sdxl');
export const Auto = keyword('auto');
// hollow
export const Preset = keyword('preset');
export const Blocks = keyword('blocks');
export const After = keyword('after');
export const None = keyword('none');
// lora
export const Rank = keyword('rank');
export const Alpha = keyword('alpha');
export const Targets = keyword('targets');
export const Init = keyword('init');
export const Gaussian = keyword('gaussian');
export const From = keyword('from');
// loss
export const Mse = keyword('mse');
export const Epsilon = keyword('epsilon');
export const VPrediction = keyword('v_prediction');
export const PriorWeight = keyword('prior_weight');
// optimizer
export const Adamw = keyword('adamw');
export const Adamw8bit = keyword('adamw8bit');
export const Lr = keyword('lr');
export const Betas = keyword('betas');
export const Eps = keyword('eps');
export const WeightDecay = keyword('weight_decay');
// emit
export const Precompute = keyword('precompute');
export const Grads = keyword('grads');
export const Infer = keyword('infer');
// base
export const Fp32 = keyword('fp32');
export const Fp16 = keyword('fp16'); // lora infer
export const Int8 = keyword('int8');
// train
export const Steps = keyword('steps');
export const Batch = keyword('batch');
export const CheckpointEvery = keyword('checkpoint_every');
// recompute (and `blocks` of hollow)
export const Cheap = keyword('cheap');
// chunks
export const Attention = keyword('attention');
export const FeedForward = keyword('feed_forward');
export const ConvGradient = keyword('conv_gradient');
export const InferAttention = keyword('infer_attention');

/** The words that may start a statement, in the order the docs list them. */
export const statementHeads: readonly TokenType[] = [
  Model,
  Hollow,
  Shape,
  Lora,
  Loss,
  Optimizer,
  Emit,
  Seed,
  Train,
  Base,
  Recompute,
  Chunks,
  Gradients,
];

// The lexer takes the first pattern that matches, so a keyword that is a prefix of another
// (`eps` / `epsilon`) must come after it: sort longest first.
const keywordsLongestFirst = [...keywordTokens].sort((a, b) => (b.LABEL ?? '').length - (a.LABEL ?? '').length);

export const allTokens: TokenType[] = [
  WhiteSpace,
  Comment,
  Newline,
  StringLit,
  Percent,
  SizeLit,
  BlockId,
  NumberLit,
  DotDot,
  LBracket,
  RBracket,
  Comma,
  ...keywordsLongestFirst,
  Identifier,
  Name,
  PresetValue,
  LayerRef,
];

export const keywords: readonly TokenType[] = keywordTokens;

/** The keyword's text (`rank`), or undefined for a non-keyword token type. */
export function keywordText(tok: TokenType): string | undefined {
  return tok.name.startsWith('Kw_') ? tok.name.slice(3) : undefined;
}

export const hollowLexer = new Lexer(allTokens, {
  positionTracking: 'full',
  // Only "\n" ends a line: a CRLF file's "\r" is whitespace (chevrotain would count it as a
  // second line break and shift every line number).
  lineTerminatorsPattern: /\n/g,
  lineTerminatorCharacters: ['\n'],
});
