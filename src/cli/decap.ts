// `xdplb decap attach | detach | status`: the backend side of DSR, run on the
// backend itself. Each interface gets its own bpffs directory for the maps and
// programs, so two decapsulators on one host never share a map or collide on a
// pin name (bpftool's loadall pins by-name maps at the bpffs root).
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import { isIP } from 'node:net';
import * as path from 'node:path';
import { Command, Option } from 'commander';
import * as bpf from '../datapath/bpf';
import * as sys from '../sys/system';
import { decodeLocalKey, decodeRevNatKey, decodeRevNatVal, encodeLocalKey } from '../datapath/decap-layout';
import { IPPROTO_TCP } from '../datapath/layout';
import {
  attachRevNatIn,
  Decap,
  DECAP_LOCAL_MAP,
  DECAP_PROG_PIN,
  pinnedDecapCounters,
  REVNAT_MAP,
  syncPinnedRevNat,
  type RevNat,
} from '../lab/decap';
import { render, table, type OutputFormat } from '../client/output';

export const DECAP_PIN_ROOT = '/sys/fs/bpf/xdplb-decap';

function fail(e: unknown): never {
  process.stderr.write(`xdplb decap: ${e instanceof Error ? e.message : String(e)}\n`);
  process.exit(1);
}

/** "198.51.100.11", "2001:db8:200::11" or "any" (every tunnel packet). */
export function parseLocalAddress(text: string): string | 'any' {
  if (text === 'any') return text;
  if (!isIP(text)) throw new Error(`--local ${text}: expected an IPv4 or IPv6 address, or "any"`);
  return text;
}

/** "tcp/203.0.113.10:80=8080" or "udp/[2001:db8:100::10]:53=5353": service port = backend port. */
export function parseDnat(text: string): RevNat {
  const m = /^(tcp|udp)\/(?:\[([^\]]+)\]|([^:/\]]+)):(\d+)=(\d+)$/.exec(text);
  const form = 'expected PROTO/VIP:SERVICE_PORT=BACKEND_PORT, e.g. tcp/203.0.113.10:80=8080 or tcp/[2001:db8:100::10]:80=8080';
  if (!m) throw new Error(`--dnat ${text}: ${form}`);
  const vip = m[2] ?? m[3];
  if (isIP(vip) !== (m[2] ? 6 : 4)) throw new Error(`--dnat ${text}: "${vip}" is not an ${m[2] ? 'IPv6' : 'IPv4'} address (${form})`);
  const servicePort = Number(m[4]);
  const backendPort = Number(m[5]);
  for (const [name, p] of [['service port', servicePort], ['backend port', backendPort]] as const) {
    if (p < 1 || p > 65535) throw new Error(`--dnat ${text}: ${name} ${p} is not in 1..65535`);
  }
  return { vip, proto: m[1] as 'tcp' | 'udp', backendPort, servicePort };
}

/** An interface name as the kernel takes it, and safe as a directory name. */
export function checkIfname(name: string): string {
  if (!/^[A-Za-z0-9_.@-]{1,15}$/.test(name) || name === '.' || name === '..') throw new Error(`interface "${name}": not an interface name (1..15 letters, digits, _ . @ -)`);
  return name;
}

function ifIndexOf(ifname: string): number {
  try {
    return sys.ifIndex(ifname);
  } catch {
    throw new Error(`interface "${ifname}": no such interface in this network namespace`);
  }
}

/** The id of the decapsulator pinned in dir, or 0 when there is none. */
function pinnedProgId(dir: string): number {
  const pin = path.join(dir, DECAP_PROG_PIN);
  if (!fs.existsSync(pin)) return 0;
  const p = bpf.programFromPin(pin);
  try {
    return p.id;
  } finally {
    p.close();
  }
}

export interface AttachOptions {
  ifname: string;
  addresses: Array<string | 'any'>;
  dnat: RevNat[];
  mode: bpf.XdpMode;
  pinRoot: string;
  /** no addresses: every frame passes (a veth peer's program, see docs/virtual-networks.md) */
  passThrough?: boolean;
  objectFile?: string;
}

/**
 * Loads (or reuses the pinned maps of) the decapsulator for one interface,
 * makes its address and reverse-DNAT maps exactly what is asked, and attaches
 * it. Everything is checked before anything is changed.
 */
