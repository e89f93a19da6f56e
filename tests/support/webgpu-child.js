// runtime/session.ts for a child process of tests/webgpu.test.ts (compiled on load with
// @swc/core, the transform jest uses), so that test can start WebGPU with another environment.
require('./register-ts');

module.exports = require('../../runtime/ort/session.ts');
