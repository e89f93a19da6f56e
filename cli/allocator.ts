/**
 * glibc malloc settings for the memory-heavy commands, which hollowc sets for its own process by
 * starting itself again with them in the environment (glibc reads them once, at start-up).
 *
 * With onnxruntime's CPU arena off, every intermediate tensor is a malloc/free. glibc serves
 * blocks above its mmap threshold with mmap and returns them on free, but it raises that
 * threshold (up to 32 MiB) each time such a block is freed; after that, tensors of a few MiB come
 * from the heap, and freed ones stay resident wherever a live block sits above them. A fixed
 * threshold of 128 KiB keeps every tensor-sized block mmapped: on the full SD 2.1 39.2% step it
 * lowered the anonymous peak by ~70 MiB at the same step time (tests/bench/train-step). Other C
 * libraries ignore the variable. HOLLOWC_MALLOC=default keeps the process as it was started.
 *
 * The pid a user, a scheduler or a parent script sees is the first process, so it passes every
 * terminating signal on to the second and ends as the second ended (its exit code, or the same
 * signal); the second ends itself when the first is gone (a SIGKILL cannot be passed on), so no
 * orphan keeps training and holding the folder's lock.
 */
import { spawn } from 'child_process';

export const MALLOC_ENV: Readonly<Record<string, string>> = { MALLOC_MMAP_THRESHOLD_: '131072' };

/** Set in the second process: the first one's pid, which it watches. */
export const PARENT_ENV = 'HOLLOWC_RERUN_PARENT';

/**
 * Signals that end a node process by default and that the first process passes on. SIGUSR1 is
 * left out: node starts its inspector on it and does not end.
 */
export const FORWARDED_SIGNALS: readonly NodeJS.Signals[] = ['SIGTERM', 'SIGINT', 'SIGHUP', 'SIGQUIT', 'SIGUSR2'];

/** How often the second process checks that the first one still runs: a syscall a second. */
const PARENT_POLL_MS = 1000;

/** Commands that run training or sampling sessions (personalize and demo train and sample in one process). */
const HEAVY_COMMANDS: ReadonlySet<string> = new Set(['train', 'personalize', 'demo', 'generate', 'precompute']);

/**
 * When `argv` runs a heavy command in a process without the settings, runs it again in a child
 * process that has them and resolves to its exit code (a child ended by a signal ends this process
 * with the same signal); otherwise, or when no child could start, undefined: run here. In that
 * child, starts watching its parent.
 */
export function rerunWithAllocatorSettings(argv: readonly string[]): Promise<number | undefined> | undefined {
  const parent = process.env[PARENT_ENV];
  if (parent !== undefined) {
    // Read once: a process this one starts has another parent.
    delete process.env[PARENT_ENV];
    endWhenParentIsGone(Number(parent));
  }
  const command = argv.slice(2).find((a) => !a.startsWith('-'));
  if (process.platform !== 'linux' || !command || !HEAVY_COMMANDS.has(command)) return undefined;
  if (process.env.HOLLOWC_MALLOC === 'default' || Object.keys(MALLOC_ENV).every((k) => process.env[k] !== undefined)) return undefined;
  return runChild(argv);
}

function runChild(argv: readonly string[]): Promise<number | undefined> {
  const child = spawn(process.execPath, [...process.execArgv, ...argv.slice(1)], {
    stdio: 'inherit',
    env: { ...process.env, ...MALLOC_ENV, [PARENT_ENV]: String(process.pid) },
  });
  // A terminal's Ctrl-C reaches the child too (one process group): it gets the signal twice,
  // which the training loop counts as one request (runtime/train/stop-signals.ts).
  const forward = (signal: NodeJS.Signals) => {
    if (child.exitCode === null && child.signalCode === null) child.kill(signal);
  };
  for (const s of FORWARDED_SIGNALS) process.on(s, forward);
  const stopForwarding = () => {
    for (const s of FORWARDED_SIGNALS) process.off(s, forward);
  };
  return new Promise((resolve) => {
    child.on('error', () => {
      // Only a child that never started means "run here"; one that runs is waited for.
      if (child.pid !== undefined) return;
      stopForwarding();
      resolve(undefined);
    });
    child.on('exit', (code, signal) => {
      stopForwarding();
      // With no listener left the signal takes its default action: this process ends as the child did.
      if (signal) process.kill(process.pid, signal);
      resolve(code ?? 1);
    });
  });
}

/**
 * Sends this process SIGTERM (what a user's kill would have passed on: the training loop stops
 * after its step with a checkpoint) once its parent `pid` is gone: the kernel then re-parents it,
 * so process.ppid changes. The timer does not keep the process alive.
 */
function endWhenParentIsGone(pid: number): void {
  if (!Number.isInteger(pid) || process.ppid !== pid) return;
  const timer = setInterval(() => {
    if (process.ppid === pid) return;
    clearInterval(timer);
    process.kill(process.pid, 'SIGTERM');
  }, PARENT_POLL_MS);
  timer.unref();
}
