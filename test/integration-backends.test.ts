// Changing the backend set under real traffic, measured from the servers'
// answers: draining keeps established connections and sends new ones
// elsewhere; removing one of three backends moves only its flows; adding a
// fourth moves about a quarter of the flows, exactly the ones Maglev's new
// table moves, and none at all of the flows the connection table knows.
import t from 'tap';
import { labFixture, type LabFixture } from '../src/lab/fixture';
import { predictor } from '../src/lab/check';
import type { ApiService } from '../src/client/client';
import type { RequestResult } from '../src/lab/client';
import { needsRoot } from '../harness/fixtures';

const VIP4 = '203.0.113.10';
const VIP6 = '2001:db8:100::10';
const BE4 = ['198.51.100.11', '198.51.100.12', '198.51.100.13', '198.51.100.14'];
const BE6 = ['2001:db8:200::11', '2001:db8:200::12', '2001:db8:200::13', '2001:db8:200::14'];
const SPORTS = Array.from({ length: 200 }, (_, i) => 20000 + i);

/** The same UDP flows (2 client addresses × 200 fixed source ports) every time: flow key -> backend. */
async function udpRound(f: LabFixture, vip: string, port: number, sports = SPORTS): Promise<Map<string, RequestResult>> {
  const sources = vip.includes(':') ? f.lab.plan.client.v6 : f.lab.plan.client.v4;
  const results = await f.lab.requests({ targets: [{ proto: 'udp', vip, port, count: 0, sources, sports }], concurrency: 32 });
  return new Map(results.map((r) => [`${r.src}|${r.sport}`, r]));
}

async function service(f: LabFixture, name: string): Promise<{ svc: ApiService; m: number }> {
  const svc = await f.lab.api<ApiService>('GetService', { name });
  return { svc, m: (await f.lab.nodeStatus()).maglevSize };
}

const name = (f: LabFixture, addr: string) => f.lab.backendName(addr);

