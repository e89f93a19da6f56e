/**
 * Files written whole or not at all: every writer (compile's artifacts and external data, the
 * runtime's store, checkpoints, reports, images) writes a temporary sibling and renames it, so a
 * reader never sees half a file and a kill leaves the previous file intact. It lives in compiler/
 * because compile and the runtime both write this way; the runtime uses compiler/'s file and
 * contract modules, never its passes (tests/architecture.test.ts lists which). folder-lock.ts
 * removes the temporaries a killed writer left.
 */
import * as fs from 'fs';
import * as path from 'path';

/** The temporary sibling names writers use: `<name>.tmp-<pid>-<time>`. */
export const TEMP_FILE_PATTERN = /\.tmp-(\d+)-\d+$/;

export function tempSibling(file: string): string {
  return `${path.resolve(file)}.tmp-${process.pid}-${Date.now()}`;
}

/** Writes to a temporary sibling and renames, so a reader never sees half a file. */
export function writeFileAtomic(file: string, data: Uint8Array | string): void {
  const tmp = tempSibling(file);
  try {
    fs.writeFileSync(tmp, data);
    fs.renameSync(tmp, file);
  } catch (e) {
    fs.rmSync(tmp, { force: true });
    throw e;
  }
}

/**
 * Puts the finished folder `tmp` at `target`, replacing what is there: the old folder is moved
 * aside first and put back if the rename fails, so `target` is always the old or the new whole.
 */
export function replaceFolder(tmp: string, target: string): void {
  if (!fs.existsSync(target)) {
    fs.renameSync(tmp, target);
    return;
  }
  const old = `${target}.old-${process.pid}-${Date.now()}`;
  fs.renameSync(target, old);
  try {
    fs.renameSync(tmp, target);
  } catch (e) {
    fs.renameSync(old, target);
    throw e;
  }
  fs.rmSync(old, { recursive: true, force: true });
}
