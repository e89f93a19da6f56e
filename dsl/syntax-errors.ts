// Rewrites lexer and parser errors into messages a user can act on:
//
//   expected a number after "rank"
//   unknown keyword "rnak" after "lora"; expected "rank", "alpha", "targets" or "init"   hint: did you mean "rank"?
//   unknown statement "lroa"; a statement starts with "model", "hollow", ...            hint: did you mean "lora"?
//
// What was expected is not taken from chevrotain's exception text: we ask the parser's content
// assist which token types may follow the tokens before the error. That works the same for every
// kind of exception (mismatch, no viable alternative, early exit, leftover input) and yields the
// token labels defined in lexer.ts.
import { createTokenInstance, ILexingError, IRecognitionException, IToken, TokenType } from 'chevrotain';
import { SourcePos, SourceText, SpecError, specErrorAt } from './diagnostics';
import * as T from './lexer';
import { parser } from './parser';
import { didYouMean, oneOf } from './suggest';

export function lexingError(source: SourceText, err: ILexingError, lineText: string): SpecError {
  const ch = lineText[err.column! - 1] ?? '';
  const at = { line: err.line!, col: err.column!, length: err.length };
  if (ch === '"') {
    return specErrorAt(
      source,
      { ...at, length: lineText.length - err.column! + 1 },
      'unterminated string',
      'close it with " on the same line',
    );
  }
  const what = err.length > 1 ? `unexpected text "${lineText.substr(err.column! - 1, err.length)}"` : `unexpected character "${ch}"`;
  const hint = ch === "'" ? 'strings use double quotes, as in "39.2%"' : undefined;
  return specErrorAt(source, at, what, hint);
}

export function syntaxError(source: SourceText, line: readonly IToken[], err: IRecognitionException): SpecError {
  const found = line.indexOf(err.token);
  // A token not in the line is chevrotain's EOF: the line ended too early.
  const index = found < 0 ? line.length : found;
  const actual: IToken | undefined = line[index];
  const prev: IToken | undefined = line[index - 1];
  const canEnd = err.name === 'NotAllInputParsedException';
  const expected = expectedAfter(line.slice(0, index));

  if (prev === undefined) return unknownStatement(source, actual!);

  const pos: SourcePos =
    actual !== undefined
      ? { line: actual.startLine!, col: actual.startColumn!, length: actual.image.length }
      : { line: prev.startLine!, col: prev.endColumn! + 1, length: 1 };
  const labels = expected.map((t) => t.LABEL ?? t.name);
  if (canEnd) labels.push(T.Newline.LABEL!);
  const list = oneOf(labels);
  const after = `after ${quoted(prev.image)}`;

  if (actual === undefined) return specErrorAt(source, pos, `expected ${list} ${after}`);

  const words = expected.map(T.keywordText).filter((w): w is string => w !== undefined);
  const guess = didYouMean(actual.image, words);
  const hint = guess !== undefined ? `did you mean "${guess}"?` : startsStatement(actual) ? 'write one statement per line' : undefined;
  if (actual.tokenType === T.Identifier && words.length === expected.length) {
    return specErrorAt(source, pos, `unknown keyword ${quoted(actual.image)} ${after}; expected ${list}`, hint);
  }
  return specErrorAt(source, pos, `expected ${list} ${after}, found ${quoted(actual.image)}`, hint);
}

function unknownStatement(source: SourceText, actual: IToken): SpecError {
  const heads = T.statementHeads.map((t) => T.keywordText(t)!);
  const pos = { line: actual.startLine!, col: actual.startColumn!, length: actual.image.length };
  const message = `unknown statement ${quoted(actual.image)}; a statement starts with ${oneOf(heads.map((h) => `"${h}"`))}`;
  const guess = didYouMean(actual.image, heads);
  if (guess !== undefined) return specErrorAt(source, pos, message, `did you mean "${guess}"?`);
  // `rank 128` alone: the word is known, only its statement head is missing.
  const owner = ownerOf().get(actual.tokenType);
  const hint = owner === undefined ? undefined : `"${actual.image}" belongs to a statement: write "${owner} ${actual.image} ..."`;
  return specErrorAt(source, pos, message, hint);
}

function expectedAfter(prefix: readonly IToken[]): TokenType[] {
  const paths = parser.computeContentAssist('statement', [...prefix]);
  return [...new Set(paths.map((p) => p.nextTokenType))];
}

function startsStatement(tok: IToken): boolean {
  return T.statementHeads.includes(tok.tokenType);
}

function quoted(image: string): string {
  return image.startsWith('"') ? image : `"${image}"`;
}

let owners: Map<TokenType, string> | undefined;

/** Keyword -> the statement head it directly follows (`rank` -> `lora`), from the grammar. */
function ownerOf(): Map<TokenType, string> {
  if (owners !== undefined) return owners;
  owners = new Map();
  for (const head of T.statementHeads) {
    const word = T.keywordText(head)!;
    const tok = createTokenInstance(head, word, 0, word.length - 1, 1, 1, 1, word.length);
    for (const next of expectedAfter([tok])) {
      if (T.keywordText(next) !== undefined && !owners.has(next)) owners.set(next, word);
    }
  }
  return owners;
}
