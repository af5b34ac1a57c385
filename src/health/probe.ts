// One probe of one backend: TCP connect (optionally a request and an expected
// reply), HTTP(S) GET with an expected status, or a UDP request with a reply.
// Sent from the daemon's own network namespace to the backend's address
// directly. Everything is asynchronous sockets with a timer: a probe never
// blocks the event loop, and it always settles, by its timeout at the latest.
import * as dgram from 'node:dgram';
import * as http from 'node:http';
import * as https from 'node:https';
import * as net from 'node:net';
import type { HealthCheckSpec } from '../control/model';

export interface ProbeResult {
  ok: boolean;
  /** why it failed: an errno name, "timeout", "status 503", ... */
  error?: string;
}

export type ProbeFn = (address: string, port: number, check: HealthCheckSpec) => Promise<ProbeResult>;

/** Replies are searched for `expect` within this many bytes. */
const MAX_REPLY = 64 * 1024;
const USER_AGENT = 'xdplb-health';

function settle(timeoutMs: number, start: (done: (r: ProbeResult) => void) => () => void): Promise<ProbeResult> {
  return new Promise((resolve) => {
    let settled = false;
    let cleanup: () => void = () => undefined;
    const done = (r: ProbeResult) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      cleanup();
      resolve(r);
    };
    const timer = setTimeout(() => done({ ok: false, error: `timeout after ${timeoutMs} ms` }), timeoutMs);
    try {
      cleanup = start(done);
    } catch (e) {
      done({ ok: false, error: (e as Error).message });
    }
    if (settled) cleanup();
  });
}

const errText = (e: NodeJS.ErrnoException) => e.code ?? e.message;

export function tcpProbe(address: string, port: number, check: HealthCheckSpec): Promise<ProbeResult> {
  return settle(check.timeout, (done) => {
    const sock = net.connect({ host: address, port, noDelay: true });
    let reply = '';
    sock.once('connect', () => {
      if (check.send) sock.write(check.send);
      if (!check.expect) done({ ok: true });
    });
    sock.on('data', (d: Buffer) => {
      reply = (reply + d.toString('latin1')).slice(-MAX_REPLY);
      if (check.expect && reply.includes(check.expect)) done({ ok: true });
    });
    sock.once('error', (e) => done({ ok: false, error: errText(e) }));
    sock.once('close', () => done({ ok: false, error: 'closed before the expected reply' }));
    return () => sock.destroy();
  });
}

export function httpProbe(address: string, port: number, check: HealthCheckSpec): Promise<ProbeResult> {
  const mod = check.type === 'https' ? https : http;
  const hostHeader = net.isIPv6(address) ? `[${address}]:${port}` : `${address}:${port}`;
  return settle(check.timeout, (done) => {
    const req = mod.request({
      host: address,
      port,
      method: 'GET',
      path: check.path ?? '/',
      agent: false,
      headers: { host: hostHeader, 'user-agent': USER_AGENT, connection: 'close', accept: '*/*' },
      // A health check proves the backend answers, not who it is.
      rejectUnauthorized: false,
    });
    req.once('response', (res) => {
      res.resume();
      const want = check.expectStatus ?? 200;
      done(res.statusCode === want ? { ok: true } : { ok: false, error: `status ${res.statusCode}, expected ${want}` });
    });
    req.once('error', (e) => done({ ok: false, error: errText(e) }));
    req.end();
    return () => req.destroy();
  });
}

export function udpProbe(address: string, port: number, check: HealthCheckSpec): Promise<ProbeResult> {
  return settle(check.timeout, (done) => {
    const sock = dgram.createSocket(net.isIPv6(address) ? 'udp6' : 'udp4');
    sock.on('message', (msg: Buffer) => {
      if (!check.expect || msg.toString('latin1').includes(check.expect)) done({ ok: true });
    });
    // A connected socket learns of ICMP port unreachable as ECONNREFUSED.
    sock.once('error', (e) => done({ ok: false, error: errText(e) }));
    sock.connect(port, address, () => sock.send(Buffer.from(check.send ?? '', 'latin1')));
    return () => {
      try {
        sock.close();
      } catch {
        // closed already
      }
    };
  });
}

export const probe: ProbeFn = (address, port, check) => {
  switch (check.type) {
    case 'tcp':
      return tcpProbe(address, port, check);
    case 'http':
    case 'https':
      return httpProbe(address, port, check);
    case 'udp':
      return udpProbe(address, port, check);
  }
};
