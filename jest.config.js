const os = require('os');

/** @type {import('jest').Config} */
module.exports = {
  // Jest's default on 2 cores is 1 worker; 2 finished CI's suite in 783 s instead of 917 s (most
  // suites wait on child processes, SwiftShader or the file system more than on a core).
  maxWorkers: Math.max(2, os.availableParallelism() - 1),
  testEnvironment: '<rootDir>/tests/support/ort-environment.js',
  transform: { '^.+\\.ts$': ['@swc/jest', { jsc: { target: 'es2022' }, module: { type: 'commonjs' } }] },
  testMatch: ['<rootDir>/tests/**/*.test.ts'],
  modulePathIgnorePatterns: ['<rootDir>/dist/'],
  testTimeout: 120000,
  globalSetup: '<rootDir>/tests/support/global-setup.js',
  globalTeardown: '<rootDir>/tests/support/global-teardown.js',
  reporters: ['default', '<rootDir>/tests/support/summary-reporter.js'],
};
