// Runs runtime/train.ts's train() in a child process, so a test can SIGKILL it mid-run.
// TypeScript is compiled on load with @swc/core (the transform jest uses). Prints each step.
const fs = require('fs');
const swc = require('@swc/core');

require.extensions['.ts'] = (module, filename) => {
  const { code } = swc.transformSync(fs.readFileSync(filename, 'utf8'), {
    filename,
    jsc: { target: 'es2022', parser: { syntax: 'typescript' } },
    module: { type: 'commonjs' },
  });
  module._compile(code, filename);
};

const { train } = require('../runtime/train.ts');
const [out, steps] = process.argv.slice(2);
train({ out, steps: Number(steps), onStep: ({ step }) => process.stdout.write(`step ${step}\n`) }).then(
  () => process.stdout.write('done\n'),
  (e) => {
    process.stderr.write(`${e.stack}\n`);
    process.exitCode = 1;
  },
);
