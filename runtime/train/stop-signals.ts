/**
 * Stopping a training run on a signal without losing its steps. The first SIGTERM, SIGINT or
 * SIGHUP aborts the returned signal: train() ends the step in progress, writes a checkpoint there
 * and returns `stopped`. The same request arriving twice (a terminal's Ctrl-C reaches both
 * hollowc processes, and the first passes it on: cli/allocator.ts) counts once; a signal a second
 * or more after the first ends the process at once, by that signal. Either way the checkpoint on
 * disk is whole: it is replaced by a rename.
 */

export const STOP_SIGNALS: readonly NodeJS.Signals[] = ['SIGTERM', 'SIGINT', 'SIGHUP'];

/** Signals closer than this to the first are the same request, delivered twice. */
const SAME_REQUEST_MS = 1000;

export interface SignalStop {
  /** Aborted, with the signal's name as its reason, by the first stop signal. */
  readonly signal: AbortSignal;
  /** Removes the handlers; after a stop signal, ends this process with it (as the default action would have). */
  finish(): void;
  /** Removes the handlers only (a run that failed reports its error and exit code instead). */
  release(): void;
}

/** Handles the stop signals until finish(); `onFirst` is told of the first (to say what happens next). */
export function stopOnSignals(onFirst: (signal: NodeJS.Signals) => void = () => {}): SignalStop {
  const controller = new AbortController();
  let first: { signal: NodeJS.Signals; at: number } | undefined;
  const remove = () => {
    for (const s of STOP_SIGNALS) process.off(s, handle);
  };
  function handle(signal: NodeJS.Signals): void {
    if (!first) {
      first = { signal, at: Date.now() };
      onFirst(signal);
      controller.abort(signal);
      return;
    }
    if (Date.now() - first.at < SAME_REQUEST_MS) return;
    remove();
    process.kill(process.pid, signal);
  }
  for (const s of STOP_SIGNALS) process.on(s, handle);
  return {
    signal: controller.signal,
    finish: () => {
      remove();
      if (first) process.kill(process.pid, first.signal);
    },
    release: remove,
  };
}
