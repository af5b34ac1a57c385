// One daemon per node: before the daemon touches a map, the program, the API
// socket or the metrics port, it takes an exclusive flock(2) on its state
// directory's lock file and on its bpffs directory. Two daemons on the same
// config share both; two configs that share only the bpffs directory still
// collide on the second. The kernel drops a flock with the last descriptor, so
// a daemon killed with SIGKILL never leaves a stale lock behind.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { flockExclusive } from '../sys/system';
import { XdplbError } from '../control/errors';

export const LOCK_FILE = 'daemon.lock';

export interface DaemonLock {
  release(): void;
}

/**
 * The pid holding a flock on the file with this device and inode, from
 * /proc/locks ("1: FLOCK  ADVISORY  WRITE 4242 00:1b:12345 0 EOF").
 */
export function lockHolder(st: fs.Stats, locks = fs.readFileSync('/proc/locks', 'utf8')): number | undefined {
  const dev = `${major(st.dev).toString(16).padStart(2, '0')}:${minor(st.dev).toString(16).padStart(2, '0')}:${st.ino}`;
  for (const line of locks.split('\n')) {
    const f = line.trim().split(/\s+/);
    if (f[1] === 'FLOCK' && f[5] === dev) return Number(f[4]);
  }
  return undefined;
}

// Linux's dev_t encoding (glibc's gnu_dev_major/minor).
function major(dev: number): number {
  return ((dev >>> 8) & 0xfff) | (Math.floor(dev / 2 ** 32) & ~0xfff);
}
function minor(dev: number): number {
  return (dev & 0xff) | ((dev >>> 12) & ~0xff);
}

function lockOne(target: string, what: string): number {
  const fd = fs.openSync(target, fs.constants.O_RDONLY | (what === 'bpffs' ? fs.constants.O_DIRECTORY : fs.constants.O_CREAT), 0o600);
  if (flockExclusive(fd)) return fd;
  const st = fs.fstatSync(fd);
  fs.closeSync(fd);
  let pid: number | undefined;
  try {
    pid = lockHolder(st);
  } catch {
    // /proc/locks is hidden under the unit's ProcSubset=pid: the holder stays unnamed
  }
  throw XdplbError.failedPrecondition(
    `another xdplb daemon (pid ${pid ?? 'unknown'}) holds ${target}: one daemon per node; stop it first (${what})`,
  );
}

/** Takes both locks or neither; throws a one-line FAILED_PRECONDITION naming the holder's pid. */
export function lockDaemon(node: { stateDir: string; bpffs: string }): DaemonLock {
  fs.mkdirSync(node.stateDir, { recursive: true, mode: 0o700 });
  fs.mkdirSync(node.bpffs, { recursive: true, mode: 0o700 });
  const file = path.join(node.stateDir, LOCK_FILE);
  const fds = [lockOne(file, 'state_dir')];
  try {
    fds.push(lockOne(node.bpffs, 'bpffs'));
  } catch (e) {
    fs.closeSync(fds[0]);
    throw e;
  }
  // For people reading the directory; the holder's pid comes from /proc/locks.
  fs.writeFileSync(file, `${process.pid}\n`);
  return {
    release: () => {
      for (const fd of fds.splice(0)) fs.closeSync(fd);
    },
  };
}
