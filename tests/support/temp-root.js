// Every test, and every process a test starts (the CLI, chromium, workers), makes its temporary
// folders under one root per run, removed when the run ends. Tests made them in os.tmpdir() and
// few removed them: runs on one machine had left 51 GB there, and CI's npm ci ran out of space.
const fs = require('fs');
const os = require('os');
const path = require('path');

const ROOT_ENV = 'HOLLOWC_TEST_TMP_ROOT';

async function setup() {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'hollowc-jest-'));
  process.env[ROOT_ENV] = root;
  // Jest starts its workers after global setup, so they (and their children) inherit this.
  process.env.TMPDIR = root;
}

async function teardown() {
  const root = process.env[ROOT_ENV];
  if (!root) return;
  if (process.env.HOLLOWC_KEEP_TEST_TMP) {
    process.stderr.write(`\ntest temporary files kept in ${root}\n`);
    return;
  }
  fs.rmSync(root, { recursive: true, force: true });
}

module.exports = { setup, teardown };
