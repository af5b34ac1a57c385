// The daemon as systemd runs it, without systemd as PID 1: a notify socket the
// test owns (python3 binds it: Node.js cannot bind a unix datagram socket),
// the daemon spawned with the unit's capability set or less, and /proc mounted
// as the unit's ProcSubset=pid / ProtectProc=invisible mount it.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import * as path from 'node:path';
import type { DaemonFixture } from './daemon';
import type { Teardown } from './fixtures';

const NOTIFY_LISTENER = `
import json, socket, sys, time
address, api = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind("\\0" + address[1:] if address.startswith("@") else address)
print(json.dumps({"listening": True}), flush=True)
while True:
    data = s.recv(65536)
    up = False
    try:
        c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        c.connect(api)
        c.close()
        up = True
    except OSError:
        pass
    print(json.dumps({"msg": data.decode(), "apiListening": up, "t": time.monotonic()}), flush=True)
`;

export interface Notification {
  msg: string;
  /** the daemon's API socket accepted a connection when the message arrived */
  apiListening: boolean;
}

export interface NotifyListener {
  /** what NOTIFY_SOCKET is set to: a path, or '@name' for an abstract socket */
  address: string;
  messages: Notification[];
  /** the next message (after those already returned) for which pred holds */
  next(pred: (n: Notification) => boolean, ms?: number): Promise<Notification>;
  /** resolves once every message sent before the call is in `messages` (a marker sent after them has arrived) */
  flush(): Promise<void>;
  /** stops listening; the socket file stays until the test removes it */
  close(): void;
}

/** The message's fields: "READY=1\nSTATUS=x" -> { READY: '1', STATUS: 'x' }. */
export function fields(n: Notification): Record<string, string> {
  return Object.fromEntries(n.msg.split('\n').map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]));
}

/**
 * A unix datagram socket that collects what is sent to it: a file in the
 * fixture's directory, or an abstract name, which belongs to a network
 * namespace: the daemon's, or the test's (out of the daemon's reach).
 */
export async function notifyListener(t: Teardown, d: DaemonFixture, o: { abstract?: 'daemon' | 'test' } = {}): Promise<NotifyListener> {
  const address = o.abstract ? `@xdplb-notify-${path.basename(d.dir)}-${o.abstract}` : path.join(d.dir, 'notify.sock');
  const argv = ['/usr/bin/python3', '-c', NOTIFY_LISTENER, address, d.socket];
  const py = o.abstract === 'daemon' ? spawn('nsenter', [`--net=/var/run/netns/${d.topo.lbNs}`, ...argv], { stdio: ['ignore', 'pipe', 'inherit'] }) : spawn(argv[0], argv.slice(1), { stdio: ['ignore', 'pipe', 'inherit'] });
  const close = () => void py.kill('SIGKILL');
  t.teardown(close);
  const messages: Notification[] = [];
  let buf = '';
  let listening!: () => void;
  const ready = new Promise<void>((r) => (listening = r));
  py.stdout!.on('data', (chunk: Buffer) => {
    buf += chunk.toString();
    let nl;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const m = JSON.parse(buf.slice(0, nl)) as Notification & { listening?: boolean };
      buf = buf.slice(nl + 1);
      if (m.listening) listening();
      else messages.push(m);
    }
  });
  await ready;
  let seen = 0;
  const next = async (pred: (n: Notification) => boolean, ms = 15000) => {
    const deadline = Date.now() + ms;
    for (;;) {
      while (seen < messages.length) {
        const n = messages[seen++];
        if (pred(n)) return n;
      }
      if (Date.now() > deadline) throw new Error(`no matching notification in ${ms} ms; got ${JSON.stringify(messages)}\n${d.logs.join('\n')}`);
      await new Promise((r) => setTimeout(r, 20));
    }
  };
  const flush = async () => {
    const marker = `FLUSH=${messages.length}-${Date.now()}`;
    const send = ['/usr/bin/python3', '-c', 'import socket, sys; a = sys.argv[1]; socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(sys.argv[2].encode(), "\\0" + a[1:] if a.startswith("@") else a)', address, marker];
    const r = o.abstract === 'daemon' ? spawnSync('nsenter', [`--net=/var/run/netns/${d.topo.lbNs}`, ...send]) : spawnSync(send[0], send.slice(1));
    if (r.status !== 0) throw new Error(`flush marker not sent: ${r.stderr}`);
    const deadline = Date.now() + 15000;
    while (!messages.some((m) => m.msg === marker)) {
      if (Date.now() > deadline) throw new Error('flush marker not received');
      await new Promise((res) => setTimeout(res, 20));
    }
    messages.splice(messages.findIndex((m) => m.msg === marker), 1);
    seen = Math.min(seen, messages.length);
  };
  return { address, messages, next, close, flush };
}

export interface SpawnOptions {
  /** setpriv options (capabilities) */
  setpriv?: string[];
  env?: NodeJS.ProcessEnv;
  /** /proc as the unit mounts it (ProcSubset=pid, ProtectProc=invisible), in a mount namespace of the daemon's own */
  procSubsetPid?: boolean;
}

/** The argv prefix that runs a command with /proc as ProcSubset=pid leaves it. */
export const PROC_SUBSET_PID = ['unshare', '--mount', '--propagation', 'private', 'sh', '-c', 'mount -t proc -o subset=pid,hidepid=invisible proc /proc && exec "$@"', 'sh'];

/** The daemon in the fixture's namespace, spawned by the test; the fixture kills it at teardown. */
export function spawnDaemon(d: DaemonFixture, o: SpawnOptions = {}): ChildProcess & { exited: Promise<number>; stop(): Promise<number> } {
  const argv = d.daemonArgv();
  const i = argv.indexOf('setpriv');
  argv.splice(i + 1, 0, ...(o.setpriv ?? []));
  if (o.procSubsetPid) argv.splice(i, 0, ...PROC_SUBSET_PID);
  const proc = spawn('nsenter', argv, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...o.env } });
  const collect = (c: Buffer) => d.logs.push(...c.toString().split('\n').filter(Boolean));
  proc.stdout.on('data', collect);
  proc.stderr.on('data', collect);
  d.proc = proc;
  // 'close', not 'exit': the daemon's last log lines may still be in the pipes at its exit
  const exited = new Promise<number>((r) => proc.once('close', (code, sig) => r(code ?? (sig ? 128 : -1))));
  /** SIGTERM; resolves with the exit code once every log line is in */
  const stop = () => {
    proc.kill('SIGTERM');
    return exited;
  };
  return Object.assign(proc, { exited, stop });
}

/** Waits for a log line for which pred holds; throws with the logs when the daemon exits first or after ms. */
export async function logLine(d: DaemonFixture, pred: (line: string) => boolean, ms = 15000): Promise<string> {
  const deadline = Date.now() + ms;
  for (;;) {
    const l = d.logs.find(pred);
    if (l) return l;
    if ((d.proc && d.proc.exitCode !== null) || Date.now() > deadline) throw new Error(`no such log line (daemon ${d.proc?.exitCode === null ? 'running' : `exited ${d.proc?.exitCode}`}):\n${d.logs.join('\n')}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** The JSON log lines with this msg. */
export function logged(d: DaemonFixture, msg: string): Array<Record<string, unknown>> {
  return d.logs.filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as Record<string, unknown>).filter((l) => l.msg === msg);
}
