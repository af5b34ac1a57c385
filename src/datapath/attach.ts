// Where the load balancer's program is attached: the configured interfaces,
// taken over atomically from a previous daemon's program, kept in
// <stateDir>/attached.json so a restart knows what it attached before.
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Logger } from 'pino';
import * as bpf from './bpf';
import * as sys from '../sys/system';
import * as L from './layout';
import { netconf } from '../net/iproute';
import { XdplbError } from '../control/errors';
import type { NodeSettings } from '../control/model';

/** The attached program's pin: the next daemon replaces what it names. */
export const PROG_PIN = 'prog_xdplb_main';
const ATTACHED_FILE = 'attached.json';

type InterfaceSettings = NodeSettings['interfaces'][number];

export interface Attachment {
  interface: string;
  ifindex: number;
  mode: bpf.XdpMode;
}

export class Attachments {
  private readonly current = new Map<string, { ifindex: number; mode: bpf.XdpMode }>();

  constructor(private readonly o: { program: bpf.BpfProgram; devmap: bpf.BpfMap; bpffs: string; stateDir: string; log: Logger }) {}

  private readAttached(): Record<string, { mode: bpf.XdpMode }> {
    try {
      return JSON.parse(fs.readFileSync(path.join(this.o.stateDir, ATTACHED_FILE), 'utf8')) as Record<string, { mode: bpf.XdpMode }>;
    } catch {
      return {};
    }
  }

  private writeAttached(): void {
    fs.mkdirSync(this.o.stateDir, { recursive: true, mode: 0o700 });
    const tmp = path.join(this.o.stateDir, `${ATTACHED_FILE}.tmp`);
    fs.writeFileSync(tmp, JSON.stringify(Object.fromEntries([...this.current].map(([k, v]) => [k, { mode: v.mode }]))));
    fs.renameSync(tmp, path.join(this.o.stateDir, ATTACHED_FILE));
  }

  /**
   * Attaches to every configured interface. Where our previous program is
   * attached it is replaced atomically (XDP_FLAGS_REPLACE), so no packet finds
   * the interface without a program; anything else attached is left alone and
   * reported.
   */
  attachAll(interfaces: readonly InterfaceSettings[]): void {
    const pin = path.join(this.o.bpffs, PROG_PIN);
    const previous = fs.existsSync(pin) ? bpf.programFromPin(pin) : undefined;
    const wanted = new Map(interfaces.map((i) => [i.name, i.mode]));
    const before = this.readAttached();
    try {
      // The devmap is the new program's own: fill it before the program can run.
      for (const name of wanted.keys()) {
        const ifindex = this.ifindex(name);
        this.o.devmap.update(L.u32(ifindex), L.encodeDevmapVal({ ifindex, progFd: 0 }));
      }
      for (const [name, mode] of wanted) {
        const ifindex = this.ifindex(name);
        const q = bpf.queryXdp(ifindex);
        if (q.progId && previous && q.progId === previous.id) {
          bpf.attachXdp(ifindex, this.o.program, { mode: q.mode === 'generic' || q.mode === 'native' ? q.mode : mode, replace: previous });
          if (q.mode !== mode) {
            bpf.detachXdp(ifindex, q.mode as bpf.XdpMode, this.o.program);
            bpf.attachXdp(ifindex, this.o.program, { mode, exclusive: true });
          }
        } else if (q.progId) {
          throw XdplbError.failedPrecondition(`interface ${name} already has another XDP program (id ${q.progId}); detach it first`);
        } else {
          bpf.attachXdp(ifindex, this.o.program, { mode, exclusive: true });
        }
        this.current.set(name, { ifindex, mode });
        this.o.log.info({ interface: name, ifindex, mode, programId: this.o.program.id }, 'datapath attached');
        this.warnForwarding(name);
      }
      for (const [name, { mode }] of Object.entries(before)) {
        if (wanted.has(name)) continue;
        this.detachOne(name, mode, previous);
      }
      if (previous) fs.unlinkSync(pin);
      this.o.program.pin(pin);
      this.writeAttached();
    } finally {
      previous?.close();
    }
  }

