/**
 * cli/allocator.ts: `hollowc train` starts itself again with the glibc settings (once), other
 * commands and processes that have them run as they are.
 */
import * as fs from 'fs';
import * as path from 'path';
import { MALLOC_ENV, rerunWithAllocatorSettings } from '../cli/allocator';
import { tempDir } from './support/fixture';

const KEYS = [...Object.keys(MALLOC_ENV), 'HOLLOWC_MALLOC'];

function withEnv<T>(env: Record<string, string | undefined>, f: () => T): T {
  const saved = Object.fromEntries(KEYS.map((k) => [k, process.env[k]]));
  try {
    for (const k of KEYS) delete process.env[k];
    Object.assign(process.env, env);
    return f();
  } finally {
    for (const k of KEYS) delete process.env[k];
    for (const [k, v] of Object.entries(saved)) if (v !== undefined) process.env[k] = v;
  }
}

test('train, personalize and demo rerun in a child that has the settings and returns its exit code; others run here', () => {
  const script = path.join(tempDir('hollowc-alloc-'), 'main.js');
  // Stands in for the CLI: reports what it was started with.
  fs.writeFileSync(
    script,
    `require('fs').writeFileSync(${JSON.stringify(`${script}.out`)}, JSON.stringify({ argv: process.argv.slice(2), threshold: process.env.MALLOC_MMAP_THRESHOLD_ })); process.exitCode = 7;\n`,
  );
  const argv = [process.execPath, script, 'train', 'out', '--steps', '3'];
  if (process.platform !== 'linux') {
    expect(withEnv({}, () => rerunWithAllocatorSettings(argv))).toBeUndefined();
    return;
  }
  expect(withEnv({}, () => rerunWithAllocatorSettings(argv))).toBe(7);
  expect(JSON.parse(fs.readFileSync(`${script}.out`, 'utf8'))).toEqual({
    argv: ['train', 'out', '--steps', '3'],
    threshold: MALLOC_ENV.MALLOC_MMAP_THRESHOLD_,
  });
  fs.rmSync(`${script}.out`);
  // personalize and demo train in the same process as their other stages: they rerun too
  for (const command of ['personalize', 'demo']) {
    expect(withEnv({}, () => rerunWithAllocatorSettings([process.execPath, script, command, '--quiet']))).toBe(7);
    expect(JSON.parse(fs.readFileSync(`${script}.out`, 'utf8')).threshold).toBe(MALLOC_ENV.MALLOC_MMAP_THRESHOLD_);
    fs.rmSync(`${script}.out`);
  }
  // already set (the child itself), opted out, or another command: run in this process
  expect(withEnv(MALLOC_ENV, () => rerunWithAllocatorSettings(argv))).toBeUndefined();
  expect(withEnv({ HOLLOWC_MALLOC: 'default' }, () => rerunWithAllocatorSettings(argv))).toBeUndefined();
  expect(withEnv({}, () => rerunWithAllocatorSettings([process.execPath, script, 'compile', 'unet.onnx']))).toBeUndefined();
  expect(fs.existsSync(`${script}.out`)).toBe(false);
});