t.test('backend changes under traffic', needsRoot, async (t) => {
  const t0 = Date.now();
  const f = await labFixture(t, {
    backends: 4,
    listens: [`tcp:${VIP4}:80`, `udp:${VIP4}:53`, `udp:${VIP4}:54`, `udp:[${VIP6}]:53`],
  });
  const three = (addrs: string[], port: number) => addrs.slice(0, 3).flatMap((a) => ['--backend', `${a.includes(':') ? `[${a}]` : a}:${port}`]);
  f.cli('service', 'create', 'drain', '--vip', VIP4, '--port', '80', '--protocol', 'tcp', ...three(BE4, 80));
  f.cli('service', 'create', 'remove', '--vip', VIP4, '--port', '53', '--protocol', 'udp', ...three(BE4, 53));
  f.cli('service', 'create', 'add-ct', '--vip', VIP4, '--port', '54', '--protocol', 'udp', ...three(BE4, 54));
  f.cli('service', 'create', 'add', '--vip', VIP6, '--port', '53', '--protocol', 'udp', '--conntrack-bypass', ...three(BE6, 53));
  t.comment(`lab up and services created in ${Date.now() - t0} ms`);

  t.test('draining a backend: its established TCP connection carries on, new connections avoid it', async (t) => {
    const s = await f.lab.session({ vip: VIP4, port: 80, src: f.lab.plan.client.v4[0] });
    t.teardown(() => s.close());
    const x = await s.ask('WHO');
    t.match(x, /^be[123]$/, `an established connection, answered by ${x}`);
    const addr = BE4[Number(x.slice(2)) - 1];
    f.cli('backend', 'drain', 'drain', `${addr}:80`);
    const { svc } = await service(f, 'drain');
    t.equal(svc.backends.find((b) => b.address === addr)?.state, 'BACKEND_STATE_DRAINING', `${x} is draining`);
    for (let i = 0; i < 5; i++) t.equal(await s.ask('WHO'), x, `the established connection still reaches ${x} (${i + 1})`);
    const fresh = await f.lab.requests({ targets: [{ proto: 'tcp', vip: VIP4, port: 80, count: 50, sources: f.lab.plan.client.v4 }] });
    t.equal(fresh.filter((r) => r.error).length, 0, '100 new connections, all answered');
    const by = new Map<string, number>();
    for (const r of fresh) by.set(r.backend ?? '', (by.get(r.backend ?? '') ?? 0) + 1);
    t.equal(by.get(x) ?? 0, 0, `no new connection reached ${x}`);
    t.equal(by.size, 2, `the other two took them all (${[...by].map(([k, v]) => `${k} ${v}`).join(', ')})`);
    t.equal(await s.ask('WHO'), x, 'and the old connection is still there afterwards');
  });

  t.test('removing one of three backends moves only the flows that were on it', async (t) => {
    const before = await udpRound(f, VIP4, 53);
    t.equal([...before.values()].filter((r) => r.error).length, 0, `${before.size} flows answered`);
    const gone = 'be2';
    const onGone = [...before.values()].filter((r) => r.backend === gone).length;
    t.ok(onGone > 80 && onGone < 200, `${onGone} of ${before.size} flows on ${gone}`);
    f.cli('backend', 'remove', 'remove', `${BE4[1]}:53`);
    const after = await udpRound(f, VIP4, 53);
    const { svc, m } = await service(f, 'remove');
    const predict = predictor(svc, m);
    let stayed = 0;
    let moved = 0;
    let movedOther = 0;
    let predicted = 0;
    for (const [k, a] of before) {
      const b = after.get(k);
      if (!b || b.error) continue;
      if (a.backend === gone) {
        moved += b.backend !== gone ? 1 : 0;
        predicted += name(f, predict(b.src, b.sport) ?? '') === b.backend ? 1 : 0;
      } else if (a.backend === b.backend) stayed++;
      else movedOther++;
    }
    t.equal([...after.values()].filter((r) => r.error).length, 0, 'every flow answered after the removal');
    t.equal(moved, onGone, `all ${onGone} flows of ${gone} moved`);
    t.equal(predicted, onGone, 'each to the backend the new Maglev table picks');
    t.equal(movedOther, 0, 'no other flow moved');
    t.equal(stayed, before.size - onGone, `${stayed} flows stayed where they were`);
    t.comment(`remove: ${onGone}/${before.size} flows moved (${((onGone / before.size) * 100).toFixed(1)}%), ${movedOther} others`);
  });

  t.test('adding a fourth backend moves about a quarter of the flows: exactly those Maglev moves', async (t) => {
    const { svc: old, m } = await service(f, 'add');
    const before = await udpRound(f, VIP6, 53);
    t.equal([...before.values()].filter((r) => r.error).length, 0, `${before.size} flows answered by three backends`);
    f.cli('backend', 'add', 'add', `[${BE6[3]}]:53`);
    const { svc: next } = await service(f, 'add');
    t.equal(next.backends.length, 4);
    const after = await udpRound(f, VIP6, 53);
    t.equal([...after.values()].filter((r) => r.error).length, 0, 'every flow answered by four backends');
    const predOld = predictor(old, m);
    const predNew = predictor(next, m);
    let moved = 0;
    let toNew = 0;
    let expected = 0;
    let mismatch = 0;
    for (const [k, a] of before) {
      const b = after.get(k)!;
      const wantMove = predOld(a.src, a.sport) !== predNew(a.src, a.sport);
      if (wantMove) expected++;
      if (a.backend !== b.backend) {
        moved++;
        if (b.backend === 'be4') toNew++;
      }
      if (name(f, predNew(b.src, b.sport) ?? '') !== b.backend) mismatch++;
    }
    const share = moved / before.size;
    t.comment(`add: ${moved}/${before.size} flows moved (${(share * 100).toFixed(1)}%), ${toNew} of them to be4; Maglev's tables move ${expected}`);
    t.equal(mismatch, 0, 'every flow is on the backend the new table picks');
    t.equal(moved, expected, 'exactly the flows whose table entry changed moved: no more than Maglev allows');
    t.ok(share > 0.15 && share < 0.35, `about a quarter moved (${(share * 100).toFixed(1)}%)`);
    t.ok(toNew >= moved * 0.9, `nearly all moved flows went to the new backend (${toNew}/${moved})`);
  });

  t.test('with the connection table, adding a backend moves no established flow; new flows use it', async (t) => {
    const before = await udpRound(f, VIP4, 54);
    t.equal([...before.values()].filter((r) => r.error).length, 0);
    f.cli('backend', 'add', 'add-ct', `${BE4[3]}:54`);
    const after = await udpRound(f, VIP4, 54);
    const moved = [...before].filter(([k, a]) => after.get(k)?.backend !== a.backend).length;
    t.equal(moved, 0, 'none of the 400 known flows moved');
    const fresh = await udpRound(f, VIP4, 54, Array.from({ length: 200 }, (_, i) => 30000 + i));
    const onNew = [...fresh.values()].filter((r) => r.backend === 'be4').length;
    t.ok(onNew > 50, `new flows reach the new backend (${onNew} of ${fresh.size})`);
  });
});
