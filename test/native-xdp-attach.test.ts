// XDP attachment on a veth inside a namespace the test creates: attach, see it
// with `ip link`, replace atomically, detach; the same with a bpf_link.
import t from 'tap';
import * as bpf from '../src/datapath/bpf';
import * as sys from '../src/sys/system';
import { needsRoot, netns, pinDir, sh, veth } from '../harness/fixtures';

const OBJ = bpf.testObjectPath('native_test');

interface IpLink {
  ifname: string;
  ifindex: number;
  xdp?: { mode: number; prog?: { id: number } };
}
function ipLink(ns: string, dev: string): IpLink {
  return (JSON.parse(sh('ip', '-n', ns, '-j', '-d', 'link', 'show', 'dev', dev)) as IpLink[])[0];
}

for (const mode of ['native', 'generic'] as const) {
  t.test(`${mode} XDP: attach, replace atomically, detach`, needsRoot, (t) => {
    const ns = netns(t);
    veth(ns, ns, 'lb0', 'peer0');
    const obj = bpf.openObject(OBJ, { pinRoot: pinDir(t) });
    t.teardown(() => obj.close());
    const pass = obj.program('xdp_count_pass');
    const drop = obj.program('xdp_drop_all');
    const tx = obj.program('xdp_swap_tx');

    sys.withNetns(ns, () => {
      const ifindex = sys.ifIndex('lb0');
      t.equal(ifindex, ipLink(ns, 'lb0').ifindex, 'ifIndex agrees with ip link');

      bpf.attachXdp(ifindex, pass, { mode });
      const q = bpf.queryXdp(ifindex);
      t.same(q, { progId: pass.id, mode }, 'query sees the program and mode');
      t.equal(ipLink(ns, 'lb0').xdp?.prog?.id, pass.id, 'ip link shows the program');

      t.throws(() => bpf.attachXdp(ifindex, drop, { mode, exclusive: true }), { code: 'EBUSY' }, 'exclusive attach refuses to replace');
      bpf.attachXdp(ifindex, drop, { mode, replace: pass });
      t.equal(bpf.queryXdp(ifindex).progId, drop.id, 'replaced atomically');
      t.throws(() => bpf.attachXdp(ifindex, tx, { mode, replace: pass }), { code: 'EEXIST', op: 'xdp attach' }, 'replace checks the expected program');
      t.equal(bpf.queryXdp(ifindex).progId, drop.id, 'a failed replace changes nothing');

      bpf.detachXdp(ifindex, mode, drop);
      t.same(bpf.queryXdp(ifindex), { progId: 0, mode: 'none' });
      t.equal(ipLink(ns, 'lb0').xdp, undefined, 'ip link shows no program');
    });
    t.end();
  });
}

t.test('a pinned bpf_link keeps the program attached and updates atomically', needsRoot, (t) => {
  const ns = netns(t);
  veth(ns, ns, 'lb0', 'peer0');
  const dir = pinDir(t);
  const obj = bpf.openObject(OBJ, { pinRoot: dir });
  t.teardown(() => obj.close());
  const pass = obj.program('xdp_count_pass');
  const drop = obj.program('xdp_drop_all');
  sys.withNetns(ns, () => {
    const ifindex = sys.ifIndex('lb0');
    const link = bpf.XdpLink.create(pass, ifindex, 'native');
    link.pin(`${dir}/link_lb0`);
    link.close();
    t.equal(bpf.queryXdp(ifindex).progId, pass.id, 'attached while only the pin holds the link');
    const again = bpf.XdpLink.fromPin(`${dir}/link_lb0`);
    t.teardown(() => again.close());
    t.equal(again.info().ifindex, ifindex);
    again.update(drop, pass);
    t.equal(bpf.queryXdp(ifindex).progId, drop.id, 'link updated');
    t.throws(() => again.update(pass, pass), { code: 'EPERM', op: 'link update' }, 'update checks the expected program');
    t.throws(() => bpf.attachXdp(ifindex, pass, { mode: 'native' }), { code: 'EBUSY' }, 'netlink cannot override a link');
    again.detach();
    t.equal(bpf.queryXdp(ifindex).progId, 0, 'detached');
  });
  t.end();
});

t.test('attaching to a missing interface is a clear error', needsRoot, (t) => {
  const obj = bpf.openObject(OBJ, { pinRoot: pinDir(t) });
  t.teardown(() => obj.close());
  t.throws(() => bpf.attachXdp(0x7ffffff0, obj.program('xdp_count_pass'), { mode: 'generic' }), { code: 'ENODEV', op: 'xdp attach' });
  t.throws(() => sys.withNetns('xdplbt-no-such-ns', () => 0), { code: 'ENOENT', op: 'open netns' });
  t.end();
});
