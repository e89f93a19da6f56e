// Runs the hollowc CLI (cli/main.ts, from source) in a child process, so a test can kill it
// mid-run, limit its file size, or hold a folder lock against another command.
// TypeScript is compiled on load with @swc/core (the transform jest uses).
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

const { main } = require('../../cli/main.ts');
main(['node', 'hollowc', ...process.argv.slice(2)]).then((code) => {
  process.exitCode = code;
});
