// The lab's client: run inside the client namespace (ip netns exec), it talks
// to the VIPs and prints what it saw as JSON on stdout. Three modes:
//
//   client.js requests SPEC   many short TCP connections / UDP datagrams; one
//                             result per request: tuple, answering backend, error
//   client.js session SPEC    one TCP connection kept open: every stdin line is
//                             sent, every answer line printed ("CONNECTED <sport>" first)
//   client.js upload SPEC     one TCP connection uploading N bytes, paced over a
//                             duration; the backend answers with the byte count
//                             and SHA-256, checked here
//
// SPEC is JSON (see the interfaces below).
import * as crypto from 'node:crypto';
import * as dgram from 'node:dgram';
import * as net from 'node:net';
import * as readline from 'node:readline';
import { Address } from '../net/address';

export interface RequestTarget {
  proto: 'tcp' | 'udp';
  vip: string;
  port: number;
  /** requests per source address (ignored when sports is given) */
  count: number;
  /** client addresses, used in turn */
  sources: string[];
  /** fixed source ports: one request per (source, port) */
  sports?: number[];
}

export interface RequestSpec {
  targets: RequestTarget[];
  /** requests in flight at once (default 16) */
  concurrency?: number;
  /** per attempt (default 2000 ms) */
  timeoutMs?: number;
  /** UDP: attempts after the first (default 2) */
  retries?: number;
}

export interface RequestResult {
  proto: 'tcp' | 'udp';
  src: string;
  sport: number;
  vip: string;
  port: number;
  /** the name the backend answered with; null on error */
  backend: string | null;
  error: string | null;
  ms: number;
}

export interface SessionSpec {
  vip: string;
  port: number;
  src?: string;
}

export interface UploadSpec extends SessionSpec {
  bytes: number;
  /** bytes per write (default 16384) */
  chunk?: number;
  /** spread the writes over this long (default 0: as fast as possible) */
  durationMs?: number;
  /** give up after (default 60000 ms) */
  timeoutMs?: number;
}

export interface UploadResult {
  ok: boolean;
  backend: string | null;
  bytes: number;
  sport: number;
  shaOk: boolean;
  ms: number;
  error: string | null;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function tcpRequest(src: string, vip: string, port: number, timeoutMs: number, sport?: number): Promise<{ backend: string | null; error: string | null; sport: number }> {
  return new Promise((resolve) => {
    let done = false;
    let localPort = sport ?? 0;
    let buf = '';
    const sock = net.connect({ host: vip, port, localAddress: src, localPort: sport });
    const finish = (backend: string | null, error: string | null) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      if (error) sock.destroy();
      else sock.end();
      resolve({ backend, error, sport: localPort });
    };
    const timer = setTimeout(() => finish(null, 'timeout'), timeoutMs);
    sock.setNoDelay(true);
    sock.on('connect', () => {
      localPort = sock.localPort ?? 0;
      sock.write('WHO\n');
    });
    sock.on('data', (d: Buffer) => {
      buf += d.toString();
      const nl = buf.indexOf('\n');
      if (nl >= 0) finish(buf.slice(0, nl).trim(), null);
    });
    sock.on('error', (e: NodeJS.ErrnoException) => finish(null, e.code ?? e.message));
    sock.on('close', () => finish(null, 'closed without an answer'));
  });
}

function udpRequest(src: string, vip: string, port: number, timeoutMs: number, retries: number, sport?: number): Promise<{ backend: string | null; error: string | null; sport: number }> {
  return new Promise((resolve) => {
    const s = dgram.createSocket({ type: Address.of(vip).family === 6 ? 'udp6' : 'udp4' });
    let done = false;
    let timer: NodeJS.Timeout | undefined;
    let boundPort = sport ?? 0;
    const finish = (backend: string | null, error: string | null) => {
      if (done) return;
      done = true;
      if (timer) clearTimeout(timer);
      s.close();
      resolve({ backend, error, sport: boundPort });
    };
    s.on('error', (e: NodeJS.ErrnoException) => finish(null, e.code ?? e.message));
    // connected: only datagrams from the VIP:port are delivered
    s.on('message', (msg) => finish(msg.toString().trim(), null));
    s.bind({ address: src, port: sport ?? 0, exclusive: true }, () => {
      boundPort = s.address().port;
      s.connect(port, vip, () => {
        let attempt = 0;
        const send = () => {
          if (done) return;
          if (attempt > retries) return finish(null, 'timeout');
          attempt++;
          s.send('WHO\n', (e) => e && finish(null, (e as NodeJS.ErrnoException).code ?? e.message));
          timer = setTimeout(send, timeoutMs);
        };
        send();
      });
    });
  });
}

