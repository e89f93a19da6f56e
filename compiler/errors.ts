/**
 * The error type every layer throws for bad input. The CLI prints `message` alone (no stack),
 * so a message must name the file, block or spec position it is about.
 */
export class HollowcError extends Error {
  constructor(
    message: string,
    readonly file?: string,
  ) {
    super(file ? `${file}: ${message}` : message);
    this.name = 'HollowcError';
  }
}
