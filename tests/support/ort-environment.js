// onnxruntime-node checks tensor data with `instanceof` against the typed-array constructors of
// the realm it was loaded in; jest gives each test file fresh ones, so every session.run would
// throw. Sharing the outer realm's constructors fixes that.
const fs = require('fs');
const { TestEnvironment } = require('jest-environment-node');

const SWIFTSHADER_ICD = '/usr/lib/chromium/vk_swiftshader_icd.json';

const SHARED = [
  'Float32Array', 'Float64Array', 'Int8Array', 'Uint8Array', 'Uint8ClampedArray', 'Int16Array',
  'Uint16Array', 'Int32Array', 'Uint32Array', 'BigInt64Array', 'BigUint64Array', 'ArrayBuffer',
  'SharedArrayBuffer', 'DataView', 'Buffer',
];

class OrtEnvironment extends TestEnvironment {
  constructor(config, context) {
    super(config, context);
    for (const name of SHARED) this.global[name] = globalThis[name];
    // jest gives tests a copy of process.env, so the Vulkan loader never sees what a test sets:
    // point this (outer) process at chromium's SwiftShader when it is installed and no driver
    // list is set (runtime/vulkan.ts useSoftwareVulkan; WebGPU tests only).
    if (!process.env.VK_ICD_FILENAMES && !process.env.VK_DRIVER_FILES && fs.existsSync(SWIFTSHADER_ICD)) process.env.VK_ICD_FILENAMES = SWIFTSHADER_ICD;
  }
}

module.exports = OrtEnvironment;
