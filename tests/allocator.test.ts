/**
 * cli/allocator.ts: `hollowc train` starts itself again with the glibc settings (once), other
 * commands and processes that have them run as they are. The first process passes terminating
 * signals on and ends as the second did; the second ends when the first is gone.
 */
import { spawn } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { MALLOC_ENV, PARENT_ENV, rerunWithAllocatorSettings } from '../cli/allocator';
import { tempDir } from './support/fixture';

const KEYS = [...Object.keys(MALLOC_ENV), 'HOLLOWC_MALLOC', PARENT_ENV];
const CHILD = path.join(__dirname, 'support', 'allocator-child.js');
const linux = process.platform === 'linux';

async function withEnv<T>(env: Record<string, string | undefined>, f: () => Promise<T> | T): Promise<T> {
  const saved = Object.fromEntries(KEYS.map((k) => [k, process.env[k]]));
  try {
    for (const k of KEYS) delete process.env[k];
    Object.assign(process.env, env);
    return await f();
  } finally {
    for (const k of KEYS) delete process.env[k];
    for (const [k, v] of Object.entries(saved)) if (v !== undefined) process.env[k] = v;
  }
}

test('train, personalize and demo rerun in a child that has the settings and returns its exit code; others run here', async () => {
  const script = path.join(tempDir('hollowc-alloc-'), 'main.js');
  // Stands in for the CLI: reports what it was started with.
  fs.writeFileSync(
    script,
    `require('fs').writeFileSync(${JSON.stringify(`${script}.out`)}, JSON.stringify({ argv: process.argv.slice(2), threshold: process.env.MALLOC_MMAP_THRESHOLD_, parent: process.env.${PARENT_ENV} })); process.exitCode = 7;\n`,
  );
  const argv = [process.execPath, script, 'train', 'out', '--steps', '3'];
  if (!linux) {
    expect(await withEnv({}, () => rerunWithAllocatorSettings(argv))).toBeUndefined();
    return;
  }
  expect(await withEnv({}, () => rerunWithAllocatorSettings(argv))).toBe(7);
  expect(JSON.parse(fs.readFileSync(`${script}.out`, 'utf8'))).toEqual({
    argv: ['train', 'out', '--steps', '3'],
    threshold: MALLOC_ENV.MALLOC_MMAP_THRESHOLD_,
    parent: String(process.pid),
  });
  fs.rmSync(`${script}.out`);
  // personalize and demo train in the same process as their other stages: they rerun too
  for (const command of ['personalize', 'demo']) {
    expect(await withEnv({}, () => rerunWithAllocatorSettings([process.execPath, script, command, '--quiet']))).toBe(7);
    expect(JSON.parse(fs.readFileSync(`${script}.out`, 'utf8')).threshold).toBe(MALLOC_ENV.MALLOC_MMAP_THRESHOLD_);
    fs.rmSync(`${script}.out`);
  }
  // already set (the child itself), opted out, or another command: run in this process
  expect(await withEnv(MALLOC_ENV, () => rerunWithAllocatorSettings(argv))).toBeUndefined();
  expect(await withEnv({ HOLLOWC_MALLOC: 'default' }, () => rerunWithAllocatorSettings(argv))).toBeUndefined();
  expect(await withEnv({}, () => rerunWithAllocatorSettings([process.execPath, script, 'compile', 'unet.onnx']))).toBeUndefined();
  expect(fs.existsSync(`${script}.out`)).toBe(false);
});

interface Ended {
  code: number | null;
  signal: NodeJS.Signals | null;
}

/** Starts allocator-child.js as the parent of a rerun; resolves with the child's pid once it runs. */
async function startParent(mode: 'handles' | 'default') {
  const report = path.join(tempDir('hollowc-alloc-sig-'), 'child.pid');
  const env = { ...process.env };
  for (const k of KEYS) delete env[k];
  const parent = spawn(process.execPath, [CHILD, 'parent', mode, report], { env, stdio: ['ignore', 'inherit', 'inherit'] });
  const ended = new Promise<Ended>((resolve) => parent.on('exit', (code, signal) => resolve({ code, signal })));
  for (let i = 0; i < 600 && !fs.existsSync(report); i++) await new Promise((r) => setTimeout(r, 50));
  const childPid = Number(fs.readFileSync(report, 'utf8'));
  return { parent, ended, childPid, report };
}

function running(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

async function gone(pid: number): Promise<boolean> {
  for (let i = 0; i < 200 && running(pid); i++) await new Promise((r) => setTimeout(r, 50));
  return !running(pid);
}

(linux ? describe : describe.skip)('signals', () => {
  test('a SIGTERM to the first process reaches the second, and the first exits with its code', async () => {
    const { parent, ended, childPid, report } = await startParent('handles');
    expect(childPid).not.toBe(parent.pid);
    parent.kill('SIGTERM');
    expect(await ended).toEqual({ code: 3, signal: null });
    expect(fs.readFileSync(`${report}.signal`, 'utf8')).toBe('SIGTERM');
    expect(await gone(childPid)).toBe(true);
  });

  test('a second that a signal ends ends the first with the same signal', async () => {
    const { parent, ended, childPid } = await startParent('default');
    parent.kill('SIGHUP');
    expect(await ended).toEqual({ code: null, signal: 'SIGHUP' });
    expect(await gone(childPid)).toBe(true);
  });

  test('the second ends by itself when the first is SIGKILLed', async () => {
    const { parent, ended, childPid } = await startParent('default');
    parent.kill('SIGKILL');
    expect((await ended).signal).toBe('SIGKILL');
    // it polls its parent once a second
    expect(await gone(childPid)).toBe(true);
  });
});
