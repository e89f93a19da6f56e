// Trains in a child process started with --expose-gc and prints RSS (after a full GC) at the
// steps given, so a test can tell a leak from garbage not yet collected.
require('./register-ts');

const { train } = require('../../runtime/train/train.ts');
const [out, steps, ...at] = process.argv.slice(2);
const marks = new Set(at.map(Number));
train({
  out,
  steps: Number(steps),
  checkpointEvery: 1000,
  onStep: ({ step }) => {
    if (!marks.has(step)) return;
    global.gc();
    process.stdout.write(`${JSON.stringify({ step, rss: process.memoryUsage().rss })}\n`);
  },
}).catch((e) => {
  process.stderr.write(`${e.stack}\n`);
  process.exitCode = 1;
});
