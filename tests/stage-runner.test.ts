/**
 * The personalize stage runner on its own (runtime/personalize/stage-runner.ts), with stages that
 * write marker files: reuse, resume after a failure, start over on a changed key, carry on a
 * finished record (`continues`), and the record it keeps.
 */
import * as fs from 'fs';
import * as path from 'path';
import { RunSoFar, STATE_FILE, Stage, StageRecord, readRunState, runStages } from '../runtime/personalize/stage-runner';
import { tempDir } from './support/fixture';

interface Calls {
  runs: { name: string; resuming: boolean }[];
  cleans: string[];
  reused: string[];
}

function fileStage(dir: string, name: string, key: string, calls: Calls, o: { fail?: boolean; continues?: (r: StageRecord) => boolean } = {}): Stage {
  const file = path.join(dir, `${name}.txt`);
  return {
    name,
    key,
    valid: () => fs.existsSync(file),
    clean: () => {
      calls.cleans.push(name);
      fs.rmSync(file, { force: true });
    },
    continues: o.continues,
    reused: () => calls.reused.push(name),
    run: async (resuming) => {
      calls.runs.push({ name, resuming });
      if (o.fail) throw new Error(`${name} failed`);
      fs.writeFileSync(file, key);
      return { summary: `${name} made`, data: { key } };
    },
  };
}

const fresh = (): Calls => ({ runs: [], cleans: [], reused: [] });

test('stage runner: runs, reuses, resumes a failed stage, starts over on a new key, carries on a finished record', async () => {
  const dir = tempDir('hollowc-stages-');
  const lines: string[] = [];
  const log = (l: string) => lines.push(l);

  let calls = fresh();
  let r = await runStages(dir, [fileStage(dir, 'a', 'k1', calls), fileStage(dir, 'b', 'k1', calls)], { log });
  expect(r.results.map((x) => [x.name, x.status])).toEqual([
    ['a', 'ran'],
    ['b', 'ran'],
  ]);
  expect(lines[0]).toMatch(/^\[1\/2\] a: a made {2}\(\d+\.\d s, peak RSS /);
  expect(readRunState(dir).stages.b).toMatchObject({ key: 'k1', done: true, summary: 'b made', data: { key: 'k1' } });

  // same keys, outputs in place: both reused, nothing cleaned or run
  calls = fresh();
  r = await runStages(dir, [fileStage(dir, 'a', 'k1', calls), fileStage(dir, 'b', 'k1', calls)], { log });
  expect(r.results.map((x) => x.status)).toEqual(['reused', 'reused']);
  expect(calls).toEqual({ runs: [], cleans: [], reused: ['a', 'b'] });

  // b's key changes and it fails: cleaned, recorded as not done, the error goes to the caller
  calls = fresh();
  await expect(runStages(dir, [fileStage(dir, 'a', 'k1', calls), fileStage(dir, 'b', 'k2', calls, { fail: true })], { log })).rejects.toThrow(
    'b failed',
  );
  expect(calls.cleans).toEqual(['b']);
  expect(readRunState(dir).stages.b).toEqual({ key: 'k2', done: false });

  // rerun with the same key: b resumes (not cleaned), a is reused
  calls = fresh();
  r = await runStages(dir, [fileStage(dir, 'a', 'k1', calls), fileStage(dir, 'b', 'k2', calls)], { log });
  expect(r.results.map((x) => x.status)).toEqual(['reused', 'resumed']);
  expect(calls.runs).toEqual([{ name: 'b', resuming: true }]);
  expect(calls.cleans).toEqual([]);

  // a new key whose stage says it can carry on the finished record: run as resuming, its data kept
  calls = fresh();
  r = await runStages(dir, [fileStage(dir, 'a', 'k1', calls), fileStage(dir, 'b', 'k3', calls, { continues: (rec) => rec.key === 'k2' })], { log });
  expect(calls.runs).toEqual([{ name: 'b', resuming: true }]);
  expect(calls.cleans).toEqual([]);
  expect(readRunState(dir).stages.b).toMatchObject({ key: 'k3', done: true });

  // outputs gone under the same key: not reused, run again from scratch
  fs.rmSync(path.join(dir, 'a.txt'));
  calls = fresh();
  r = await runStages(dir, [fileStage(dir, 'a', 'k1', calls)], { log });
  expect(calls.runs).toEqual([{ name: 'a', resuming: false }]);
  expect(calls.cleans).toEqual(['a']);

  // an unreadable record starts from scratch
  fs.writeFileSync(path.join(dir, STATE_FILE), '{not json');
  expect(readRunState(dir)).toEqual({ version: 1, stages: {} });
});

test('stage runner: an `always` stage runs on every run, sees the stages before it and keeps no record', async () => {
  const dir = tempDir('hollowc-stages-always-');
  const seen: RunSoFar[] = [];
  const report: Stage = {
    name: 'report',
    key: '',
    always: true,
    valid: () => true,
    clean: () => {},
    run: async (resuming, _record, soFar) => {
      expect(resuming).toBe(false);
      seen.push(soFar);
      return { summary: `reported ${soFar.results.map((r) => `${r.name} ${r.status}`).join(', ')}` };
    },
  };
  const lines: string[] = [];
  for (let i = 0; i < 2; i++) {
    const r = await runStages(dir, [fileStage(dir, 'a', 'k1', fresh()), report], { log: (l) => lines.push(l) });
    expect(r.results.map((x) => [x.name, x.status])).toEqual([
      ['a', i === 0 ? 'ran' : 'reused'],
      ['report', 'ran'],
    ]);
    expect(r.peakRssBytes).toBe(Math.max(...r.results.filter((x) => x.status !== 'reused').map((x) => x.peakRssBytes)));
  }
  expect(seen.map((s) => s.results.map((r) => r.status))).toEqual([['ran'], ['reused']]);
  expect(lines[1]).toMatch(/^\[2\/2\] report: reported a ran {2}\(\d+\.\d s, peak RSS /);
  expect(Object.keys(readRunState(dir).stages)).toEqual(['a']);
});
