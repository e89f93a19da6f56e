/**
 * Runs a list of stages, each with a key (a hash of its inputs and of the keys it reads from),
 * against the record kept in `<out>/personalize.json`. It knows nothing of models: a finished stage
 * with the same key and its outputs in place is reused; an unfinished one with the same key
 * continues; one that may carry on a finished record under another key does (`continues`); any
 * other starts over after removing its old outputs. The record is saved before and after each
 * stage, so a killed run knows what it was doing.
 */
import * as fs from 'fs';
import * as path from 'path';
import { writeFileAtomic } from '../../compiler/serde';
import { formatBytes } from '../progress';
import { RssSampler } from '../rss';

export const STATE_FILE = 'personalize.json';

export interface StageRecord {
  key: string;
  done: boolean;
  summary?: string;
  seconds?: number;
  peakRssBytes?: number;
  data?: Record<string, unknown>;
}

export interface RunState {
  version: 1;
  stages: Record<string, StageRecord>;
}

export interface StageOutcome {
  summary: string;
  data?: Record<string, unknown>;
  /** `resumed` in the result: whether it continued earlier work (default: whether it was resuming) */
  resumed?: boolean;
}

export interface Stage {
  name: string;
  key: string;
  /** outputs in place for a reuse */
  valid(): boolean;
  /** removes what a fresh run of the stage replaces */
  clean(): void;
  /** Whether a finished record under another key can be carried on instead of starting over. */
  continues?(record: StageRecord): boolean;
  run(resuming: boolean, record: StageRecord): Promise<StageOutcome>;
  /** Hears the record of a reused stage (to restore what its run would have told the caller). */
  reused?(record: StageRecord): void;
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

/**
 * Runs `stages` in order in the run folder `out`; `total` is the count shown in the `[i/total]`
 * labels (callers that finish with a step of their own count it). Returns each stage's result and
 * the highest RSS sampled while any of them ran.
 */
export async function runStages(
  out: string,
  stages: readonly Stage[],
  o: { log: (line: string) => void; total?: number },
): Promise<{ results: StageResult[]; peakRssBytes: number }> {
  const state = readRunState(out);
  const saveState = () => writeFileAtomic(path.join(out, STATE_FILE), JSON.stringify(state, null, 1));
  const total = o.total ?? stages.length;
  const results: StageResult[] = [];
  let processPeak = 0;
  for (let i = 0; i < stages.length; i++) {
    const s = stages[i];
    const rec = state.stages[s.name];
    const label = `[${i + 1}/${total}] ${s.name}`;
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
    const sampler = new RssSampler();
    const started = Date.now();
    let r: StageOutcome;
    try {
      r = await s.run(resuming || continuing, record);
    } finally {
      processPeak = Math.max(processPeak, sampler.stop());
    }
    const seconds = (Date.now() - started) / 1000;
    const peak = sampler.peak;
    state.stages[s.name] = { key: s.key, done: true, summary: r.summary, seconds, peakRssBytes: peak, data: { ...record.data, ...r.data } };
    saveState();
    results.push({ name: s.name, status: (r.resumed ?? resuming) ? 'resumed' : 'ran', summary: r.summary, seconds, peakRssBytes: peak });
    o.log(`${label}: ${r.summary}  (${seconds.toFixed(1)} s, peak RSS ${formatBytes(peak)})`);
  }
  return { results, peakRssBytes: processPeak };
}
