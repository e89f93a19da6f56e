/**
 * Peak resident memory of one stretch of work. `process.resourceUsage().maxRSS` is the peak of
 * the whole process life, so a stage's own peak is sampled. The sampling runs on a worker thread:
 * onnxruntime-node's `session.run` holds the main thread for the whole run (a 3 s UNet run let no
 * main-thread timer fire), so a timer there saw only the memory between runs and missed the peaks.
 */
import { Worker } from 'worker_threads';

export function currentRss(): number {
  return process.memoryUsage.rss();
}

// RSS is the process's, so the worker reads the same figure the main thread would.
const SAMPLER = `
const { workerData } = require('worker_threads');
const peak = new Int32Array(workerData.peak);
const sample = () => {
  const kib = Math.round(process.memoryUsage.rss() / 1024);
  if (kib > Atomics.load(peak, 0)) Atomics.store(peak, 0, kib);
};
sample();
setInterval(sample, workerData.intervalMs);
`;

export class RssSampler {
  /** The highest RSS seen, in KiB (shared with the sampling thread). */
  private readonly peakKiB = new Int32Array(new SharedArrayBuffer(4));
  private worker: Worker | undefined;

  constructor(intervalMs = 20) {
    this.sample();
    this.worker = new Worker(SAMPLER, { eval: true, workerData: { peak: this.peakKiB.buffer, intervalMs } });
    this.worker.unref();
  }

  /** Samples now (on the calling thread) and returns the current RSS in bytes. */
  sample(): number {
    const r = currentRss();
    const kib = Math.round(r / 1024);
    if (kib > Atomics.load(this.peakKiB, 0)) Atomics.store(this.peakKiB, 0, kib);
    return r;
  }

  /** The peak in bytes seen from construction until now. */
  get peak(): number {
    return Atomics.load(this.peakKiB, 0) * 1024;
  }

  /** Stops sampling; the peak seen from construction until now. */
  stop(): number {
    this.sample();
    void this.worker?.terminate();
    this.worker = undefined;
    return this.peak;
  }
}
