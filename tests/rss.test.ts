/**
 * runtime/rss.ts samples on a worker thread: a peak reached and gone while the main thread is
 * held (as onnxruntime-node's session.run holds it) is still seen.
 */
import { spawnSync } from 'child_process';
import * as path from 'path';

const REGISTER = path.join(__dirname, 'support', 'register-ts.js');
const RSS = path.join(__dirname, '..', 'runtime', 'rss.ts');

test('256 MiB allocated and freed inside one blocking native call (as session.run) shows in the peak', () => {
  const script = `
    require(${JSON.stringify(REGISTER)});
    const { RssSampler, currentRss } = require(${JSON.stringify(RSS)});
    const sampler = new RssSampler(5);
    setTimeout(() => {
      const before = currentRss();
      // scrypt with N = 2^18, r = 8 works in 128·N·r = 256 MiB that OpenSSL allocates and frees
      // before the call returns: no event-loop turn in between
      require('crypto').scryptSync('x', 'salt', 16, { N: 2 ** 18, r: 8, p: 1, maxmem: 2 ** 29 });
      const after = currentRss();
      const peak = sampler.stop();
      process.stdout.write(JSON.stringify({ before, after, peak }));
    }, 200);
  `;
  const r = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8' });
  expect(r.status).toBe(0);
  const { before, after, peak } = JSON.parse(r.stdout) as { before: number; after: number; peak: number };
  const MiB = 2 ** 20;
  // eslint-disable-next-line no-console
  console.log(`RSS before ${(before / MiB).toFixed(0)} MiB, peak ${(peak / MiB).toFixed(0)} MiB, after ${(after / MiB).toFixed(0)} MiB`);
  expect(after - before).toBeLessThan(64 * MiB); // gone again: only a sampler running during the call saw it
  expect(peak - before).toBeGreaterThan(200 * MiB);
});
