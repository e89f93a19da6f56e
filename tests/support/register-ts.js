// Lets a plain `node` child process require the project's TypeScript sources: each .ts file is
// compiled on load with @swc/core, the transform jest uses. Required first by the *-child.js scripts.
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
