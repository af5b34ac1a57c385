// The daemon's programmer (LbDatapath.apply, src/datapath/lb.ts) writes a
// change as many map writes, and packets arrive between any two of them. After
// every single write of a change, new flows to the VIPs are run through the
// program: each is forwarded to a backend of the old or the new set (outer
// header and inner packet checked), or passed untouched where the service does
// not exist on one side of the change; never dropped, never sent elsewhere.
// An ordering mistake in lb.ts (a service before its table, a table before
// its backends, a backend cleared while a table still names it) fails here.
import t, { type Test } from 'tap';
import * as bpf from '../src/datapath/bpf';
import { validateService } from '../src/control/validate';
import { Address } from '../src/net/address';
import type { ServiceSpec } from '../src/control/model';
import * as P from '../harness/packets';
import { world, decap, CLIENT4, CLIENT6, LB_SRC4, LB_SRC6, OUTER_TTL, VIP4, VIP6, type World } from '../harness/datapath';
import { needsRoot } from '../harness/fixtures';

const backend4 = (h: number) => `198.51.100.${h}`;
const backend6 = (h: number) => `2001:db8:100::${h}`;

function services(hosts: number[], draining: number[] = []): ServiceSpec[] {
  const backends = (at: (h: number) => string) => hosts.map((h) => ({ address: at(h), state: draining.includes(h) ? 'draining' : 'active' }));
  return [
    validateService({ name: 'web4', vip: VIP4, port: 80, protocol: 'tcp', backends: backends(backend4) }),
    validateService({ name: 'web6', vip: VIP6, port: 80, protocol: 'tcp', backends: backends(backend6) }),
  ];
}

// Every write through the map API runs the probe after it (once it has
// completed, for the asynchronous ones); reads are not writes.
let probe: ((write: string) => void) | undefined;
const proto = bpf.BpfMap.prototype as unknown as Record<string, (...args: unknown[]) => unknown>;
for (const name of ['update', 'updatePerCpu', 'delete', 'batchUpdate', 'batchUpdatePacked', 'batchUpdatePackedAsync', 'batchDelete']) {
  const write = proto[name];
  proto[name] = function (this: bpf.BpfMap, ...args: unknown[]) {
    const r = write.apply(this, args);
    const p = probe;
    if (!p) return r;
    const what = `${name} ${this.name}`;
    if (r instanceof Promise) return r.then((v) => (p(what), v));
    p(what);
    return r;
  };
}

interface Expect {
  /** backend hosts a new flow may reach */
  reach: number[];
  /** whether a new flow may be passed to the kernel (the service is absent before or after) */
  pass: boolean;
}

/** New flows per VIP and check: with 3 of 13 Maglev entries on one backend, 16 flows miss all of them 1.5% of the time. */
const FLOWS = 16;
let sport = 20000;

/** What is wrong with new flows to each VIP now, or [] when all are as expected. */
function check(w: World, e: Expect): string[] {
  const wrong: string[] = [];
  for (const v6 of Array.from({ length: 2 * FLOWS }, (_, i) => i % 2 === 1)) {
    const inner = v6
      ? P.ipv6({ src: CLIENT6, dst: VIP6 }, P.tcp({ sport: ++sport, dport: 80, flags: P.TCP_SYN }))
      : P.ipv4({ src: CLIENT4, dst: VIP4 }, P.tcp({ sport: ++sport, dport: 80, flags: P.TCP_SYN }));
    const frame = P.ether(inner);
    const r = w.run(frame);
    const family = v6 ? 'IPv6' : 'IPv4';
    if (r.retval === bpf.XDP_PASS) {
      if (!e.pass) wrong.push(`${family}: passed to the kernel`);
      else if (!r.data.equals(frame)) wrong.push(`${family}: passed, but changed`);
      continue;
    }
    if (r.retval !== bpf.XDP_TX) {
      wrong.push(`${family}: verdict ${r.retval}`);
      continue;
    }
    const d = decap(r.data);
    const o = v6 ? { src: Address.fromBytes(d.outer6!.src).text, dst: Address.fromBytes(d.outer6!.dst).text, ttl: d.outer6!.hopLimit } : d.outer4!;
    const allowed = e.reach.map(v6 ? backend6 : backend4);
    if (!allowed.includes(o.dst)) wrong.push(`${family}: forwarded to ${o.dst}, not one of ${allowed.join(' ') || 'none'}`);
    if (o.src !== (v6 ? LB_SRC6 : LB_SRC4)) wrong.push(`${family}: outer source ${o.src}`);
    if (o.ttl !== OUTER_TTL) wrong.push(`${family}: outer TTL ${o.ttl}`);
    if (!d.inner.equals(inner)) wrong.push(`${family}: inner packet changed`);
  }
  return wrong;
}

/** Applies `next`, checking new flows after every write; returns how many writes were checked. */
async function applyChecked(t: Test, w: World, next: ServiceSpec[], e: Expect, what: string): Promise<number> {
  const wrong: string[] = [];
  let writes = 0;
  probe = (write) => {
    writes++;
    for (const x of check(w, e)) wrong.push(`after write ${writes} (${write}): ${x}`);
  };
  try {
    await w.apply(next);
  } finally {
    probe = undefined;
  }
  t.same(wrong, [], `${what}: every one of ${writes} writes left new flows forwarded to a backend of the old or new set${e.pass ? ' or passed' : ''}`);
  return writes;
}

t.test('every write of a change leaves the datapath forwarding new flows: add, replace, drain, remove', needsRoot, async (t) => {
  const w = world(t, { maglevM: 13 });

  t.ok((await applyChecked(t, w, services([1, 2, 3]), { reach: [1, 2, 3], pass: true }, 'adding two services')) > 3, 'a change of several writes');
  t.same(check(w, { reach: [1, 2, 3], pass: false }), [], 'then: forwarded to the new backends');

  await applyChecked(t, w, services([3, 4, 5]), { reach: [1, 2, 3, 4, 5], pass: false }, 'replacing backends 1, 2 by 4, 5');
  t.same(check(w, { reach: [3, 4, 5], pass: false }), [], 'then: only the new set');

  await applyChecked(t, w, services([3, 4, 5], [4]), { reach: [3, 4, 5], pass: false }, 'draining backend 4');
  for (let i = 0; i < 20; i++) t.same(check(w, { reach: [3, 5], pass: false }), [], `then: new flow ${i} avoids the draining backend`);

  await applyChecked(t, w, [], { reach: [3, 4, 5], pass: true }, 'removing both services');
  t.same(check(w, { reach: [], pass: true }), [], 'then: passed to the kernel');
});
