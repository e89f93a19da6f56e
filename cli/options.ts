/** Option parsers and the options every command that runs a session shares. */
import { InvalidArgumentError, Option } from 'commander';
import { EXECUTION_PROVIDERS, SessionTuning } from '../runtime/ort/session';

export function parseCount(text: string): number {
  const n = /^\d+$/.test(text.trim()) ? Number(text) : NaN;
  if (!Number.isSafeInteger(n) || n <= 0) throw new InvalidArgumentError(`expected a positive integer, got ${JSON.stringify(text)}`);
  return n;
}

export function parseSeed(text: string): number {
  const n = /^\d+$/.test(text.trim()) ? Number(text) : NaN;
  if (!Number.isSafeInteger(n) || n > 0xffffffff)
    throw new InvalidArgumentError(`expected an integer in 0..4294967295, got ${JSON.stringify(text)}`);
  return n;
}

export function parsePort(text: string): number {
  const n = /^\d+$/.test(text.trim()) ? Number(text) : NaN;
  if (!Number.isSafeInteger(n) || n > 65535) throw new InvalidArgumentError(`expected a port in 0..65535, got ${JSON.stringify(text)}`);
  return n;
}

export function parseNumber(text: string): number {
  const n = Number(text);
  if (text.trim() === '' || !Number.isFinite(n)) throw new InvalidArgumentError(`expected a number, got ${JSON.stringify(text)}`);
  return n;
}

export function parseSize(text: string): number[] {
  const m = /^(\d+)x(\d+)$/.exec(text.trim());
  if (!m) throw new InvalidArgumentError(`expected HxW in latent pixels (e.g. 64x64), got ${JSON.stringify(text)}`);
  return [Number(m[1]), Number(m[2])];
}

export const epOption = () => new Option('--ep <provider>', 'onnxruntime execution provider').choices(EXECUTION_PROVIDERS).default('cpu');
export const fallbackOption = () => new Option('--cpu-fallback', 'run on the CPU (with a warning) when the provider cannot start');

export const threadsOption = () =>
  new Option('--threads <n>', "onnxruntime intra-op threads (default: onnxruntime's choice)").argParser(parseCount);
export const graphOptOption = () =>
  new Option('--graph-opt <level>', 'onnxruntime graph optimization (default: basic for training graphs, all otherwise)').choices([
    'disabled',
    'basic',
    'extended',
    'all',
  ]);

export interface TuningCli {
  threads?: number;
  graphOpt?: SessionTuning['optimization'];
}

/** The line each session of a command writes once, on stderr: which provider ran it. */
export const reportProvider = (line: string) => process.stderr.write(`execution provider: ${line}\n`);

/** A command's session settings; each session reports once, on stderr, which provider ran it. */
export const tuning = (o: TuningCli): SessionTuning => ({
  intraOpThreads: o.threads,
  optimization: o.graphOpt,
  report: reportProvider,
  log: (line) => process.stderr.write(`${line}\n`),
});

/** One line of a command's report on stdout. */
export const out = (line: string) => process.stdout.write(`${line}\n`);

/** The session options of a command: provider, CPU fallback, threads, optimization level. */
export function sessionOptions(command: import('commander').Command): import('commander').Command {
  return command.addOption(epOption()).addOption(fallbackOption()).addOption(threadsOption()).addOption(graphOptOption());
}

/** The command-line flag of a commander option key: `numImages` -> `--num-images`. */
export const flagName = (key: string) => `--${key.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`;
