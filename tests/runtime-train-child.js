// Runs runtime/train/train.ts's train() in a child process, so a test can SIGKILL it mid-run.
// TypeScript is compiled on load with @swc/core (the transform jest uses). Prints each step.
require('./support/register-ts');

const { train } = require('../runtime/train/train.ts');
const [out, steps] = process.argv.slice(2);
train({ out, steps: Number(steps), onStep: ({ step }) => process.stdout.write(`step ${step}\n`) }).then(
  () => process.stdout.write('done\n'),
  (e) => {
    process.stderr.write(`${e.stack}\n`);
    process.exitCode = 1;
  },
);
