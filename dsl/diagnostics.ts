// Diagnostics of the `.hollow` language, rendered the way compilers do:
//
//   dog.hollow:3:11: error: expected a number after "rank"
//   lora rank abc
//             ^~~
//     hint: ...
//
// A diagnostic with line 0 belongs to the whole file (a missing statement, a defaulted value that
// turned out not to fit the model): it renders without a source line or caret.

/** A place in the spec text: 1-based line and column, and how many characters to underline. */
export interface SourcePos {
  readonly line: number;
  readonly col: number;
  readonly length: number;
}

/** Anything that remembers where it came from; `pos` is absent for values filled by default. */
export interface Located {
  readonly pos?: SourcePos;
}

export class SpecError extends Error {
  /** Every diagnostic found in the same pass, this one first: parseSpec and checkSpec report all
   * the errors they can find at once, and throw the first. */
  all: readonly SpecError[];

  constructor(
    readonly file: string,
    readonly line: number,
    readonly col: number,
    message: string,
    readonly suggestion?: string,
    /** The text of `line`, for the excerpt; '' when line is 0. */
    readonly sourceLine: string = '',
    /** Characters to underline from `col` (at least one caret is drawn). */
    readonly length: number = 1,
  ) {
    super(message);
    this.name = 'SpecError';
    this.all = [this];
  }

  /** `file:line:col: error: message`, the source line, a caret line and `  hint: ...`. */
  format(): string {
    const out: string[] = [];
    if (this.line > 0) {
      out.push(`${this.file}:${this.line}:${this.col}: error: ${this.message}`);
      out.push(this.sourceLine);
      out.push(caretLine(this.sourceLine, this.col, this.length));
    } else {
      out.push(`${this.file}: error: ${this.message}`);
    }
    if (this.suggestion !== undefined) out.push(`  hint: ${this.suggestion}`);
    return out.join('\n');
  }

  /** All diagnostics of this pass, formatted, one after another. */
  formatAll(): string {
    return this.all.map((e) => e.format()).join('\n');
  }
}

function caretLine(source: string, col: number, length: number): string {
  // Keep tabs from the source prefix so the caret lines up in any tab width.
  const pad = source
    .slice(0, col - 1)
    .replace(/[^\t]/g, ' ')
    .padEnd(col - 1, ' ');
  return pad + '^' + '~'.repeat(Math.max(0, length - 1));
}

/** The source text a diagnostic can be rendered against. A parsed Spec satisfies this. */
export interface SourceText {
  readonly file: string;
  readonly text: string;
}

export function lineOf(text: string, line: number): string {
  if (line < 1) return '';
  return (text.split('\n')[line - 1] ?? '').replace(/\r$/, '');
}

/**
 * A SpecError pointing at `at`: a located AST node (a statement, a value), a bare position, or
 * nothing (a defaulted value) in which case the error belongs to the whole file. This is how the
 * compiler reports semantic errors found after parsing at the spec line that caused them.
 */
export function specErrorAt(spec: SourceText, at: Located | SourcePos | undefined, message: string, suggestion?: string): SpecError {
  const pos = at === undefined ? undefined : 'line' in at ? at : at.pos;
  if (pos === undefined) return new SpecError(spec.file, 0, 0, message, suggestion);
  return new SpecError(spec.file, pos.line, pos.col, message, suggestion, lineOf(spec.text, pos.line), pos.length);
}

/** Throws the collected errors as one SpecError (the first, in source order, carrying `all`). */
export function throwIfAny(errors: SpecError[]): void {
  if (errors.length === 0) return;
  const sorted = [...errors].sort((a, b) => lineKey(a) - lineKey(b) || a.col - b.col);
  const first = sorted[0]!;
  first.all = sorted;
  throw first;
}

// Whole-file errors (line 0) go last: they are usually consequences, read after the local ones.
function lineKey(e: SpecError): number {
  return e.line === 0 ? Number.MAX_SAFE_INTEGER : e.line;
}
