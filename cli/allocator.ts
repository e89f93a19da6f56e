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
 */
import { spawnSync } from 'child_process';

export const MALLOC_ENV: Readonly<Record<string, string>> = { MALLOC_MMAP_THRESHOLD_: '131072' };

/** Commands that run training or sampling sessions (personalize and demo train and sample in one process). */
const HEAVY_COMMANDS: ReadonlySet<string> = new Set(['train', 'personalize', 'demo', 'generate', 'precompute']);

/**
 * When `argv` runs a heavy command in a process without the settings, runs it again in a child
 * process that has them and returns its exit code; otherwise undefined (run here).
 */
export function rerunWithAllocatorSettings(argv: readonly string[]): number | undefined {
  const command = argv.slice(2).find((a) => !a.startsWith('-'));
  if (process.platform !== 'linux' || !command || !HEAVY_COMMANDS.has(command)) return undefined;
  if (process.env.HOLLOWC_MALLOC === 'default' || Object.keys(MALLOC_ENV).every((k) => process.env[k] !== undefined)) return undefined;
  const r = spawnSync(process.execPath, [...process.execArgv, ...argv.slice(1)], {
    stdio: 'inherit',
    env: { ...process.env, ...MALLOC_ENV },
  });
  if (r.error) return undefined;
  if (r.signal) process.kill(process.pid, r.signal);
  return r.status ?? 1;
}
