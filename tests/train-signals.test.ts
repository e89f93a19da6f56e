/**
 * Stopping `hollowc train` as users and schedulers do, on the real CLI (cli/main.ts as its own
 * process, so the allocator's rerun in a second process is in play), on the tiny stand-in
 * train.onnx of runtime-fake-train.ts (steps take milliseconds):
 * - `kill <pid>` (SIGTERM) on the pid the user sees ends both processes after the current step,
 *   with a checkpoint there and the lock released; `--resume` continues to the LoRA, checkpoint
 *   and loss log of an uninterrupted run;
 * - a SIGKILL of that pid: the second process notices and stops the same way;
 * - a crash (SIGKILL of the process training) with no checkpoint flag: the default cadence left a
 *   checkpoint, and `--resume` ends bit for bit as an uninterrupted run;
 * - export-lora while `train --restart` runs is refused; after it stopped, export-lora says which
 *   run the LoRA comes from and that the checkpoint is newer;
 * - runtime/train/stop-signals.ts: a signal delivered twice is one request, a later one ends at once.
 */
import { ChildProcess, spawn } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { LOCK_FILE } from '../compiler/folder-lock';
import { PARENT_ENV } from '../cli/allocator';
import { precompute } from '../runtime/store/precompute';
import { loadTrainingData } from '../runtime/store/training-data';
import { CHECKPOINT_FILE, readCheckpoint } from '../runtime/train/checkpoint';
import { DEFAULT_CHECKPOINT_STEPS, train } from '../runtime/train/train';
import { tempDir } from './support/fixture';
import { TinyFolder, tinyCompiled, writeData } from './runtime-fake-train';

const MAIN = path.join(__dirname, '..', 'cli', 'main.ts');
const REGISTER = path.join(__dirname, 'support', 'register-ts.js');
const linux = process.platform === 'linux';

interface Done {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** Processes a failed test may leave running: each is ended after the test. */
const started: ChildProcess[] = [];
afterEach(() => {
  for (const c of started.splice(0)) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
});

/** `hollowc <args>` as a user starts it: cli/main.ts is the entry, with no allocator settings yet. */
function hollowc(args: string[]): { child: ChildProcess; done: Promise<Done> } {
  const env = { ...process.env };
  for (const k of ['MALLOC_MMAP_THRESHOLD_', 'HOLLOWC_MALLOC', PARENT_ENV]) delete env[k];
  const child = spawn(process.execPath, ['-r', REGISTER, MAIN, ...args], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  started.push(child);
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (d) => (stdout += d));
  child.stderr!.on('data', (d) => (stderr += d));
  const done = new Promise<Done>((resolve) => child.on('close', (code, signal) => resolve({ code, signal, stdout, stderr })));
  return { child, done };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** `p`, or undefined when it has not settled within `seconds`. */
async function within<T>(p: Promise<T>, seconds: number): Promise<T | undefined> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([p, new Promise<undefined>((r) => (timer = setTimeout(() => r(undefined), seconds * 1000)))]);
  } finally {
    clearTimeout(timer);
  }
}

