/**
 * A one-line progress display: `step 120/1000 [=====>      ] loss 0.1234  45.2 it/s  ETA 0:19`.
 * On a terminal the line is rewritten in place; otherwise (logs, CI) a plain line is printed
 * every `every` updates and at the end. No dependency: a progress bar needs nothing more.
 */
export interface ProgressStream {
  write(text: string): unknown;
  isTTY?: boolean;
  columns?: number;
}

export function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds) || seconds < 0) return '--:--';
  const s = Math.round(seconds);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const sec = String(s % 60).padStart(2, '0');
  return h > 0 ? `${h}:${String(m).padStart(2, '0')}:${sec}` : `${m}:${sec}`;
}

export function formatBytes(bytes: number): string {
  if (bytes >= 2 ** 30) return `${(bytes / 2 ** 30).toFixed(2)} GiB`;
  if (bytes >= 2 ** 20) return `${(bytes / 2 ** 20).toFixed(2)} MiB`;
  if (bytes >= 2 ** 10) return `${(bytes / 2 ** 10).toFixed(1)} KiB`;
  return `${bytes} B`;
}

/** Outside a terminal (a log, CI) a line is printed per tenth of the run, or after this long without one. */
const LOG_TENTHS = 10;
const LOG_EVERY_MS = 10_000;

export class ProgressLine {
  private readonly started: number;
  private lastLength = 0;
  /** the tenth of the run last logged, and when (outside a terminal) */
  private loggedTenth: number;
  private loggedAt: number;

  constructor(
    private readonly label: string,
    private readonly total: number,
    private readonly stream: ProgressStream = process.stderr,
    private readonly startAt = 0,
    private readonly now: () => number = Date.now,
  ) {
    this.started = now();
    this.loggedAt = this.started;
    this.loggedTenth = Math.floor((LOG_TENTHS * startAt) / total);
  }

  /** `done` counts from the run's start (`startAt`), so it/s and ETA cover this run only. */
  update(done: number, fields: Record<string, string> = {}): void {
    const now = this.now();
    const seconds = (now - this.started) / 1000;
    const ran = done - this.startAt;
    const rate = seconds > 0 ? ran / seconds : 0;
    const eta = rate > 0 ? (this.total - done) / rate : NaN;
    const width = 24;
    const filled = Math.round((width * done) / this.total);
    const bar = `[${'='.repeat(Math.max(0, filled - 1))}${filled > 0 ? (done >= this.total ? '=' : '>') : ''}${' '.repeat(width - filled)}]`;
    const extra = Object.entries(fields).map(([k, v]) => `${k} ${v}`);
    const line = [
      `${this.label} ${done}/${this.total}`,
      bar,
      ...extra,
      `${rate.toFixed(rate >= 10 ? 1 : 2)} it/s`,
      `ETA ${formatDuration(eta)}`,
    ].join('  ');
    if (this.stream.isTTY) {
      const pad = ' '.repeat(Math.max(0, this.lastLength - line.length));
      this.stream.write(`\r${line}${pad}`);
      this.lastLength = line.length;
    } else {
      const tenth = Math.floor((LOG_TENTHS * done) / this.total);
      if (done >= this.total || tenth > this.loggedTenth || now - this.loggedAt >= LOG_EVERY_MS) {
        this.stream.write(`${line}\n`);
        this.loggedTenth = tenth;
        this.loggedAt = now;
      }
    }
  }

  /** Ends the in-place line (TTY) so the next output starts on a fresh line. */
  finish(): void {
    if (this.stream.isTTY && this.lastLength > 0) this.stream.write('\n');
    this.lastLength = 0;
  }
}

/**
 * A progress line made at the first update, where the run starts (a resumed run counts its rate
 * from there), for callers that learn the starting point only from their first callback.
 */
export function progressFromFirstUpdate(label: string, stream: ProgressStream = process.stderr) {
  let line: ProgressLine | undefined;
  return {
    update(done: number, total: number, fields?: Record<string, string>): void {
      (line ??= new ProgressLine(label, total, stream, done - 1)).update(done, fields);
    },
    finish(): void {
      line?.finish();
    },
  };
}
