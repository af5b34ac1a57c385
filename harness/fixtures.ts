// Test fixtures that clean up after themselves: network namespaces, veth pairs
// and bpffs pin directories, each removed in t.teardown even when the test fails.
// Every name starts with "xdplbt" so leftovers of a killed run are recognisable.
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';

// tap's Test type without importing tap's internals.
export interface Teardown {
  teardown(fn: () => void | Promise<void>): void;
}

/**
 * Options for tests that need root (BPF, bpffs, network namespaces): skipped with
 * the reason on any other account, so the suite says what it did not run.
 */
export const needsRoot = {
  skip: process.getuid?.() === 0 ? false : 'needs root: BPF, bpffs and network namespaces',
};

/**
 * Removes what an earlier test process left behind when it was killed before its
 * teardown could run (a timeout, Ctrl-C): namespaces and pin directories whose
 * name carries the pid of a process that no longer exists.
 */
function sweepLeftovers(): void {
  const dead = (name: string) => {
    const m = /^xdplbt[a-z](\d+)x[0-9a-z]+$/.exec(name);
    return m !== null && Number(m[1]) !== process.pid % 100000 && !fs.existsSync(`/proc/${m[1]}`);
  };
  try {
    for (const line of execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' }).split('\n')) {
      const name = line.split(' ')[0];
      if (name && dead(name)) execFileSync('ip', ['netns', 'delete', name]);
    }
    for (const name of fs.readdirSync('/sys/fs/bpf')) if (dead(name)) fs.rmSync(`/sys/fs/bpf/${name}`, { recursive: true, force: true });
    for (const name of fs.readdirSync('/run')) {
      const m = /^xdplbt-(\d+)-/.exec(name);
      if (m && !fs.existsSync(`/proc/${m[1]}`)) fs.rmSync(`/run/${name}`, { recursive: true, force: true });
    }
  } catch {
    // not root, or no bpffs: the tests that need them are skipped anyway
  }
}
if (process.getuid?.() === 0) sweepLeftovers();

let serial = 0;
/** At most 15 characters (IFNAMSIZ - 1): the serial in base 36 fits 1,295 names per process in two. */
function uniqueName(kind: string): string {
  serial++;
  return `xdplbt${kind}${process.pid % 100000}x${serial.toString(36)}`;
}

/** Runs a command, returns stdout; throws with stderr on failure. */
export function sh(cmd: string, ...args: string[]): string {
  return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

/**
 * Keeps the test's main thread, where its BPF_PROG_TEST_RUNs execute, on one
 * CPU until teardown: per-CPU state one run leaves (a flow-cache slot, a
 * pending placement) is seen by the next run only on the same CPU, as a flow's
 * packets stay on one CPU under RSS. Unpinned, a busy machine moves the thread
 * between runs.
 */
export function onOneCpu(t: Teardown, cpu = 0): void {
  sh('taskset', '-pc', String(cpu), String(process.pid));
  t.teardown(() => {
    sh('taskset', '-pc', `0-${os.cpus().length - 1}`, String(process.pid));
  });
}

/** Runs a command inside a namespace (with /sys remounted by ip netns exec). */
export function nsExec(ns: string, cmd: string, ...args: string[]): string {
  return sh('ip', 'netns', 'exec', ns, cmd, ...args);
}

/** A fresh network namespace with loopback up, deleted at teardown. */
export function netns(t: Teardown): string {
  const name = uniqueName('n');
  sh('ip', 'netns', 'add', name);
  t.teardown(() => {
    try {
      sh('ip', 'netns', 'delete', name);
    } catch {
      // already gone
    }
  });
  sh('ip', '-n', name, 'link', 'set', 'lo', 'up');
  return name;
}

export interface Veth {
  /** interface names, both ends; a lives in nsA, b in nsB */
  a: string;
  b: string;
}

/**
 * A veth pair between two namespaces (or both in one), links up. Deleting a
 * namespace deletes its veth ends, so the namespaces' teardown covers it.
 */
export function veth(nsA: string, nsB: string, a = 'veth0', b = 'veth1'): Veth {
  const tmpA = uniqueName('a');
  const tmpB = uniqueName('b');
  sh('ip', 'link', 'add', tmpA, 'type', 'veth', 'peer', 'name', tmpB);
  try {
    sh('ip', 'link', 'set', tmpA, 'netns', nsA, 'name', a);
    sh('ip', 'link', 'set', tmpB, 'netns', nsB, 'name', b);
  } catch (e) {
    try {
      sh('ip', 'link', 'delete', tmpA);
    } catch {
      // moved already; the namespace owns it
    }
    throw e;
  }
  sh('ip', '-n', nsA, 'link', 'set', a, 'up');
  sh('ip', '-n', nsB, 'link', 'set', b, 'up');
  return { a, b };
}

/** Interface index inside a namespace. */
export function ifindexIn(ns: string, dev: string): number {
  const j = JSON.parse(sh('ip', '-n', ns, '-j', 'link', 'show', 'dev', dev)) as Array<{ ifindex: number }>;
  return j[0].ifindex;
}

/** A bpffs directory for pins, removed with everything in it at teardown. */
export function pinDir(t: Teardown): string {
  const dir = `/sys/fs/bpf/${uniqueName('p')}`;
  fs.mkdirSync(dir);
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}
