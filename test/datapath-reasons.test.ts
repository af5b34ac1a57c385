// Reasons and their verdicts are one table, xdp/reasons.def: reasons.ts reads
// it, the C side derives enum xdplb_reason and reason_verdict() from it. What
// the compiler made of the table (the enum in BTF, the verdict of every
// reason as the datapath computes it) must be what reasons.ts says, and a
// packet the load balancer counts under a reason gets that reason's verdict.
import t from 'tap';
import * as bpf from '../src/datapath/bpf';
import { LB_REASONS, REASON, REASONS, REASON_COUNT, parseReasons, type Verdict } from '../src/datapath/reasons';
import { Btf } from '../harness/btf';
import { needsRoot, pinDir } from '../harness/fixtures';
import * as P from '../harness/packets';

const OBJ = bpf.testObjectPath('reasons_test');
const VERDICT_OF: Record<number, Verdict> = { [bpf.XDP_DROP]: 'XDP_DROP', [bpf.XDP_PASS]: 'XDP_PASS', [bpf.XDP_TX]: 'XDP_TX', [bpf.XDP_REDIRECT]: 'XDP_REDIRECT' };

t.test('reasons.ts equals enum xdplb_reason as compiled: names, order, count', (t) => {
  const members = new Btf(OBJ).enumMembers('xdplb_reason');
  t.equal(members.at(-1)?.name, 'XDPLB_R_MAX', 'the enum ends with XDPLB_R_MAX');
  t.equal(members.at(-1)?.value, REASON_COUNT, 'XDPLB_R_MAX is the number of reasons');
  t.same(
    members.slice(0, -1).map((m) => [m.value, m.name]),
    REASONS.map((r, i) => [i, `XDPLB_R_${r.name.toUpperCase()}`]),
  );
  t.end();
});

t.test('every reason has the verdict reasons.ts gives it, as the datapath computes it', needsRoot, (t) => {
  const obj = bpf.openObject(OBJ, { pinRoot: pinDir(t) });
  t.teardown(() => obj.close());
  const prog = obj.program('reason_verdict_of');
  const recorded = obj.map('reason_verdicts');
  const got = REASONS.map((_, i) => {
    const frame = P.ether(Buffer.alloc(46), { type: 0x88b5 }); // local experimental ethertype
    frame.writeUInt32LE(i, 14);
    const retval = prog.testRun({ data: frame }).retval;
    const e = recorded.lookup(Buffer.alloc(4))!;
    t.same([e.readUInt32LE(0), e.readUInt32LE(4)], [i, retval], `reason ${i}: recorded as returned`);
    return [i, VERDICT_OF[retval] ?? `verdict ${retval}`];
  });
  t.same(got, REASONS.map((r, i) => [i, r.verdict]));
  t.end();
});

t.test("a reason's name says its verdict", (t) => {
  for (const r of REASONS) {
    const want = r.name.startsWith('pass_') ? 'XDP_PASS' : r.name.startsWith('drop_') ? 'XDP_DROP' : r.name.endsWith('_redirect') ? 'XDP_REDIRECT' : 'XDP_TX';
    t.equal(r.verdict, want, `${r.name} implies ${want}`);
  }
  t.end();
});

t.test('the table reader takes entries and comments and refuses anything else', (t) => {
  t.same(parseReasons('/* a comment\n * over lines */\nXDPLB_REASON(PASS_X, XDP_PASS, "a, b: c")\n\nXDPLB_REASON(DROP_Y, XDP_DROP, "d")\n', LB_REASONS), [
    { name: 'pass_x', verdict: 'XDP_PASS', description: 'a, b: c' },
    { name: 'drop_y', verdict: 'XDP_DROP', description: 'd' },
  ]);
  t.throws(() => parseReasons('XDPLB_REASON(PASS_X, XDP_PASS, "a")\nXDPLB_REASON(PASS_Z, XDP_PASS)\n', LB_REASONS), /not an entry: XDPLB_REASON\(PASS_Z/);
  t.throws(() => parseReasons('XDPLB_REASON(PASS_X, XDP_ABORTED, "a")\n', LB_REASONS), /PASS_X: unknown verdict XDP_ABORTED/);
  t.end();
});

t.test('packets through xdplb_main get the verdict of the reason they are counted under', needsRoot, (t) => {
  const obj = bpf.openObject(bpf.objectPath('lb'), { pinRoot: pinDir(t) });
  t.teardown(() => obj.close());
  const counters = obj.map('xdplb_reasons');
  const counts = () =>
    REASONS.map((_, i) => {
      const key = Buffer.alloc(4);
      key.writeUInt32LE(i);
      return (counters.lookupPerCpu(key) ?? []).reduce((a, v) => a + v.readBigUInt64LE(0), 0n);
    });
  const tcp4 = P.ipv4({ src: '192.0.2.10', dst: '203.0.113.10' }, P.tcp({ sport: 40000, dport: 80 }));
  const cases: Array<[string, Buffer]> = [
    ['pass_not_ip', P.arp('192.0.2.1', '192.0.2.2')],
    ['pass_vlan_stacked', P.ether(tcp4, { vlans: [10, 20] })],
    ['pass_truncated', P.ether(tcp4).subarray(0, 30)],
    ['pass_bad_ip_header', P.ether(P.ipv4({ src: '192.0.2.10', dst: '203.0.113.10', ihl: 4 }, P.tcp({ sport: 40000, dport: 80 })))],
    ['pass_ipv4_fragment', P.ether(P.ipv4({ src: '192.0.2.10', dst: '203.0.113.10', mf: true }, P.tcp({ sport: 40000, dport: 80 })))],
    ['pass_l4_unsupported', P.ether(P.ipv4({ src: '192.0.2.10', dst: '203.0.113.10' }, P.rawL4(47, Buffer.alloc(8))))],
    ['pass_not_vip', P.ether(tcp4)],
    ['pass_icmp_other', P.ether(P.ipv4({ src: '192.0.2.10', dst: '203.0.113.10' }, P.icmp({ type: 0 })))],
  ];
  for (const [name, frame] of cases) {
    const before = counts();
    const r = obj.program('xdplb_main').testRun({ data: frame });
    const after = counts();
    const counted = after.flatMap((n, i) => (n !== before[i] ? [REASONS[i].name] : []));
    t.same(counted, [name], `${name}: counted under it alone`);
    t.equal(VERDICT_OF[r.retval], REASONS[REASON[name]].verdict, `${name}: ${REASONS[REASON[name]].verdict}`);
  }
  t.end();
});
