// runtime/session.ts for a child process of tests/webgpu.test.ts (compiled on load with
// @swc/core, the transform jest uses), so that test can start WebGPU with another environment.
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

module.exports = require('../../runtime/session.ts');
