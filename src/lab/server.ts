// The lab's backend server: run inside a backend namespace, bound to the VIPs
// (held on the backend's loopback), it answers with its own name.
//
//   node server.js --name be1 --listen tcp:203.0.113.10:80 --listen udp:[2001:db8:100::10]:53
//
// TCP, line by line:
//   any line              → "<name>\n"
//   "UPLOAD <n>"          → reads n bytes, then "<name> <n> <sha256 hex>\n"
// UDP: any datagram      → "<name>\n", from the VIP it was sent to (the socket
//   is bound to the VIP, so the source is right: the reply goes straight to the
//   client, never through the load balancer).
// Every TCP connection and UDP datagram is one JSON line on stdout (the
// server's log): tests hold these against what clients and counters saw.
import * as crypto from 'node:crypto';
import * as dgram from 'node:dgram';
import * as net from 'node:net';
import { Address, hostPort } from '../net/address';

export interface Listen {
  proto: 'tcp' | 'udp';
  address: string;
  port: number;
}

export function parseListen(text: string): Listen {
  const m = /^(tcp|udp):(?:\[([^\]]+)\]|([^:]+)):(\d+)$/.exec(text);
  if (!m) throw new Error(`--listen ${text}: expected tcp|udp:ADDRESS:PORT (IPv6 in brackets)`);
  const address = m[2] ?? m[3];
  if (!net.isIP(address)) throw new Error(`--listen ${text}: not an IP address`);
  return { proto: m[1] as 'tcp' | 'udp', address, port: Number(m[4]) };
}

export function formatListen(l: Listen): string {
  return `${l.proto}:${hostPort(l.address, l.port)}`;
}

function logRequest(proto: 'tcp' | 'udp', local: string, remote: string): void {
  process.stdout.write(`${JSON.stringify({ msg: 'request', proto, local, remote })}\n`);
}

function serveTcp(name: string, sock: net.Socket): void {
  logRequest('tcp', hostPort(sock.localAddress ?? '', sock.localPort ?? 0), hostPort(sock.remoteAddress ?? '', sock.remotePort ?? 0));
  let buf: Buffer = Buffer.alloc(0);
  let upload: { left: number; total: number; hash: crypto.Hash } | null = null;
  sock.setNoDelay(true);
  sock.on('error', () => sock.destroy());
  sock.on('data', (chunk: Buffer) => {
    buf = buf.length ? Buffer.concat([buf, chunk]) : chunk;
    while (buf.length) {
      if (upload) {
        const take = Math.min(upload.left, buf.length);
        upload.hash.update(buf.subarray(0, take));
        upload.left -= take;
        buf = buf.subarray(take);
        if (upload.left === 0) {
          sock.write(`${name} ${upload.total} ${upload.hash.digest('hex')}\n`);
          upload = null;
        }
        continue;
      }
      const nl = buf.indexOf(10);
      if (nl < 0) {
        if (buf.length > 4096) sock.destroy();
        return;
      }
      const line = buf.subarray(0, nl).toString().trim();
      buf = buf.subarray(nl + 1);
      const m = /^UPLOAD (\d+)$/.exec(line);
      if (m) {
        const n = Number(m[1]);
        upload = { left: n, total: n, hash: crypto.createHash('sha256') };
        if (n === 0) {
          sock.write(`${name} 0 ${upload.hash.digest('hex')}\n`);
          upload = null;
        }
      } else {
        sock.write(`${name}\n`);
      }
    }
  });
  sock.on('end', () => sock.end());
}

async function main(argv: string[]): Promise<void> {
  let name = '';
  const listens: Listen[] = [];
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--name') name = argv[++i] ?? '';
    else if (argv[i] === '--listen') listens.push(parseListen(argv[++i] ?? ''));
    else throw new Error(`unknown argument ${argv[i]}`);
  }
  if (!name || !listens.length) throw new Error('usage: server.js --name NAME --listen tcp|udp:ADDRESS:PORT ...');
  for (const l of listens) {
    if (l.proto === 'tcp') {
      const srv = net.createServer((s) => serveTcp(name, s));
      await new Promise<void>((resolve, reject) => {
        srv.once('error', reject);
        srv.listen({ host: l.address, port: l.port, ipv6Only: Address.of(l.address).family === 6, backlog: 1024 }, resolve);
      });
    } else {
      const s = dgram.createSocket({ type: Address.of(l.address).family === 6 ? 'udp6' : 'udp4' });
      s.on('message', (_msg, rinfo) => {
        logRequest('udp', hostPort(l.address, l.port), hostPort(rinfo.address, rinfo.port));
        s.send(`${name}\n`, rinfo.port, rinfo.address);
      });
      s.on('error', (e) => process.stderr.write(`udp ${formatListen(l)}: ${e.message}\n`));
      await new Promise<void>((resolve, reject) => {
        s.once('error', reject);
        s.bind(l.port, l.address, () => resolve());
      });
    }
  }
  process.stdout.write(`${JSON.stringify({ msg: 'listening', name, pid: process.pid, listens: listens.map(formatListen) })}\n`);
  process.on('SIGTERM', () => process.exit(0));
}

if (require.main === module) {
  main(process.argv.slice(2)).catch((e: Error) => {
    process.stderr.write(`lab server: ${e.message}\n`);
    process.exit(1);
  });
}
