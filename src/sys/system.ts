// The addon's system calls that are not BPF: network namespaces, interface
// indexes, CPUs, sd_notify and flock.
import { native } from './addon';

/**
 * Runs fn with the calling thread inside the named network namespace
 * (/var/run/netns/NAME or a path), then returns to the original one. Only
 * synchronous work is inside: anything fn schedules runs back outside.
 */
export function withNetns<T>(ns: string, fn: () => T): T {
  const N = native();
  const saved = N.netnsEnter(ns.includes('/') ? ns : `/var/run/netns/${ns}`);
  try {
    return fn();
  } finally {
    N.netnsRestore(saved);
  }
}

/** Interface index by name, in the calling thread's network namespace. */
export function ifIndex(name: string): number {
  return native().ifIndex(name);
}

export function possibleCpus(): number {
  return native().possibleCpus();
}

/** sd_notify(3): false when not started by systemd with a notify socket. */
export function sdNotify(state: string): boolean {
  return native().sdNotify(state);
}

/** flock(fd, LOCK_EX | LOCK_NB): false when another open file holds the lock. */
export function flockExclusive(fd: number): boolean {
  return native().flockExclusive(fd);
}