export function decapAttach(o: AttachOptions): { dir: string; progId: number } {
  checkIfname(o.ifname);
  if (o.addresses.length === 0 && !o.passThrough) throw new Error('--local: at least one of the backend\'s own addresses (or "any") is needed, or --pass-through');
  if (o.addresses.length > 0 && o.passThrough) throw new Error('--pass-through decapsulates nothing: give it no --local');
  const ifindex = ifIndexOf(o.ifname);
  const dir = path.join(o.pinRoot, o.ifname);
  const attached = bpf.queryXdp(ifindex);
  if (attached.progId && attached.progId !== pinnedProgId(dir)) {
    throw new Error(`interface "${o.ifname}": XDP program id ${attached.progId} is attached and is not this decapsulator; detach it first (ip link set dev ${o.ifname} xdp off)`);
  }
  const d = Decap.open(dir, o.objectFile);
  try {
    const want = new Set(o.addresses.map((a) => encodeLocalKey(a).toString('hex')));
    for (const k of [...d.local.keys()]) if (!want.has(k.toString('hex'))) d.local.delete(k);
    d.addLocal(...o.addresses);
    d.setSink(false);
    d.pinPrograms(dir);
    syncPinnedRevNat(dir, o.dnat);
    if (o.dnat.length > 0) attachRevNatIn(undefined, o.ifname, dir);
    bpf.attachXdp(ifindex, d.prog, { mode: o.mode });
    return { dir, progId: d.prog.id };
  } finally {
    d.close();
  }
}

