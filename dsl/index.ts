// Public entry of the `.hollow` language. See SPEC.md for the language, ast.ts for the types.
import { IToken } from 'chevrotain';
import { Spec, Statement } from './ast';
import { StatementBuilder } from './cst-to-ast';
import { assemble } from './assemble';
import { lineOf, SourceText, SpecError, throwIfAny } from './diagnostics';
import { hollowLexer, Newline } from './lexer';
import { parseStatement } from './parser';
import { lexingError, syntaxError } from './syntax-errors';

export type { Spec, Hollow, BlockItem, ShapeDecl, LoraInit, Valued, Num } from './ast';
export { compareBlockIds } from './cst-to-ast';
export { SpecError, specErrorAt } from './diagnostics';
export type { SourcePos, Located, SourceText } from './diagnostics';
export type { ModelChoice, EmitArtifact, OptimizerKind } from './presets';
export { EMIT_ARTIFACTS, SD_PRESETS, SDXL_PRESETS, ALL_PRESETS, presetsFor } from './presets';
export { matchesGlob, globProblem, globRegex } from './glob';
export { baseGlobMatches, checkSpec, rankProblem } from './check';
export type {
  ModelFacts,
  HollowRequest,
  LayerFacts,
  LoraCandidate,
  BaseParameterFacts,
  InputFacts,
  ResolvedSpec,
  ResolvedTarget,
  ResolvedBaseParameter,
} from './check';

/**
 * Parses a `.hollow` spec. Throws a SpecError (the first in source order, with every error found
 * in `.all`): each line is parsed on its own, so one broken line does not hide errors on others.
 */
export function parseSpec(text: string, file = '<spec>'): Spec {
  const source: SourceText = { file, text };
  const errors: SpecError[] = [];

  const lexed = hollowLexer.tokenize(text);
  const badLines = new Set<number>();
  for (const e of lexed.errors) {
    // One diagnostic per line: after a bad character the lexer's own recovery is guesswork.
    if (badLines.has(e.line!)) continue;
    errors.push(lexingError(source, e, lineOf(text, e.line!)));
    badLines.add(e.line!);
  }

  const builder = new StatementBuilder(source);
  const statements: Statement[] = [];
  for (const line of splitLines(lexed.tokens)) {
    // A line the lexer already complained about would only add a confusing second error.
    if (badLines.has(line[0]!.startLine!)) continue;
    const { cst, errors: parseErrors } = parseStatement(line);
    if (parseErrors.length > 0) {
      errors.push(syntaxError(source, line, parseErrors[0]!));
      continue;
    }
    statements.push(builder.build(cst));
  }
  errors.push(...builder.errors);

  const { spec, errors: specErrors } = assemble(source, statements, errors.length > 0);
  errors.push(...specErrors);
  throwIfAny(errors);
  return spec!;
}

/** Groups tokens into lines, dropping empty ones (blank or comment-only lines). */
function splitLines(tokens: readonly IToken[]): IToken[][] {
  const lines: IToken[][] = [];
  let current: IToken[] = [];
  for (const t of tokens) {
    if (t.tokenType === Newline) {
      if (current.length > 0) lines.push(current);
      current = [];
    } else current.push(t);
  }
  if (current.length > 0) lines.push(current);
  return lines;
}