export async function runRequests(spec: RequestSpec): Promise<RequestResult[]> {
  const jobs: Array<() => Promise<RequestResult>> = [];
  const timeoutMs = spec.timeoutMs ?? 2000;
  const retries = spec.retries ?? 2;
  for (const t of spec.targets) {
    const pairs: Array<[string, number | undefined]> = [];
    if (t.sports) for (const src of t.sources) for (const p of t.sports) pairs.push([src, p]);
    else for (let i = 0; i < t.count; i++) for (const src of t.sources) pairs.push([src, undefined]);
    for (const [src, sport] of pairs)
      jobs.push(async () => {
        const t0 = process.hrtime.bigint();
        const r = t.proto === 'tcp' ? await tcpRequest(src, t.vip, t.port, timeoutMs, sport) : await udpRequest(src, t.vip, t.port, timeoutMs, retries, sport);
        return { proto: t.proto, src, sport: r.sport, vip: t.vip, port: t.port, backend: r.backend, error: r.error, ms: Number(process.hrtime.bigint() - t0) / 1e6 };
      });
  }
  const results: RequestResult[] = new Array(jobs.length);
  let next = 0;
  const worker = async () => {
    while (next < jobs.length) {
      const i = next++;
      results[i] = await jobs[i]();
    }
  };
  await Promise.all(Array.from({ length: Math.min(spec.concurrency ?? 16, jobs.length) }, worker));
  return results;
}

async function session(spec: SessionSpec): Promise<void> {
  const sock = net.connect({ host: spec.vip, port: spec.port, localAddress: spec.src });
  sock.setNoDelay(true);
  await new Promise<void>((resolve, reject) => {
    sock.once('connect', resolve);
    sock.once('error', reject);
  });
  process.stdout.write(`CONNECTED ${sock.localPort}\n`);
  sock.on('error', (e) => {
    process.stdout.write(`ERROR ${e.message}\n`);
    process.exit(1);
  });
  sock.pipe(process.stdout, { end: false });
  const rl = readline.createInterface({ input: process.stdin });
  rl.on('line', (line) => sock.write(`${line}\n`));
  rl.on('close', () => sock.end());
  await new Promise<void>((resolve) => sock.on('close', () => resolve()));
}

export async function upload(spec: UploadSpec): Promise<UploadResult> {
  const t0 = Date.now();
  const chunk = spec.chunk ?? 16384;
  const data = crypto.randomBytes(spec.bytes);
  const want = crypto.createHash('sha256').update(data).digest('hex');
  const sock = net.connect({ host: spec.vip, port: spec.port, localAddress: spec.src });
  let sport = 0;
  const result = (r: Partial<UploadResult>): UploadResult => ({ ok: false, backend: null, bytes: 0, sport, shaOk: false, ms: Date.now() - t0, error: null, ...r });
  return new Promise<UploadResult>((resolve) => {
    let done = false;
    let buf = '';
    const finish = (r: UploadResult) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      sock.destroy();
      resolve(r);
    };
    const timer = setTimeout(() => finish(result({ error: 'timeout' })), spec.timeoutMs ?? 60000);
    sock.on('error', (e: NodeJS.ErrnoException) => finish(result({ error: e.code ?? e.message })));
    sock.on('close', () => finish(result({ error: 'closed without an answer' })));
    sock.on('data', (d: Buffer) => {
      buf += d.toString();
      const nl = buf.indexOf('\n');
      if (nl < 0) return;
      const [backend, n, sha] = buf.slice(0, nl).trim().split(' ');
      finish(result({ ok: Number(n) === spec.bytes && sha === want, backend, bytes: Number(n), shaOk: sha === want }));
    });
    sock.on('connect', async () => {
      sport = sock.localPort ?? 0;
      sock.write(`UPLOAD ${spec.bytes}\n`);
      const chunks = Math.ceil(spec.bytes / chunk);
      const pace = (spec.durationMs ?? 0) / chunks;
      const start = Date.now();
      for (let i = 0; i < chunks && !done; i++) {
        if (!sock.write(data.subarray(i * chunk, Math.min(spec.bytes, (i + 1) * chunk)))) await new Promise((r) => sock.once('drain', r));
        const ahead = start + (i + 1) * pace - Date.now();
        if (ahead > 0) await sleep(ahead);
      }
    });
  });
}

async function main(argv: string[]): Promise<void> {
  const [mode, specText] = argv;
  const spec = JSON.parse(specText ?? '{}') as unknown;
  if (mode === 'requests') process.stdout.write(JSON.stringify(await runRequests(spec as RequestSpec)) + '\n');
  else if (mode === 'upload') process.stdout.write(JSON.stringify(await upload(spec as UploadSpec)) + '\n');
  else if (mode === 'session') await session(spec as SessionSpec);
  else throw new Error('usage: client.js requests|session|upload SPEC-JSON');
}

if (require.main === module) {
  main(process.argv.slice(2)).then(
    () => process.exit(0),
    (e: Error) => {
      process.stderr.write(`lab client: ${e.message}\n`);
      process.exit(1);
    },
  );
}
