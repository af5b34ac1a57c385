// The daemon is killed (SIGKILL, no cleanup at all) in the middle of two
// running 1 MB uploads, IPv4 and IPv6, and started again: the XDP program
// stays attached and its maps pinned, so the packets keep flowing while no
// daemon runs; the new daemon adopts the pinned state; both uploads complete
// intact, each on one backend.
import t from 'tap';
import * as path from 'node:path';
import * as bpf from '../src/datapath/bpf';
import * as L from '../src/datapath/layout';
import { REASON } from '../src/datapath/reasons';
import { labFixture } from '../src/lab/fixture';
import { needsRoot } from '../harness/fixtures';

const VIP4 = '203.0.113.10';
const VIP6 = '2001:db8:100::10';
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

t.test('daemon killed and restarted during running transfers: the transfers complete', needsRoot, async (t) => {
  const t0 = Date.now();
  const f = await labFixture(t, { listens: [`tcp:${VIP4}:80`, `tcp:[${VIP6}]:80`] });
  const { lab } = f;
  f.cli('service', 'create', 'web4', '--vip', VIP4, '--port', '80', '--backend', '198.51.100.11:80', '--backend', '198.51.100.12:80', '--backend', '198.51.100.13:80');
  f.cli('service', 'create', 'web6', '--vip', VIP6, '--port', '80', '--backend', '[2001:db8:200::11]:80', '--backend', '[2001:db8:200::12]:80', '--backend', '[2001:db8:200::13]:80');
  const bpffs = lab.state()?.bpffs as string;
  // the datapath's own counter, read from its pin: there is no API while no daemon runs
  const forwarded = () => {
    const m = bpf.mapFromPin(path.join(bpffs, 'xdplb_reasons'));
    try {
      return Number(L.sumCounters(m.lookupPerCpu(L.u32(REASON.forward_tx))).packets);
    } finally {
      m.close();
    }
  };
  const progBefore = (await lab.nodeStatus()).programId;

  // 1 MB each, paced over 4 s
  const uploads = [
    lab.upload({ vip: VIP4, port: 80, src: lab.plan.client.v4[0], bytes: 1 << 20, chunk: 8192, durationMs: 4000, timeoutMs: 30000 }),
    lab.upload({ vip: VIP6, port: 80, src: lab.plan.client.v6[0], bytes: 1 << 20, chunk: 8192, durationMs: 4000, timeoutMs: 30000 }),
  ];
  await sleep(1000);
  const pid = lab.daemonPid();
  t.ok(pid, `daemon running (pid ${pid})`);
  t.ok(await lab.stopDaemon('SIGKILL'), 'daemon killed with SIGKILL');
  t.equal(lab.daemonPid(), null, 'no daemon now');
  const gapStart = forwarded();
  await sleep(1000);
  const gapEnd = forwarded();
  t.ok(gapEnd > gapStart, `packets forwarded while no daemon ran: ${gapEnd - gapStart} in 1 s`);
  await lab.startDaemon();
  t.ok(lab.daemonPid(), 'daemon started again');
  const st = await lab.nodeStatus();
  t.equal(st.services, 2, 'the new daemon adopted both services');
  t.ok(st.programId > 0 && st.attachments.length === 1, `attached: program ${st.programId} replaced ${progBefore} atomically on ${st.attachments[0]?.interface}`);

  const [r4, r6] = await Promise.all(uploads);
  for (const [fam, r] of [['IPv4', r4], ['IPv6', r6]] as const) {
    t.ok(r.ok, `${fam}: 1 MB upload completed through the kill and restart, SHA-256 right, answered by ${r.backend} after ${r.ms} ms${r.error ? ` (error ${r.error})` : ''}`);
    t.ok(r.ms >= 3500, `${fam}: it was running all along (${r.ms} ms)`);
  }
  const c = await lab.counters();
  t.ok(c.services.every((s) => s.traffic.packets > 0), 'per-service counters survived the restart');
  t.comment(`restart test: ${Date.now() - t0} ms`);
});
