/**
 * Runs a list of stages, each with a key (a hash of its inputs and of the keys it reads from),
 * against the record kept in `<out>/personalize.json`. It knows nothing of models: a finished stage
 * with the same key and its outputs in place is reused; an unfinished one with the same key
 * continues; one that may carry on a finished record under another key does (`continues`); any
 * other starts over after removing its old outputs. The record is saved before and after each
 * stage, so a killed run knows what it was doing. A stage marked `always` (the report) runs on every
 * run and keeps no record. The runner times each stage and samples its peak RSS: stages do not.
 */
import * as fs from 'fs';
import * as path from 'path';
import { writeFileAtomic } from '../../compiler/atomic-files';
import { formatBytes } from '../progress';
import { RssSampler } from '../rss';

export const STATE_FILE = 'personalize.json';

/**
 * What the record file keeps of a stage. `data` is the stage's own (D), read back from a file a
 * user may have edited, hence partial: a stage checks each field before it trusts it.
 */
export interface StageRecord<D extends object = object> {
  key: string;
  done: boolean;
  summary?: string;
  seconds?: number;
  peakRssBytes?: number;
  data?: Partial<D>;
}

export interface RunState {
  version: 1;
  stages: Record<string, StageRecord>;
}

export interface StageOutcome<D extends object = object> {
  summary: string;
  data?: D;
  /** `resumed` in the result: whether it continued earlier work (default: whether it was resuming) */
  resumed?: boolean;
}

/** The stages run so far in this run, for a stage that reports on them. */
export interface RunSoFar {
  results: readonly StageResult[];
  peakRssBytes: number;
}

export interface Stage<D extends object = object> {
  name: string;
  key: string;
  /** Runs on every run, never reused, and keeps no record (cheap outputs derived from the other stages'). */
  always?: boolean;
  /** outputs in place for a reuse */
  valid(): boolean;
  /** removes what a fresh run of the stage replaces */
  clean(): void;
  /** Whether a finished record under another key can be carried on instead of starting over. */
  continues?(record: StageRecord<D>): boolean;
  run(resuming: boolean, record: StageRecord<D>, soFar: RunSoFar): Promise<StageOutcome<D>>;
  /** Hears the record of a reused stage (to restore what its run would have told the caller). */
  reused?(record: StageRecord<D>): void;
}

export interface StageResult {
  name: string;
  status: 'ran' | 'resumed' | 'reused';
  summary: string;
  seconds: number;
  peakRssBytes: number;
}

export function readRunState(out: string): RunState {
  const file = path.join(out, STATE_FILE);
  if (!fs.existsSync(file)) return { version: 1, stages: {} };
  try {
    const s = JSON.parse(fs.readFileSync(file, 'utf8')) as RunState;
    if (s.version === 1 && typeof s.stages === 'object' && s.stages) return s;
  } catch {
    // unreadable: start from scratch (every stage checks its own outputs)
  }
  return { version: 1, stages: {} };
}

/**
 * Fault injection for the kill tests: HOLLOWC_KILL_IN=<stage> SIGKILLs this process in the middle
 * of that stage (after some of its work is on disk, before it is recorded as done).
 */
export function killPoint(stage: string): void {
  if (process.env.HOLLOWC_KILL_IN === stage) process.kill(process.pid, 'SIGKILL');
}

/** Runs `work`, timing it and sampling its peak RSS. */
async function measured<T>(work: () => Promise<T>): Promise<{ value: T; seconds: number; peakRssBytes: number }> {
  const sampler = new RssSampler();
  const started = Date.now();
  try {
    const value = await work();
    return { value, seconds: (Date.now() - started) / 1000, peakRssBytes: sampler.peak };
  } finally {
    sampler.stop();
  }
}

/**
 * Runs `stages` in order in the run folder `out`. Returns each stage's result and the highest RSS
 * sampled while any of them ran.
 */
export async function runStages(
  out: string,
  stages: readonly Stage[],
  o: { log: (line: string) => void },
): Promise<RunSoFar & { results: StageResult[] }> {
  const state = readRunState(out);
  const saveState = () => writeFileAtomic(path.join(out, STATE_FILE), JSON.stringify(state, null, 1));
  const results: StageResult[] = [];
  let processPeak = 0;
  const logRan = (label: string, r: StageResult) =>
    o.log(`${label}: ${r.summary}  (${r.seconds.toFixed(1)} s, peak RSS ${formatBytes(r.peakRssBytes)})`);
  for (let i = 0; i < stages.length; i++) {
    const s = stages[i];
    const label = `[${i + 1}/${stages.length}] ${s.name}`;
    if (s.always) {
      const soFar = { results: [...results], peakRssBytes: processPeak };
      const m = await measured(() => s.run(false, { key: s.key, done: false }, soFar));
      processPeak = Math.max(processPeak, m.peakRssBytes);
      results.push({ name: s.name, status: 'ran', summary: m.value.summary, seconds: m.seconds, peakRssBytes: m.peakRssBytes });
      logRan(label, results[results.length - 1]);
      continue;
    }
    const rec = state.stages[s.name];
    if (rec && rec.key === s.key && rec.done && s.valid()) {
      results.push({
        name: s.name,
        status: 'reused',
        summary: rec.summary ?? '',
        seconds: rec.seconds ?? 0,
        peakRssBytes: rec.peakRssBytes ?? 0,
      });
      o.log(`${label}: reused (inputs unchanged): ${rec.summary ?? ''}`);
      s.reused?.(rec);
      continue;
    }
    const resuming = !!rec && rec.key === s.key && !rec.done;
    const continuing = !resuming && !!rec && !!s.continues?.(rec);
    if (!resuming && !continuing) s.clean();
    const record: StageRecord = resuming ? rec : continuing ? { key: s.key, done: false, data: rec.data } : { key: s.key, done: false };
    state.stages[s.name] = record;
    saveState();
    const m = await measured(() => s.run(resuming || continuing, record, { results: [...results], peakRssBytes: processPeak }));
    const { value: r, seconds, peakRssBytes } = m;
    processPeak = Math.max(processPeak, peakRssBytes);
    state.stages[s.name] = { key: s.key, done: true, summary: r.summary, seconds, peakRssBytes, data: { ...record.data, ...r.data } };
    saveState();
    results.push({ name: s.name, status: (r.resumed ?? resuming) ? 'resumed' : 'ran', summary: r.summary, seconds, peakRssBytes });
    logRan(label, results[results.length - 1]);
  }
  return { results, peakRssBytes: processPeak };
}