  /**
   * bpf_fib_lookup answers only where the kernel itself would forward: without
   * forwarding on the receiving interface (both families check the device's
   * own setting) every packet to a VIP is passed (pass_fib_fwd_disabled).
   * Asked over rtnetlink: the unit's ProcSubset=pid hides /proc/sys.
   */
  private warnForwarding(name: string): void {
    netconf(name).then(
      (confs) => {
        const off = confs.filter((c) => c.forwarding === false).map((c) => `net.${c.family === 'inet6' ? 'ipv6' : 'ipv4'}.conf.${name}.forwarding`);
        if (off.length)
          this.o.log.warn({ interface: name, sysctls: off }, 'forwarding is off: the datapath passes VIP traffic to the kernel until it is on (sysctl -w ...=1)');
        else this.o.log.debug({ interface: name }, 'forwarding is on');
      },
      (e: Error) => this.o.log.warn({ interface: name, error: e.message }, 'forwarding could not be checked: if it is off, the datapath passes VIP traffic to the kernel'),
    );
  }

  private detachOne(name: string, mode: bpf.XdpMode, expected?: bpf.BpfProgram): void {
    try {
      const ifindex = this.ifindex(name);
      bpf.detachXdp(ifindex, mode, expected ?? this.o.program);
      this.o.devmap.delete(L.u32(ifindex));
      this.o.log.info({ interface: name }, 'datapath detached');
    } catch (e) {
      this.o.log.warn({ interface: name, error: (e as Error).message }, 'detach failed');
    }
    this.current.delete(name);
  }

  private ifindex(name: string): number {
    try {
      return sys.ifIndex(name);
    } catch {
      throw XdplbError.failedPrecondition(`interface ${name} does not exist`);
    }
  }

  /** Reload: interfaces no longer configured are detached, new ones (or a new mode) attached. */
  reconcile(interfaces: readonly InterfaceSettings[]): void {
    const removed = [...this.current.keys()].filter((n) => !interfaces.some((i) => i.name === n));
    for (const name of removed) this.detachOne(name, this.current.get(name)?.mode ?? 'native');
    for (const i of interfaces) {
      const cur = this.current.get(i.name);
      if (cur && cur.mode === i.mode) continue;
      if (cur) this.detachOne(i.name, cur.mode);
      const ifindex = this.ifindex(i.name);
      bpf.attachXdp(ifindex, this.o.program, { mode: i.mode, exclusive: true });
      this.o.devmap.update(L.u32(ifindex), L.encodeDevmapVal({ ifindex, progFd: 0 }));
      this.current.set(i.name, { ifindex, mode: i.mode });
      this.o.log.info({ interface: i.name, ifindex, mode: i.mode }, 'datapath attached');
    }
    this.writeAttached();
  }

  /** Where the program is attached as this daemon did it, with the mode the kernel reports now. */
  list(): Array<Attachment & { programId: number }> {
    return [...this.current].map(([name, a]) => {
      const q = bpf.queryXdp(a.ifindex);
      return { interface: name, ifindex: a.ifindex, mode: q.mode as bpf.XdpMode, programId: q.progId };
    });
  }

  /** Interfaces this program is attached to, as the kernel says now (BGP announces only while there is one). */
  attachedNow(): string[] {
    const id = this.o.program.info().id;
    return [...this.current].filter(([, a]) => bpf.queryXdp(a.ifindex).progId === id).map(([name]) => name);
  }

  /** Clean uninstall: detached everywhere, and the record of it removed. */
  detachAll(): void {
    for (const [name, a] of [...this.current]) this.detachOne(name, a.mode);
    fs.rmSync(path.join(this.o.stateDir, ATTACHED_FILE), { force: true });
  }
}