/** Detaches the decapsulator of one interface and removes its pins; false when there was none. */
export function decapDetach(ifname: string, pinRoot: string): boolean {
  checkIfname(ifname);
  const dir = path.join(pinRoot, ifname);
  if (!fs.existsSync(dir)) return false;
  const ours = pinnedProgId(dir);
  let ifindex = 0;
  try {
    ifindex = sys.ifIndex(ifname);
  } catch {
    // the interface is gone, and its attachments with it: only the pins are left
  }
  if (ifindex) {
    const q = bpf.queryXdp(ifindex);
    if (ours && q.progId === ours && (q.mode === 'native' || q.mode === 'generic')) bpf.detachXdp(ifindex, q.mode);
    let filters = '';
    try {
      filters = execFileSync('tc', ['filter', 'show', 'dev', ifname, 'egress', 'pref', '1'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
    } catch {
      // no clsact qdisc: no reverse-DNAT filter either
    }
    // only the filter attach put there, not another one at the same preference
    if (filters.includes('xdplb_revnat')) execFileSync('tc', ['filter', 'del', 'dev', ifname, 'egress', 'pref', '1', 'handle', '1', 'bpf'], { stdio: 'ignore' });
  }
  fs.rmSync(dir, { recursive: true, force: true });
  return true;
}

export interface DecapInstance {
  interface: string;
  dir: string;
  attached: boolean;
  progId: number;
  addresses: string[];
  dnat: string[];
  decapsulated: number;
  passed: number;
}

function pinnedKeys(pin: string): Buffer[] {
  const m = bpf.mapFromPin(pin);
  try {
    return [...m.keys()];
  } finally {
    m.close();
  }
}

/** Every decapsulator under pinRoot: its interface, whether attached, its maps and counters. */
export function decapStatus(pinRoot: string): DecapInstance[] {
  if (!fs.existsSync(pinRoot)) return [];
  return fs
    .readdirSync(pinRoot)
    .filter((n) => fs.existsSync(path.join(pinRoot, n, DECAP_LOCAL_MAP)))
    .sort()
    .map((ifname) => {
      const dir = path.join(pinRoot, ifname);
      const progId = pinnedProgId(dir);
      let attached = false;
      try {
        attached = progId !== 0 && bpf.queryXdp(sys.ifIndex(ifname)).progId === progId;
      } catch {
        // no such interface in this namespace
      }
      const revnatPin = path.join(dir, REVNAT_MAP);
      const revnatMap = fs.existsSync(revnatPin) ? bpf.mapFromPin(revnatPin) : null;
      const dnat: string[] = [];
      try {
        for (const k of revnatMap ? [...revnatMap.keys()] : []) {
          const v = revnatMap!.lookup(k);
          const r = decodeRevNatKey(k);
          dnat.push(`${r.proto === IPPROTO_TCP ? 'tcp' : 'udp'}/${isIP(r.vip) === 6 ? `[${r.vip}]` : r.vip}:${v ? decodeRevNatVal(v) : '?'}=${r.backendPort}`);
        }
      } finally {
        revnatMap?.close();
      }
      const c = pinnedDecapCounters(dir);
      const decapsulated = c ? Number(c.decap_ipip.packets + c.decap_ip6ip6.packets) : 0;
      const passed = c ? Object.entries(c).reduce((s, [k, v]) => s + (k.startsWith('pass_') ? Number(v.packets) : 0), 0) : 0;
      return {
        interface: ifname,
        dir,
        attached,
        progId,
        addresses: pinnedKeys(path.join(dir, DECAP_LOCAL_MAP)).map(decodeLocalKey).sort(),
        dnat: dnat.sort(),
        decapsulated,
        passed,
      };
    });
}

function collect(value: string, prev: string[]): string[] {
  return [...prev, value];
}

const LOCAL_NOTE = `
This command runs on the backend itself, as root, in the network namespace of
the interface. It is not a call to the xdplb daemon (no --socket): it loads
build/bpf/decap.bpf.o, pins its maps and programs in <pin-root>/<interface>
(one directory per interface, so decapsulators never share maps) and attaches
it. See docs/backend-setup.md for the rest of a backend's setup.`;

export function decapCommand(): Command {
  const cmd = new Command('decap')
    .description("a backend's XDP decapsulator (IPIP / IP6IP6 from the load balancer), run locally on the backend")
    .addHelpText('after', LOCAL_NOTE);
  const pinRootOption = () => new Option('--pin-root <dir>', 'bpffs directory holding one subdirectory per interface').default(DECAP_PIN_ROOT);

  cmd
    .command('attach <interface>')
    .description('load the decapsulator for <interface>, set its addresses and reverse-DNAT ports, attach it (re-running replaces both lists)')
    .option('--local <addr|any>', "an address of this backend that tunnel packets are sent to (repeatable); \"any\" decapsulates every tunnel packet", collect, [])
    .option('--dnat <proto/vip:port=backend_port>', 'for services with l4_dnat: replies from VIP:BACKEND_PORT leave from VIP:PORT (repeatable), e.g. tcp/203.0.113.10:80=8080', collect, [])
    .option('--pass-through', 'no addresses: decapsulate nothing, pass every frame (a veth peer needs an XDP program to receive XDP_TX frames)')
    .addOption(new Option('--mode <mode>', 'XDP attach mode: native (driver) or generic (skb)').choices(['native', 'generic']).default('native'))
    .addOption(pinRootOption())
    .addHelpText('after', `
Examples:
  xdplb decap attach eth0 --local 198.51.100.11 --local 2001:db8:200::11
  xdplb decap attach eth0 --local 198.51.100.11 --dnat tcp/203.0.113.10:80=8080
${LOCAL_NOTE}`)
    .action((ifname: string, f: { local: string[]; dnat: string[]; passThrough?: boolean; mode: bpf.XdpMode; pinRoot: string }) => {
      try {
        const r = decapAttach({ ifname, addresses: f.local.map(parseLocalAddress), dnat: f.dnat.map(parseDnat), mode: f.mode, pinRoot: f.pinRoot, passThrough: f.passThrough });
        process.stdout.write(`decapsulator attached to ${ifname} (program id ${r.progId}, pins in ${r.dir})\n`);
      } catch (e) {
        fail(e);
      }
    });

  cmd
    .command('detach <interface>')
    .description("detach <interface>'s decapsulator (and its tc reverse-DNAT filter) and remove its pins")
    .addOption(pinRootOption())
    .addHelpText('after', LOCAL_NOTE)
    .action((ifname: string, f: { pinRoot: string }) => {
      try {
        process.stdout.write(decapDetach(ifname, f.pinRoot) ? `decapsulator of ${ifname} removed\n` : `no decapsulator for ${ifname} under ${f.pinRoot}\n`);
      } catch (e) {
        fail(e);
      }
    });

  cmd
    .command('status')
    .description('the decapsulators pinned on this host: interface, attached or not, addresses, DNAT ports, packets')
    .addOption(pinRootOption())
    .addHelpText('after', LOCAL_NOTE)
    .action((f: { pinRoot: string }, c: Command) => {
      try {
        const rows = decapStatus(f.pinRoot);
        const output = (c.optsWithGlobals() as { output: OutputFormat }).output;
        const text = () =>
          rows.length === 0
            ? `no decapsulator under ${f.pinRoot}`
            : table(
                ['INTERFACE', 'ATTACHED', 'ADDRESSES', 'DNAT', 'DECAPSULATED', 'PASSED'],
                rows.map((r) => [r.interface, r.attached ? `id ${r.progId}` : 'no', r.addresses.join(' '), r.dnat.join(' ') || '-', String(r.decapsulated), String(r.passed)]),
              );
        process.stdout.write(render(output, rows, text) + '\n');
      } catch (e) {
        fail(e);
      }
    });
  return cmd;
}
