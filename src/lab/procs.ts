// Long-lived lab processes (the daemon, the backend servers): started detached
// inside a namespace with their output in a log file and their pid in a pid
// file, found again by that file, stopped only when /proc says the pid is
// still the process we started (a recycled pid is left alone).
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';

export interface DetachedOptions {
  /** network namespace name */
  ns: string;
  /**
   * nsenter keeps bpffs visible (the daemon needs its pins); `ip netns exec`
   * remounts /sys (fine for the servers).
   */
  via: 'nsenter' | 'ip-netns-exec';
  argv: string[];
  log: string;
  pidFile: string;
  /** dies with the calling process (setpriv --pdeathsig KILL): for tests */
  tied?: boolean;
}

export function startDetached(o: DetachedOptions): number {
  const prefix = o.via === 'nsenter' ? ['nsenter', `--net=/var/run/netns/${o.ns}`] : ['ip', 'netns', 'exec', o.ns];
  const tie = o.tied ? ['setpriv', '--pdeathsig', 'KILL'] : [];
  const argv = [...prefix, ...tie, ...o.argv];
  const fd = fs.openSync(o.log, 'a');
  try {
    // nsenter, ip netns exec and setpriv exec the next program: the pid we get
    // is the program's own.
    const child = spawn(argv[0], argv.slice(1), { detached: !o.tied, stdio: ['ignore', fd, fd] });
    if (child.pid === undefined) throw new Error(`could not start ${argv.join(' ')}`);
    child.unref();
    fs.writeFileSync(o.pidFile, `${child.pid}\n`);
    return child.pid;
  } finally {
    fs.closeSync(fd);
  }
}

/** The command line of a live process, or null. */
export function cmdline(pid: number): string | null {
  try {
    return fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').join(' ');
  } catch {
    return null;
  }
}

/** Pid from a pid file when that process is alive and its command line contains marker. */
export function livePid(pidFile: string, marker: string): number | null {
  let pid: number;
  try {
    pid = Number(fs.readFileSync(pidFile, 'utf8').trim());
  } catch {
    return null;
  }
  if (!Number.isInteger(pid) || pid <= 1) return null;
  const cl = cmdline(pid);
  if (cl === null || !cl.includes(marker)) return null;
  return alive(pid) ? pid : null;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * Stops the process of a pid file (SIGTERM, then SIGKILL after graceMs) and
 * removes the file. True when a process was stopped.
 */
export async function stopPidFile(pidFile: string, marker: string, graceMs = 3000, signal: NodeJS.Signals = 'SIGTERM'): Promise<boolean> {
  const pid = livePid(pidFile, marker);
  fs.rmSync(pidFile, { force: true });
  if (pid === null) return false;
  try {
    process.kill(pid, signal);
  } catch {
    return false;
  }
  const deadline = Date.now() + graceMs;
  while (Date.now() < deadline && alive(pid)) await sleep(25);
  if (alive(pid)) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // gone
    }
    for (let i = 0; i < 100 && alive(pid); i++) await sleep(20);
  }
  return true;
}

/** True while the process exists and is not a zombie. */
export function isAlive(pid: number): boolean {
  return alive(pid);
}

export function signalPid(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(pid, sig);
  } catch {
    // gone
  }
}

function alive(pid: number): boolean {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return !/\) Z /.test(stat);
  } catch {
    return false;
  }
}

/** Waits until the log file has a line matching re, the process died, or the time is up. */
export async function waitForLog(log: string, re: RegExp, pid: number, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    let text = '';
    try {
      text = fs.readFileSync(log, 'utf8');
    } catch {
      // not yet written
    }
    if (re.test(text)) return;
    if (!alive(pid)) throw new Error(`process ${pid} exited; last lines of ${log}:\n${tail(text)}`);
    if (Date.now() > deadline) throw new Error(`not ready after ${timeoutMs / 1000} s; last lines of ${log}:\n${tail(text)}`);
    await sleep(50);
  }
}

function tail(text: string, n = 15): string {
  return text.split('\n').slice(-n).join('\n');
}
