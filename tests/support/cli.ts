/** The hollowc CLI run in-process with stdout and stderr captured: what a user sees, without a process. */
import { main } from '../../cli/main';

export interface CliRun {
  code: number;
  stdout: string;
  stderr: string;
}

export async function runCli(args: string[]): Promise<CliRun> {
  let stdout = '';
  let stderr = '';
  const o = jest.spyOn(process.stdout, 'write').mockImplementation((s: string | Uint8Array) => ((stdout += String(s)), true));
  const e = jest.spyOn(process.stderr, 'write').mockImplementation((s: string | Uint8Array) => ((stderr += String(s)), true));
  try {
    return { code: await main(['node', 'hollowc', ...args]), stdout, stderr };
  } finally {
    o.mockRestore();
    e.mockRestore();
  }
}

/** Refused as bad input is: exit code 1 and one line on stderr holding `text`. Returns that stderr. */
export async function refused(args: string[], text: string): Promise<string> {
  const r = await runCli(args);
  expect([r.code, r.stderr.trim().split('\n').length, r.stderr]).toEqual([1, 1, expect.stringContaining(text)]);
  return r.stderr;
}
