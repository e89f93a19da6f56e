/**
 * Peak resident memory of one stretch of work. `process.resourceUsage().maxRSS` is the peak of
 * the whole process life, so a stage's own peak is sampled: the current RSS on a timer (the
 * event loop is free while onnxruntime runs a graph on its threads) and at start and stop.
 */
export function currentRss(): number {
  return process.memoryUsage.rss();
}

export class RssSampler {
  private peakBytes: number;
  private readonly timer: NodeJS.Timeout;

  constructor(intervalMs = 20) {
    this.peakBytes = currentRss();
    this.timer = setInterval(() => this.sample(), intervalMs);
    this.timer.unref();
  }

  sample(): number {
    const r = currentRss();
    if (r > this.peakBytes) this.peakBytes = r;
    return r;
  }

  get peak(): number {
    return this.peakBytes;
  }

  /** Stops sampling; the peak seen from construction until now. */
  stop(): number {
    clearInterval(this.timer);
    this.sample();
    return this.peakBytes;
  }
}
