/** @type {import('jest').Config} */
module.exports = {
  testEnvironment: '<rootDir>/tests/support/ort-environment.js',
  transform: { '^.+\\.ts$': ['@swc/jest', { jsc: { target: 'es2022' }, module: { type: 'commonjs' } }] },
  testMatch: ['<rootDir>/tests/**/*.test.ts'],
  modulePathIgnorePatterns: ['<rootDir>/dist/'],
  testTimeout: 120000,
  reporters: ['default', '<rootDir>/tests/support/summary-reporter.js'],
};
