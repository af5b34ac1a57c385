// Recorder tests: a daemon with one IPv4 and one IPv6 service, a frame sender
// on the peer veth (live-frames test runs, so every frame is real and counted),
// and tshark reading back what the recorder wrote.
import { spawnSync } from 'node:child_process';
import { daemonFixture, PEER_MAC, peerSender, rpc, type DaemonFixture } from './daemon';
import type { Teardown } from './fixtures';
import { ether, ipv4, ipv6, tcp, TCP_ACK } from './packets';
import type { Client } from '../src/client/client';

export const VIP4 = '203.0.113.10';
export const VIP6 = '2001:db8:100::10';

export const SERVICES = `
  - name: web4
    vip: ${VIP4}
    port: 80
    protocol: tcp
    backends:
      - address: 198.51.100.11
      - address: 198.51.100.12
  - name: web6
    vip: ${VIP6}
    port: 80
    protocol: tcp
    backends:
      - address: 2001:db8:200::11
      - address: 2001:db8:200::12
`;

export interface RecorderRig {
  d: DaemonFixture;
  recorder: Client;
  /** a client frame to a VIP: Ethernet from the peer to lb0 */
  frame(o: { src: string; dst: string; sport: number; dport?: number; payload: number }): Buffer;
  /** sends each frame once through lb0, for real */
  send(frames: readonly Buffer[]): void;
}

export async function recorderRig(t: Teardown): Promise<RecorderRig> {
  const d = await daemonFixture(t, { servicesYaml: SERVICES });
  await d.start();
  const peer = peerSender(t, d);
  const recorder = d.client('Recorder');
  return {
    d,
    recorder,
    frame: (o) => {
      const l4 = tcp({ sport: o.sport, dport: o.dport ?? 80, flags: TCP_ACK, payload: Buffer.alloc(o.payload, o.sport & 0xff) });
      const l3 = o.dst.includes(':') ? ipv6({ src: o.src, dst: o.dst }, l4) : ipv4({ src: o.src, dst: o.dst }, l4);
      return ether(l3, { dst: peer.lbMac, src: PEER_MAC });
    },
    send: (frames) => void peer.send(frames),
  };
}

/** tshark's fields of every frame of a capture file (or of `input` on stdin with file "-"). */
export function tsharkRows(file: string, fields: readonly string[], input?: Buffer): string[][] {
  const args = ['-r', file, '-T', 'fields', '-E', 'separator=|', '-E', 'occurrence=a', '-E', 'aggregator=,', ...fields.flatMap((f) => ['-e', f])];
  const r = spawnSync('tshark', args, { input, encoding: 'utf8', maxBuffer: 64 << 20 });
  if (r.status !== 0) throw new Error(`tshark -r ${file}: exit ${r.status}: ${r.stderr}`);
  return r.stdout
    .split('\n')
    .filter((l) => l !== '')
    .map((l) => l.split('|'));
}

export { rpc };

/** Waits until cond() holds (polling), or throws after ms. */
export async function until(cond: () => boolean | Promise<boolean>, ms: number, what: string): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}