function running(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** Polls `ok` every 50 ms for up to `seconds`. */
async function waitFor(ok: () => boolean, seconds: number): Promise<boolean> {
  for (let i = 0; i < seconds * 20 && !ok(); i++) await sleep(50);
  return ok();
}

function lossLog(dir: string): { step: number; loss: number; lr: number }[] {
  const file = path.join(dir, 'train', 'loss.jsonl');
  if (!fs.existsSync(file)) return [];
  return fs
    .readFileSync(file, 'utf8')
    .split('\n')
    .filter((l) => l.endsWith('}'))
    .map((l) => JSON.parse(l));
}

/** The pid in the folder's lock: the process that trains (not the one the user started). */
function lockHolder(dir: string): number | undefined {
  try {
    return JSON.parse(fs.readFileSync(path.join(dir, LOCK_FILE), 'utf8')).pid;
  } catch {
    return undefined;
  }
}

let folder: TinyFolder;
let storeDir: string;

beforeAll(async () => {
  const root = tempDir('hollowc-train-signals-');
  // No checkpoint_every: the manifest's is the step count, so the run uses the default cadence.
  folder = await tinyCompiled(root, 'sd15', { batch: 1, preset: '39.2%', extraSpec: 'lora targets "attn1.to_q"\ntrain steps 400' });
  expect(folder.manifest.training.checkpointEvery).toBe(folder.manifest.training.steps);
  const data = writeData(path.join(root, 'data'), 'sd15', { instances: 3, classes: 2 });
  await precompute({ out: folder.out, data: loadTrainingData(data), count: 12 });
  storeDir = path.join(folder.out, 'store');
});

let copies = 0;
/** A copy of the compiled folder with its store (never trained in place). */
function copyOfFolder(): string {
  const dir = path.join(folder.dir, `copy-${copies++}`);
  fs.cpSync(folder.out, dir, { recursive: true });
  return dir;
}

/** The run's files as an uninterrupted run to `steps` writes them (loss log without its times). */
async function expectAsUninterrupted(dir: string, steps: number): Promise<void> {
  const straight = copyOfFolder();
  await train({ out: straight, steps, checkpointEvery: steps });
  for (const f of ['lora.safetensors', path.join('train', CHECKPOINT_FILE)])
    expect([f, fs.readFileSync(path.join(dir, f)).equals(fs.readFileSync(path.join(straight, f)))]).toEqual([f, true]);
  const log = (d: string) => lossLog(d).map((l) => [l.step, l.loss, l.lr]);
  expect(log(dir)).toEqual(log(straight));
}

/**
 * Starts a long `train` and waits until the folder's loss log has `steps` steps and its lock a
 * holder; returns it and the pid in the lock. (A SIGKILLed parent's child polls once a second.)
 */
async function trainingRun(dir: string, args: string[], steps = 1) {
  const run = hollowc(['train', dir, '--steps', '1000000', ...args]);
  expect(await waitFor(() => (lossLog(dir).length >= steps && lockHolder(dir) !== undefined) || run.child.exitCode !== null, 60)).toBe(
    true,
  );
  const trainer = lockHolder(dir);
  expect(trainer).toBeDefined();
  return { ...run, trainer: trainer! };
}

(linux ? describe : describe.skip)('stopping hollowc train', () => {
  test('kill <pid> (SIGTERM): both processes end after the step, checkpointed; --resume continues as an uninterrupted run', async () => {
    const dir = copyOfFolder();
    const { child, done, trainer } = await trainingRun(dir, []);
    // the pid the user sees is not the one training (the allocator's rerun)
    expect(trainer).not.toBe(child.pid);
    child.kill('SIGTERM');
    const r = await within(done, 20);
    expect(r).toBeDefined();
    // ended as the signal would end it, after the second process (which had the lock) ended
    expect([r!.code, r!.signal]).toEqual([null, 'SIGTERM']);
    expect(running(trainer)).toBe(false);
    expect(fs.existsSync(path.join(dir, LOCK_FILE))).toBe(false);
    expect(r!.stderr).toContain('SIGTERM: stopping after the current step with a checkpoint');
    const last = lossLog(dir).pop()!.step;
    expect(r!.stdout).toMatch(new RegExp(`^stopped by SIGTERM: trained steps 1\\.\\.${last} `));
    expect(r!.stdout).toContain(`checkpoint at step ${last}: `);
    expect(fs.existsSync(path.join(dir, 'lora.safetensors'))).toBe(false);
    // the checkpoint is of the last step done: nothing trained is lost
    expect(readCheckpoint(path.join(dir, 'train', CHECKPOINT_FILE)).state.step).toBe(last);

    const resumed = await hollowc(['train', dir, '--resume', '--steps', String(last + 15)]).done;
    expect([resumed.code, resumed.stderr]).toEqual([0, expect.not.stringContaining('another hollowc')]);
    expect(resumed.stdout).toMatch(new RegExp(`^trained steps ${last + 1}\\.\\.${last + 15} `));
    await expectAsUninterrupted(dir, last + 15);
  });

  test('Ctrl-C (SIGINT to both processes, as a terminal sends it, and forwarded): a graceful stop as for SIGTERM', async () => {
    const dir = copyOfFolder();
    const { child, done, trainer } = await trainingRun(dir, []);
    process.kill(trainer, 'SIGINT');
    child.kill('SIGINT');
    const r = await within(done, 20);
    expect([r?.code, r?.signal]).toEqual([null, 'SIGINT']);
    // it finished its step and checkpointed it
    const last = lossLog(dir).pop()!.step;
    expect(r!.stdout).toMatch(new RegExp(`^stopped by SIGINT: trained steps 1\\.\\.${last} `));
    expect(readCheckpoint(path.join(dir, 'train', CHECKPOINT_FILE)).state.step).toBe(last);
  });

  test('SIGKILL of the pid the user sees: the training process stops by itself, checkpointed', async () => {
    const dir = copyOfFolder();
    const { child, done, trainer } = await trainingRun(dir, []);
    child.kill('SIGKILL');
    expect((await done).signal).toBe('SIGKILL');
    // it looks for its parent once a second
    expect(await waitFor(() => !running(trainer), 20)).toBe(true);
    expect(fs.existsSync(path.join(dir, LOCK_FILE))).toBe(false);
    const last = lossLog(dir).pop()!.step;
    expect(readCheckpoint(path.join(dir, 'train', CHECKPOINT_FILE)).state.step).toBe(last);
    const resumed = await hollowc(['train', dir, '--resume', '--steps', String(last + 5)]).done;
    expect(resumed.code).toBe(0);
    await expectAsUninterrupted(dir, last + 5);
  });

  test('a crash (SIGKILL of the training process) with no checkpoint flag: --resume ends as an uninterrupted run', async () => {
    const dir = copyOfFolder();
    const { done, trainer } = await trainingRun(dir, [], DEFAULT_CHECKPOINT_STEPS + 20);
    process.kill(trainer, 'SIGKILL');
    expect((await done).signal).toBe('SIGKILL');
    const log = lossLog(dir);
    const at = readCheckpoint(path.join(dir, 'train', CHECKPOINT_FILE)).state.step;
    // the default cadence checkpointed (every 100 steps here: the stand-in's steps are fast)
    expect(at).toBeGreaterThanOrEqual(DEFAULT_CHECKPOINT_STEPS);
    expect(at).toBeLessThan(log[log.length - 1].step);
    const target = log[log.length - 1].step + 10;
    const resumed = await hollowc(['train', dir, '--resume', '--steps', String(target)]).done;
    expect(resumed.code).toBe(0);
    expect(resumed.stdout).toMatch(new RegExp(`^trained steps ${at + 1}\\.\\.${target} `));
    await expectAsUninterrupted(dir, target);
  });

  test('export-lora during train --restart is refused; after the run stopped it names the run of the LoRA and the newer checkpoint', async () => {
    const dir = copyOfFolder();
    await train({ out: dir, steps: 12 });
    // 20 steps: more than the log of the run before has
    const { child, done, trainer } = await trainingRun(dir, ['--restart'], 20);
    const out = path.join(folder.dir, 'exported.safetensors');
    const during = await hollowc(['export-lora', dir, '-o', out]).done;
    expect(during.code).toBe(1);
    expect(during.stderr).toContain(`another hollowc (pid ${trainer}, hollowc train`);
    expect(fs.existsSync(out)).toBe(false);
    child.kill('SIGTERM');
    await done;
    const at = readCheckpoint(path.join(dir, 'train', CHECKPOINT_FILE)).state.step;
    expect(at).toBeGreaterThanOrEqual(20);
    const after = await hollowc(['export-lora', dir, '-o', out]).done;
    expect(after.code).toBe(0);
    expect(after.stdout).toMatch(/from .*lora\.safetensors \(step 12, seed \d+, written \d{4}-\d\d-\d\dT[\d:]+Z\)\n$/);
    expect(after.stderr).toMatch(
      new RegExp(`note: .*checkpoint\\.safetensors is newer \\(step ${at}, seed \\d+, written .*--from checkpoint exports it`),
    );
    const fromCheckpoint = await hollowc(['export-lora', dir, '-o', out, '--from', 'checkpoint']).done;
    expect(fromCheckpoint.stdout).toMatch(new RegExp(`from .*checkpoint\\.safetensors \\(step ${at}, seed \\d+, written `));
    expect(fromCheckpoint.stderr).not.toContain('note:');
  });
});

(linux ? test : test.skip)('a stop signal twice within a second is one request; one a second later ends the process at once', async () => {
  const child = spawn(process.execPath, [path.join(__dirname, 'support', 'stop-signals-child.js')], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  started.push(child);
  let stdout = '';
  child.stdout!.on('data', (d) => (stdout += d));
  const ended = new Promise<NodeJS.Signals | null>((resolve) => child.on('exit', (_, signal) => resolve(signal)));
  expect(await waitFor(() => stdout.includes('ready'), 30)).toBe(true);
  child.kill('SIGINT');
  expect(await waitFor(() => stdout.includes('aborted SIGINT'), 10)).toBe(true);
  // the forwarded copy of the same request (a separate delivery)
  child.kill('SIGINT');
  await sleep(200);
  expect(child.exitCode === null && child.signalCode === null).toBe(true);
  await sleep(1000);
  child.kill('SIGTERM');
  expect(await within(ended, 10)).toBe('SIGTERM');
  expect(stdout).toBe('ready\naborted SIGINT\n');
});
