/** `hollowc tokenize <tokenizer dir> "<text>" [--json]`: CLIP token ids as the text encoder gets them. */
import { Command } from 'commander';
import { loadTokenizer } from '../runtime/text-to-image/tokenizer';

export function runTokenize(
  dir: string,
  text: string,
  opts: { json?: boolean },
  write: (line: string) => void = (l) => process.stdout.write(`${l}\n`),
): void {
  const tokenizer = loadTokenizer(dir);
  const encoded = tokenizer.encode(text);
  if (opts.json) {
    write(JSON.stringify({ input_ids: encoded.inputIds }));
    return;
  }
  write(`tokens: ${tokenizer.tokenize(text).join(' ')}`);
  write(`input_ids: ${encoded.inputIds.join(' ')}`);
  if (encoded.truncated) write(`(truncated to ${tokenizer.maxLength} ids)`);
}

export function registerTokenize(program: Command): void {
  program
    .command('tokenize')
    .description('CLIP-tokenize a prompt with a tokenizer folder (padded and truncated to model_max_length)')
    .argument('<tokenizer-dir>', 'tokenizer folder: vocab.json + merges.txt (+ configs), or tokenizer.json')
    .argument('<text>', 'the prompt')
    .option('--json', 'print one JSON object {"input_ids": [...]}')
    .action((dir: string, text: string, opts: { json?: boolean }) => runTokenize(dir, text, opts));
}
