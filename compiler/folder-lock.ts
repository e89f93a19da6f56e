/**
 * One writer per folder. A command that writes a compiled folder (compile, precompute, train,
 * bake) holds `<dir>/.hollowc.lock` while it runs: a second command refuses with the holder's pid,
 * and a lock left by a process that no longer exists (killed, crashed) is taken over. Taking a
 * lock this process already holds is a no-op, so a command may lock around library calls that lock.
 * Taking a lock also removes the temporary files of atomic writes (`<name>.tmp-<pid>-<time>`)
 * that a writer which no longer runs left behind: a kill in the middle of a checkpoint write
 * would otherwise leave one for good.
 */
import * as fs from 'fs';
import * as path from 'path';
import { TEMP_FILE_PATTERN } from './atomic-files';
import { HollowcError } from './errors';

export const LOCK_FILE = '.hollowc.lock';

interface LockInfo {
  pid: number;
  command: string;
  started: string;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    // EPERM: it exists but belongs to someone else.
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

function readLock(file: string): LockInfo | undefined {
  try {
    const info = JSON.parse(fs.readFileSync(file, 'utf8')) as LockInfo;
    return Number.isInteger(info.pid) ? info : undefined;
  } catch {
    return undefined; // unreadable or half-written: its writer died before finishing it
  }
}

/**
 * Takes the lock of `dir` for `command`; returns the release function. With `create` the folder
 * is made first; without, a folder that does not exist has nothing to protect (the command then
 * fails on its own terms) and the lock is a no-op.
 */
export function lockFolder(dir: string, command: string, options: { create?: boolean } = {}): () => void {
  if (options.create) fs.mkdirSync(dir, { recursive: true });
  else if (!fs.existsSync(dir) || !fs.statSync(dir).isDirectory()) return () => {};
  const file = path.join(dir, LOCK_FILE);
  const mine: LockInfo = { pid: process.pid, command, started: new Date().toISOString() };
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      fs.writeFileSync(file, JSON.stringify(mine), { flag: 'wx' });
      removeDeadWritersTemps(dir);
      return () => {
        if (readLock(file)?.pid === process.pid) fs.rmSync(file, { force: true });
      };
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
    }
    const holder = readLock(file);
    if (holder && holder.pid !== process.pid && alive(holder.pid)) {
      throw new HollowcError(
        `another hollowc (pid ${holder.pid}, ${holder.command}, since ${holder.started}) is writing this folder: wait for it or stop it`,
        dir,
      );
    }
    // Held by this process already (a command calling a library step that locks too).
    if (holder?.pid === process.pid) return () => {};
    // The holder is gone: take the lock over.
    fs.rmSync(file, { force: true });
  }
  throw new HollowcError('could not take the folder lock (another process keeps taking it)', dir);
}

function removeDeadWritersTemps(dir: string, depth = 4): void {
  let entries: fs.Dirent[];
  try {
    entries = fs.readdirSync(dir, { withFileTypes: true });
  } catch {
    return;
  }
  for (const e of entries) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) {
      if (depth > 0) removeDeadWritersTemps(p, depth - 1);
      continue;
    }
    const m = TEMP_FILE_PATTERN.exec(e.name);
    if (m && e.isFile() && !alive(Number(m[1]))) fs.rmSync(p, { force: true });
  }
}

export function withFolderLock<T>(dir: string, command: string, fn: () => T): T {
  const release = lockFolder(dir, command);
  try {
    return fn();
  } finally {
    release();
  }
}

export async function withFolderLockAsync<T>(dir: string, command: string, fn: () => Promise<T>): Promise<T> {
  const release = lockFolder(dir, command);
  try {
    return await fn();
  } finally {
    release();
  }
}
