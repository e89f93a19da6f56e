// Runs the hollowc CLI (cli/main.ts, from source) in a child process, so a test can kill it
// mid-run, limit its file size, or hold a folder lock against another command.
// TypeScript is compiled on load with @swc/core (the transform jest uses).
require('./register-ts');

const { main } = require('../../cli/main.ts');
main(['node', 'hollowc', ...process.argv.slice(2)]).then((code) => {
  process.exitCode = code;
});
