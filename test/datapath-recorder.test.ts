// The recorder in the datapath: filters compiled by src/recorder/filter.ts,
// programmed into lb.bpf.o's recorder maps, matched at the inbound point (the
// frame as received) and the outbound point (the encapsulated frame as sent),
// both on the client -> VIP tuple; samples read back from the perf ring.
import t from 'tap';
import * as bpf from '../src/datapath/bpf';
import * as L from '../src/datapath/layout';
import { compileFilters, entryKey, matchCompiled, matches, parseFilter, recFilterBits, recFilterWords, ruleIdsOf, type Filter, type Prefix, type RuleFilters, type Tuple } from '../src/recorder/filter';
import { RecorderMaps as DaemonRecorderMaps } from '../src/recorder/datapath';
import * as P from '../harness/packets';
import { world, serviceSpec, idsOf, decap, ipPacket, tsharkCheck, scratch, VIP4, VIP6, CLIENT4, CLIENT6, type World } from '../harness/datapath';
import { recorderMaps, collector, entryCaplen, type Sample } from '../harness/datapath-recorder';
import { needsRoot } from '../harness/fixtures';
import { decodeSampleBatch, type Sample as RecordedSample, type SampleBatch } from '../src/recorder/datapath';
import { seededRandom } from '../harness/random';
import { NO_BACKEND } from '../src/maglev';

const TCP = L.IPPROTO_TCP;
const BACKEND4 = '198.51.100.10';
const BACKEND6 = '2001:db8:100::10';
const SPORT = 40000;

/**
 * One TCP service on port 80 to BACKEND4 (and one to BACKEND6), as the daemon
 * writes them: the backends' ids by family. The VIPs do not answer echo: an
 * XDP_TX here is a forwarded packet, recorded at both points.
 */
async function serve(w: World, families: ReadonlyArray<4 | 6> = [4, 6]): Promise<Record<4 | 6, number>> {
  const specs = families.map((f) => serviceSpec({ vip: f === 4 ? VIP4 : VIP6, port: 80, backends: [f === 4 ? BACKEND4 : BACKEND6], flags: { icmpEcho: false } }));
  await w.apply(specs);
  const ids = { 4: -1, 6: -1 };
  families.forEach((f, i) => (ids[f] = idsOf(w, specs[i]).backends[0]));
  return ids;
}

/** A world with one TCP service on port 80 per family, one backend each. */
async function recWorld(t: Parameters<typeof world>[0]) {
  const w = world(t);
  const backendIds = await serve(w);
  const rec = recorderMaps(t, w.lb.obj);
  const ring = collector(t, rec.ring);
  return { w, rec, ring, backendIds };
}

function flowFrame(family: 4 | 6, o: { src?: string; dst?: string; sport?: number; dport?: number; payload?: number } = {}): Buffer {
  const seg = P.tcp({ sport: o.sport ?? SPORT, dport: o.dport ?? 80, flags: P.TCP_ACK | P.TCP_PSH, payload: Buffer.alloc(o.payload ?? 200, 0x61) });
  return family === 4
    ? P.ether(P.ipv4({ src: o.src ?? CLIENT4, dst: o.dst ?? VIP4 }, seg))
    : P.ether(P.ipv6({ src: o.src ?? CLIENT6, dst: o.dst ?? VIP6 }, seg));
}

const byTime = (a: Sample, b: Sample) => (a.meta.tsNs < b.meta.tsNs ? -1 : a.meta.tsNs > b.meta.tsNs ? 1 : 0);

t.test('recorder off (n_masks 0, entries still there): no sample, frames and verdicts as without a recorder', needsRoot, async (t) => {
  const { w, rec, ring } = await recWorld(t);
  const frames = [flowFrame(4), flowFrame(6), flowFrame(4, { dst: '192.0.2.2', dport: 22 })];
  const before = w.runAll(frames);
  rec.program(compileFilters([parseFilter('')]));
  const on = w.runAll(frames);
  t.equal((await ring.next(5)).length, 5, 'with a match-all filter: 5 samples (2 forwarded × in and out, 1 passed × in)');
  rec.off();
  const off = w.runAll(frames);
  const samples = await ring.next(1, 300);
  t.equal(samples.length, 0, 'off: no sample');
  t.same(before.map((r) => r.retval), [bpf.XDP_TX, bpf.XDP_TX, bpf.XDP_PASS]);
  t.same(on.map((r) => r.retval), before.map((r) => r.retval), 'recorder on: same verdicts');
  t.same(off.map((r) => r.retval), before.map((r) => r.retval), 'recorder off: same verdicts');
  before.forEach((r, i) => {
    t.same(on[i].data, r.data, `frame ${i}: recording changes no byte`);
    t.same(off[i].data, r.data, `frame ${i}: off changes no byte`);
  });
  t.same(rec.counts(), { samples: 5n, outputFailed: 0n });
});

t.test('the reader thread decodes the samples: in time order, every field and byte as the datapath wrote it', needsRoot, async (t) => {
  const w = world(t);
  const backendIds = await serve(w, [4]);
  const rec = recorderMaps(t, w.lb.obj);
  const batches: SampleBatch[] = [];
  const reader = new bpf.RecorderSampleReader(rec.ring, (b) => batches.push(b));
  t.teardown(() => reader.close());
  rec.program(compileFilters([{ ruleId: 37, filters: [parseFilter(`dst=${VIP4}/32 dport=80`)] }]));
  const frames = [0, 1, 2].map((i) => flowFrame(4, { payload: 100 + i * 301 }));
  const t0 = process.hrtime.bigint();
  const out = w.runAll(frames);
  const t1 = process.hrtime.bigint();
  const deadline = Date.now() + 5000;
  while (batches.reduce((n, b) => n + b.records, 0) < 6 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  t.same(batches.map((b) => b.lost), batches.map(() => 0), 'nothing lost');
  t.equal(batches.reduce((n, b) => n + b.count, 0), 6, 'six samples, all decoded');
  const samples: RecordedSample[] = batches.flatMap(decodeSampleBatch);
  for (const b of batches) {
    const ts = decodeSampleBatch(b).map((s) => s.tsNs);
    t.ok(ts.every((x, i) => i === 0 || x >= ts[i - 1]), 'a batch is in time order');
  }
  samples.sort((a, b) => (a.tsNs < b.tsNs ? -1 : a.tsNs > b.tsNs ? 1 : 0));
  for (const s of samples) t.ok(s.tsNs >= t0 && s.tsNs <= t1, `ts ${s.tsNs} within the runs [${t0}, ${t1}]`);
  frames.forEach((frame, i) => {
    const [sin, sout] = [samples[2 * i], samples[2 * i + 1]];
    t.same({ ...sin, tsNs: 0n, cpu: 0 }, { tsNs: 0n, rules: 1n << 37n, origLen: frame.length, point: 'in', ifindex: w.fib.lb0, backendId: undefined, family: 4, cpu: 0, data: frame }, `packet ${i} in: fields and the frame as received`);
    t.same({ ...sout, tsNs: 0n, cpu: 0 }, { tsNs: 0n, rules: 1n << 37n, origLen: out[i].data.length, point: 'out', ifindex: w.fib.lb0, backendId: backendIds[4], family: 4, cpu: 0, data: out[i].data }, `packet ${i} out: fields and the frame as sent`);
  });
});

for (const family of [4, 6] as const) {
  const client = family === 4 ? CLIENT4 : CLIENT6;
  const vip = family === 4 ? VIP4 : VIP6;
  const host = family === 4 ? 32 : 128;

  t.test(`IPv${family}: an exact filter on a VIP flow records each packet as received and as sent`, needsRoot, async (t) => {
    const { w, rec, ring, backendIds } = await recWorld(t);
    const backendId = backendIds[family];
    rec.program(compileFilters([parseFilter(`src=${client}/${host} dst=${vip}/${host} sport=${SPORT} dport=80 proto=tcp`)]));
    const frames = [0, 1, 2].map((i) => flowFrame(family, { payload: 100 + i * 300 }));
    const t0 = process.hrtime.bigint();
    const out = w.runAll(frames);
    const t1 = process.hrtime.bigint();
    for (const r of out) t.equal(r.retval, bpf.XDP_TX, 'forwarded');
    const samples = await ring.next(6);
    t.equal(samples.length, 6, 'two samples per packet');
    t.equal(ring.lost, 0, 'nothing lost');
    t.same(rec.counts(), { samples: 6n, outputFailed: 0n });

    // each CPU's ring keeps the order of emission: time never goes back in it
    for (const cpu of new Set(samples.map((s) => s.cpu))) {
      const ts = samples.filter((s) => s.cpu === cpu).map((s) => s.meta.tsNs);
      t.ok(ts.every((x, i) => i === 0 || x >= ts[i - 1]), `CPU ${cpu}: timestamps non-decreasing`);
    }
    samples.sort(byTime);
    t.same(samples.map((s) => s.meta.point), [1, 2, 1, 2, 1, 2], 'in time order: in, out for each packet');
    for (const s of samples) t.ok(s.meta.tsNs >= t0 && s.meta.tsNs <= t1, `ts_ns ${s.meta.tsNs} within the test runs on CLOCK_MONOTONIC [${t0}, ${t1}]`);

    frames.forEach((frame, i) => {
      const sin = samples[2 * i];
      const sout = samples[2 * i + 1];
      t.same(sin.meta, { ...sin.meta, rules: 1n, origLen: frame.length, capLen: frame.length, ifindex: w.fib.lb0, backendId: NO_BACKEND, point: L.CAPTURE_IN, family }, `packet ${i} in: header`);
      t.same(sin.data, frame, `packet ${i} in: the frame as received, byte for byte`);
      const sent = out[i].data;
      t.same(sout.meta, { ...sout.meta, rules: 1n, origLen: sent.length, capLen: sent.length, ifindex: w.fib.lb0, backendId, point: L.CAPTURE_OUT, family }, `packet ${i} out: header, backend ${backendId}`);
      t.same(sout.data, sent, `packet ${i} out: the frame as sent, byte for byte`);
      t.equal(sent.length, frame.length + (family === 4 ? 20 : 40), 'grew by the outer header');
      const d = decap(sout.data);
      t.same(d.inner, ipPacket(frame), `packet ${i} out: ${family === 4 ? 'IPIP' : 'IP6IP6'} around the original packet`);
      t.equal(d.outer4 ? d.outer4.dst : L.addressText(d.outer6!.dst, 6), family === 4 ? BACKEND4 : BACKEND6, 'outer destination: the backend in the header');
    });
    const rows = tsharkCheck(t, scratch(t, 'out.pcap'), samples.filter((s) => s.meta.point === L.CAPTURE_OUT).map((s) => s.data), ['ip.dst', 'ipv6.dst', 'tcp.dstport']);
    for (const r of rows) t.same(r.extra, family === 4 ? [`${BACKEND4},${VIP4}`, '', '80'] : ['', `${BACKEND6},${VIP6}`, '80'], 'tshark: outer to the backend, inner to the VIP');
  });

  t.test(`IPv${family}: the cap length cuts the copy, not the original length`, needsRoot, async (t) => {
    const { w, rec, ring } = await recWorld(t);
    rec.program(compileFilters([parseFilter(`dst=${vip}/${host} dport=80`)]), () => 64);
    const frame = flowFrame(family, { payload: 700 });
    const r = w.run(frame);
    const samples = (await ring.next(2)).sort(byTime);
    t.equal(samples.length, 2);
    t.same(samples.map((s) => [s.meta.point, s.meta.capLen, s.meta.origLen]), [[1, 64, frame.length], [2, 64, r.data.length]]);
    t.same(samples[0].data, frame.subarray(0, 64), 'in: the first 64 bytes as received');
    t.same(samples[1].data, r.data.subarray(0, 64), 'out: the first 64 bytes as sent');
    // a cap length above the frame length: the whole frame, and no more
    rec.program(compileFilters([parseFilter(`dst=${vip}/${host} dport=80`)]), () => 5000);
    w.run(frame);
    const whole = (await ring.next(2)).sort(byTime);
    t.same(whole.map((s) => s.meta.capLen), [frame.length, r.data.length], 'cap length 5000 on shorter frames: whole frames');
  });
}

t.test('rules of several matching entries, through different masks, are ORed; the copy is the longest cap length', needsRoot, async (t) => {
  const { w, rec, ring } = await recWorld(t);
  const caplens: Record<number, number> = { 0: 100, 5: 200, 9: 0, 63: 150 };
  const rules: RuleFilters[] = [
    { ruleId: 0, filters: [parseFilter(`dst=${VIP4}/32 dport=80 proto=tcp`)] },
    { ruleId: 5, filters: [parseFilter('src=192.0.2.0/24')] },
    { ruleId: 9, filters: [parseFilter(`src=${CLIENT6}/128`)] },
    { ruleId: 63, filters: [parseFilter('dport=80'), parseFilter('sport=53 proto=udp')] },
  ];
  const compiled = compileFilters(rules);
  t.ok(compiled.maskSlots >= 4, `${compiled.maskSlots} masks`);
  rec.program(compiled, (r) => caplens[r]);
  const cases: Array<{ frame: Buffer; rules: bigint; caplen: number; forwarded: boolean; what: string }> = [
    { frame: flowFrame(4, { payload: 400 }), rules: (1n << 0n) | (1n << 5n) | (1n << 63n), caplen: 200, forwarded: true, what: 'IPv4 to the VIP: rules 0, 5, 63' },
    { frame: flowFrame(4, { dst: '192.0.2.2', dport: 22, payload: 400 }), rules: 1n << 5n, caplen: 200, forwarded: false, what: 'IPv4 to the node: rule 5' },
    { frame: flowFrame(6, { payload: 400 }), rules: (1n << 9n) | (1n << 63n), caplen: 0, forwarded: true, what: 'IPv6 to the VIP: rules 9 (whole frame), 63' },
    { frame: P.ether(P.ipv4({ src: '198.51.100.1', dst: VIP4 }, P.udp({ sport: 53, dport: 9999 }))), rules: 1n << 63n, caplen: 150, forwarded: false, what: 'IPv4 UDP from port 53: rule 63 by its second filter' },
  ];
  for (const c of cases) {
    const r = w.run(c.frame);
    t.equal(r.retval, c.forwarded ? bpf.XDP_TX : bpf.XDP_PASS, `${c.what}: verdict`);
    const samples = (await ring.next(c.forwarded ? 2 : 1)).sort(byTime);
    t.equal(samples.length, c.forwarded ? 2 : 1, `${c.what}: ${c.forwarded ? 'in and out' : 'in only'}`);
    const lens = [c.frame.length, r.data.length];
    samples.forEach((s, i) => {
      t.equal(s.meta.rules, c.rules, `${c.what}: rules 0x${c.rules.toString(16)} at point ${s.meta.point}`);
      t.equal(s.meta.capLen, c.caplen === 0 ? lens[i] : Math.min(c.caplen, lens[i]), `${c.what}: cap length at point ${s.meta.point}`);
    });
  }
});

for (const family of [4, 6] as const) {
  t.test(`IPv${family}: the filter in front of the hash: an entry is looked up only through its two bits, the ones TypeScript computes`, needsRoot, async (t) => {
    const { w, rec, ring } = await recWorld(t);
    const client = family === 4 ? CLIENT4 : CLIENT6;
    const vip = family === 4 ? VIP4 : VIP6;
    const host = family === 4 ? 32 : 128;
    // two rules through two masks: the packet hits both
    const c = compileFilters([
      { ruleId: 2, filters: [parseFilter(`src=${client}/${host} dport=80 proto=tcp`)] },
      { ruleId: 5, filters: [parseFilter(`dst=${vip}/${host}`)] },
    ]);
    t.equal(c.masks.length, 2);
    rec.program(c);
    const [a, b] = c.entries.map((e) => ({ rule: e.ruleMask, at: recFilterBits(entryKey(e)) }));
    const rulesSeen = async () => {
      t.equal(w.run(flowFrame(family)).retval, bpf.XDP_TX, 'forwarded');
      const s = await ring.next(2, 1000);
      return s.length ? s[0].meta.rules : 0n;
    };
    t.equal(await rulesSeen(), a.rule | b.rule, 'bits as programmed: both rules');

    const only = (x: typeof a) => {
      const words = new BigUint64Array(L.REC_FILTER_WORDS);
      words[x.at.word] |= x.at.bits;
      return words;
    };
    rec.setFilter(only(a));
    t.equal(await rulesSeen(), a.rule, "every word clear but the first entry's two bits: only its rule (the datapath reads the word and bits TypeScript names)");
    rec.setFilter(only(b));
    t.equal(await rulesSeen(), b.rule, "only the second entry's bits: only its rule");
    const lowest = b.at.bits & -b.at.bits;
    if (lowest !== b.at.bits)
      for (const kept of [lowest, b.at.bits ^ lowest]) {
        rec.setFilter(only({ ...b, at: { word: b.at.word, bits: kept } }));
        t.equal(await rulesSeen(), 0n, 'one of its two bits clear: not looked up, not recorded');
      }
    rec.setFilter(new BigUint64Array(L.REC_FILTER_WORDS));
    t.equal(await rulesSeen(), 0n, 'every bit clear: entries there, none looked up, nothing recorded');

    rec.setFilter(new BigUint64Array(L.REC_FILTER_WORDS).fill(~0n));
    t.equal(await rulesSeen(), a.rule | b.rule, 'every bit set: both rules, as without a filter');
    const other = family === 4 ? { src: '192.0.2.222', dst: '203.0.113.99' } : { src: '2001:db8::222', dst: '2001:db8::99' };
    t.equal(w.run(flowFrame(family, other)).retval, bpf.XDP_PASS);
    t.equal((await ring.next(1, 300)).length, 0, 'every bit set, a packet with no entry: looked up, still no sample');
    t.same(rec.counts(), { samples: 8n, outputFailed: 0n });
  });
}

t.test('one mask: its filter bits decide, read before the match (inline), as with more masks', needsRoot, async (t) => {
  const { w, rec, ring } = await recWorld(t);
  const c = compileFilters([parseFilter(`src=${CLIENT4}/32 dport=80 proto=tcp`)]);
  t.equal(c.maskSlots, 1);
  rec.program(c);
  const { word, bits } = recFilterBits(entryKey(c.entries[0]));
  const samples = async () => {
    t.equal(w.run(flowFrame(4)).retval, bpf.XDP_TX, 'forwarded');
    return (await ring.next(2, 1000)).length;
  };
  t.equal(await samples(), 2, 'bits as programmed: recorded at both points');
  rec.setFilter(new BigUint64Array(L.REC_FILTER_WORDS));
  t.equal(await samples(), 0, 'every bit clear: not recorded');
  const only = new BigUint64Array(L.REC_FILTER_WORDS);
  only[word] = bits;
  rec.setFilter(only);
  t.equal(await samples(), 2, "only the entry's bits: recorded");
});

t.test("the memo: a tuple's match is reused until gen moves on, and not at all with REC_F_NO_MEMO", needsRoot, async (t) => {
  const { w, rec, ring } = await recWorld(t);
  // three shapes; the packet hits the last one
  const shapes = [parseFilter('dst=198.51.100.0/32 dport=1000'), parseFilter('dst=198.51.100.0/24')];
  const c = compileFilters([...shapes, parseFilter(`src=${CLIENT4}/32 dport=80 proto=tcp`)]);
  t.equal(c.maskSlots, 3);
  rec.program(c);
  const entry = c.entries[c.entries.length - 1];
  const key = entryKey(entry);
  const value = rec.entries.lookup(key)!;
  const other = flowFrame(4, { src: '192.0.2.222' });
  const otherEntry = compileFilters([...shapes, parseFilter(`src=${CLIENT4}/32 dport=80 proto=tcp`), parseFilter('src=192.0.2.222/32 dport=80 proto=tcp')]).entries.at(-1)!;
  const samples = async (frame: Buffer) => {
    t.equal(w.run(frame).retval, bpf.XDP_TX, 'forwarded');
    return (await ring.next(2, 1000)).length;
  };
  // the memo is per CPU and a test run may land on any: what one CPU
  // memoized is copied to every CPU's slot
  const memo = w.lb.obj.map(L.REC_MAP_NAMES.memo);
  t.teardown(() => memo.close());
  const spread = () => {
    for (let slot = 0; slot < L.REC_MEMO_SLOTS; slot++) {
      const learnt = (memo.lookupPerCpu(L.u32(slot)) ?? []).find((v) => v.readUInt32LE(L.LAYOUT.xdplb_rec_memo.fields.gen.offset) !== 0);
      if (learnt) memo.updatePerCpu(L.u32(slot), learnt);
    }
  };
  t.equal(await samples(flowFrame(4)), 2, 'matched and memoized: recorded at both points');
  t.equal(await samples(other), 0, 'another tuple: no match, memoized too');
  spread();

  // maps changed behind the memo's back (gen kept): the memo answers
  rec.entries.delete(key);
  rec.entries.update(entryKey(otherEntry), value);
  const { word, bits } = recFilterBits(entryKey(otherEntry));
  rec.filter.update(L.u32(word), L.u64(rec.filter.lookup(L.u32(word))!.readBigUInt64LE(0) | bits));
  t.equal(await samples(flowFrame(4)), 2, 'entry gone, gen kept: still recorded (the memo, not the maps)');
  t.equal(await samples(other), 0, 'entry added, gen kept: still not recorded');

  rec.setConfig({ flags: L.REC_F_NO_MEMO });
  t.equal(await samples(flowFrame(4)), 0, 'REC_F_NO_MEMO: the maps answer: no entry, not recorded');
  t.equal(await samples(other), 2, 'REC_F_NO_MEMO: its new entry records it');
  rec.setConfig({ flags: 0 });
  t.equal(await samples(flowFrame(4)), 2, 'the memo again, gen still kept: the old answer');
  rec.nextGen();
  t.equal(await samples(flowFrame(4)), 0, 'gen moved on: the memo is not used; not recorded');
  t.equal(await samples(other), 2, 'gen moved on: the new entry records the other tuple');
});

t.test("the daemon's writes: filter bits set before their entries are inserted, cleared only after their entries are deleted", needsRoot, async (t) => {
  const { w, rec, ring } = await recWorld(t);
  const maps = DaemonRecorderMaps.open(w.lb.pinRoot);
  if (!maps) throw new Error('no recorder maps pinned');
  t.teardown(() => maps.close());
  maps.reset();
  const words = () => {
    const d = rec.filter.dump();
    const out = new BigUint64Array(L.REC_FILTER_WORDS);
    for (let i = 0; i < d.count; i++) out[d.keys.readUInt32LE(i * 4)] = d.values.readBigUInt64LE(i * 8);
    return out;
  };
  const hasBits = (key: Buffer, now: BigUint64Array) => {
    const { word, bits } = recFilterBits(key);
    return (now[word] & bits) === bits;
  };
  // every insert and delete checks the kernel's filter at that moment
  const inner = (maps as unknown as { maps: { entries: { batchUpdate: (k: Buffer[], v: Buffer[]) => void; batchDelete: (k: Buffer[]) => void } } }).maps.entries;
  const update = inner.batchUpdate.bind(inner);
  const del = inner.batchDelete.bind(inner);
  let inserted = 0;
  let deleted = 0;
  inner.batchUpdate = (keys, values) => {
    const now = words();
    for (const k of keys) if (!hasBits(k, now)) t.fail(`inserted before its bits were set: ${k.toString('hex')}`);
    inserted += keys.length;
    update(keys, values);
  };
  inner.batchDelete = (keys) => {
    const now = words();
    for (const k of keys) if (!hasBits(k, now)) t.fail(`its bits were cleared before it was deleted: ${k.toString('hex')}`);
    deleted += keys.length;
    del(keys);
  };
  const rules = (n: number, from: number) =>
    [{ ruleId: 0, filters: Array.from({ length: n }, (_, i) => parseFilter(`src=192.0.2.${from + i}/32 dport=80 proto=tcp`)) }];
  const first = compileFilters(rules(200, 1));
  maps.apply(first, () => 0);
  t.same(words(), recFilterWords(first), 'after the first set: exactly its bits');
  const second = compileFilters([...rules(50, 101), { ruleId: 1, filters: [parseFilter(`dst=${VIP4}/32`)] }], { previous: first });
  maps.apply(second, () => 0);
  t.same(words(), recFilterWords(second), "after the change: the second set's bits, the first's others gone");
  t.ok(inserted >= 200 + 1 && deleted >= 150, `inserts (${inserted}) and deletes (${deleted}) were all checked`);
  t.equal(w.run(flowFrame(4, { src: '192.0.2.120' })).retval, bpf.XDP_TX);
  t.equal((await ring.next(2, 1000)).length, 2, 'a packet of the second set is recorded at both points');
  maps.reset();
  t.same(words(), new BigUint64Array(L.REC_FILTER_WORDS), 'reset: every bit clear');
});

t.test('packets that match nothing, or are not parsed, emit nothing', needsRoot, async (t) => {
  const { w, rec, ring } = await recWorld(t);
  rec.program(compileFilters([parseFilter(`src=${CLIENT4}/32 dport=80 proto=tcp`), parseFilter('dst=2001:db8:f00::/48 sport=1')]));
  const frames = [
    flowFrame(4, { src: '192.0.2.101' }), // another client
    flowFrame(4, { dport: 81 }), // another port
    flowFrame(6), // IPv6, sport 40000
    P.ether(P.ipv4({ src: CLIENT4, dst: VIP4 }, P.udp({ sport: SPORT, dport: 80 }))), // UDP
    P.arp('192.0.2.100', '192.0.2.2'), // not IP: never reaches the hook
    P.ether(P.ipv4({ src: CLIENT4, dst: VIP4, mf: true }, P.tcp({ sport: SPORT, dport: 80 }))), // fragment: passed by the parser
  ];
  const r = w.runAll(frames);
  t.same(r.map((x) => x.retval), [bpf.XDP_TX, bpf.XDP_PASS, bpf.XDP_TX, bpf.XDP_PASS, bpf.XDP_PASS, bpf.XDP_PASS], 'VIP flows forwarded, the rest passed');
  t.equal((await ring.next(1, 300)).length, 0, 'no sample');
  t.same(rec.counts(), { samples: 0n, outputFailed: 0n });
});

t.test('the inbound point records packets for no VIP too (the hook sits after parse, before the service lookup)', needsRoot, async (t) => {
  const { w, rec, ring } = await recWorld(t);
  rec.program(compileFilters([parseFilter('src=192.0.2.0/24')]));
  const frame = flowFrame(4, { dst: '192.0.2.2', dport: 22 });
  const r = w.run(frame);
  t.equal(r.retval, bpf.XDP_PASS, 'not for a VIP: passed to the kernel');
  const s = await ring.next(1);
  t.equal(s.length, 1, 'one sample: inbound only, nothing is sent');
  t.equal(s[0].meta.point, L.CAPTURE_IN);
  t.equal(s[0].meta.backendId, NO_BACKEND);
  t.same(s[0].data, frame);
});

t.test('an ICMP error about a recorded flow is recorded with it, at both points: its tuple is the quoted flow', needsRoot, async (t) => {
  const { w, rec, ring, backendIds } = await recWorld(t);
  rec.program(compileFilters([parseFilter(`src=${CLIENT4}/32 sport=${SPORT} dport=80 proto=tcp`)]));
  t.equal(w.run(flowFrame(4)).retval, bpf.XDP_TX, 'the flow');
  t.equal((await ring.next(2)).length, 2, 'the flow: in and out');
  const quoted = P.ipv4({ src: VIP4, dst: CLIENT4 }, P.tcp({ sport: 80, dport: SPORT }));
  const err = P.ether(P.ipv4({ src: '192.0.2.1', dst: VIP4 }, P.icmpError({ type: 3, code: 4, mtu: 1300, quoted })));
  const r = w.run(err);
  t.equal(r.retval, bpf.XDP_TX, 'the error goes to the backend of the quoted flow');
  const s = (await ring.next(2)).sort(byTime);
  t.same(s.map((x) => [x.meta.point, x.meta.rules, x.meta.backendId]), [[L.CAPTURE_IN, 1n, NO_BACKEND], [L.CAPTURE_OUT, 1n, backendIds[4]]]);
  t.same(s[0].data, err, 'in: the ICMP error as received');
  t.same(s[1].data, r.data, 'out: encapsulated');
});

t.test('without a reader the samples are counted as output failures, and forwarding goes on', needsRoot, async (t) => {
  const w = world(t);
  await serve(w, [4]);
  const rec = recorderMaps(t, w.lb.obj);
  rec.program(compileFilters([parseFilter('')]));
  const r = w.runAll([flowFrame(4), flowFrame(4)]);
  t.same(r.map((x) => x.retval), [bpf.XDP_TX, bpf.XDP_TX]);
  t.same(rec.counts(), { samples: 0n, outputFailed: 4n }, 'four samples attempted, none written');
});

// ---- agreement with the reference matcher ----


function maskTo(bytes: Uint8Array, len: number): Uint8Array {
  const out = new Uint8Array(16);
  for (let i = 0; i < 16; i++) out[i] = bytes[i] & ((0xff00 >> Math.max(0, Math.min(8, len - 8 * i))) & 0xff);
  return out;
}

interface RandomPacket {
  tuple: Tuple;
  frame: Buffer;
}

function randomWorld(seed: number) {
  const rand = seededRandom(seed);
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rand() * xs.length)];
  const int = (n: number) => Math.floor(rand() * n);
  const addr = (family: 4 | 6, side: 'src' | 'dst'): Uint8Array => {
    const b = new Uint8Array(16);
    if (family === 4) {
      const nets = side === 'src' ? [[192, 0, 2], [198, 51, 100]] : [[203, 0, 113], [198, 51, 100]];
      b.set(pick(nets));
      b[3] = side === 'dst' && rand() < 0.5 ? 10 : int(256);
    } else {
      b.set([0x20, 0x01, 0x0d, 0xb8]);
      b[4] = side === 'src' ? 0 : 0x0f;
      b[5] = int(2);
      b[7] = int(4);
      b[14] = int(2);
      b[15] = side === 'dst' && rand() < 0.5 ? 0x10 : int(256);
    }
    return b;
  };
  const text = (b: Uint8Array, family: 4 | 6) => L.addressText(Buffer.from(b), family);

  /** Tuples from small pools, so that filters made from them overlap and often match. */
  const packet = (index: number): RandomPacket => {
    const family = pick([4, 6] as const);
    const proto = pick([L.IPPROTO_TCP, L.IPPROTO_UDP, family === 4 ? L.IPPROTO_ICMP : L.IPPROTO_ICMPV6]);
    const ports = proto === L.IPPROTO_TCP || proto === L.IPPROTO_UDP;
    const src = addr(family, 'src');
    const dst = addr(family, 'dst');
    const sport = ports ? pick([SPORT, 53, 1234, int(65536)]) : 0;
    const dport = ports ? pick([80, 53, 443, int(65536)]) : 0;
    const s = text(src, family);
    const d = text(dst, family);
    const l4 = proto === L.IPPROTO_TCP ? P.tcp({ sport, dport }) : proto === L.IPPROTO_UDP ? P.udp({ sport, dport }) : P.echoRequest({ id: index & 0xffff, seq: 1, v6: family === 6 });
    const ip = family === 4 ? P.ipv4({ src: s, dst: d }, l4) : P.ipv6({ src: s, dst: d }, l4);
    // the packet's index in the source MAC: it survives any cap length (>= 64)
    const mac = `02:00:${[24, 16, 8, 0].map((sh) => ((index >>> sh) & 0xff).toString(16).padStart(2, '0')).join(':')}`;
    return { tuple: { family, proto, sport, dport, src, dst }, frame: P.ether(ip, { src: mac }) };
  };

  /** A filter made from a packet's tuple: each field kept or wildcarded, prefixes of random lengths. */
  const filter = (p: RandomPacket): Filter => {
    const f: Filter = {};
    const tu = p.tuple;
    const fam = tu.family as 4 | 6;
    const max = fam === 4 ? 32 : 128;
    const prefix = (a: Uint8Array): Prefix => {
      const len = rand() < 0.3 ? max : int(max + 1);
      return { family: fam, bytes: maskTo(a, len), len };
    };
    if (rand() < 0.6) f.src = prefix(tu.src);
    if (rand() < 0.6) f.dst = prefix(tu.dst);
    if (f.src || f.dst) f.family = fam;
    if (rand() < 0.5) f.proto = tu.proto;
    const ports = tu.proto === L.IPPROTO_TCP || tu.proto === L.IPPROTO_UDP;
    if ((ports || f.proto === undefined) && rand() < 0.3) f.sport = tu.sport;
    if ((ports || f.proto === undefined) && rand() < 0.5) f.dport = tu.dport;
    return f;
  };

  return { rand, int, packet, filter };
}

t.test('the BPF match equals filter.ts on 10,000 random packets × 20 random filter sets', needsRoot, async (t) => {
  const seed = Number(process.env.XDPLB_REC_SEED ?? Date.now() % 1_000_000);
  t.comment(`seed ${seed} (XDPLB_REC_SEED=${seed} replays it)`);
  const R = randomWorld(seed);
  const { w, rec, ring } = await recWorld(t);
  const SETS = 20;
  const PER_SET = 500;
  let mismatches = 0;
  let matched = 0;
  let outbound = 0;
  let index = 0;
  for (let set = 0; set < SETS; set++) {
    // 1..4 rules of 1..6 filters, made from packets of the same pools
    const rules: RuleFilters[] = [];
    const ids = new Set<number>();
    const nRules = 1 + R.int(4);
    while (ids.size < nRules) ids.add(R.int(64));
    for (const ruleId of ids) rules.push({ ruleId, filters: Array.from({ length: 1 + R.int(6) }, () => R.filter(R.packet(0))) });
    const caplens = new Map([...ids].map((id) => [id, R.rand() < 0.3 ? 0 : 64 + R.int(200)]));
    const compiled = compileFilters(rules);
    rec.program(compiled, (r) => caplens.get(r)!);

    const packets = Array.from({ length: PER_SET }, () => R.packet(index++));
    const want = packets.map((p) => matchCompiled(compiled, p.tuple));
    // the plain reading of the filters says the same
    packets.forEach((p, i) => {
      let plain = 0n;
      for (const r of rules) if (r.filters.some((f) => matches(f, p.tuple))) plain |= 1n << BigInt(r.ruleId);
      if (plain !== want[i]) mismatches++;
    });
    const results = w.runAll(packets.map((p) => p.frame));
    const expected = want.reduce((n, x, i) => n + (x ? (results[i].retval === bpf.XDP_TX ? 2 : 1) : 0), 0);
    const samples = await ring.next(expected);
    // An inbound sample carries the packet's index in its source MAC. The
    // outbound one (new MACs) follows it on the same CPU's ring: a test run
    // never changes CPU.
    const got = new Map<number, Sample[]>();
    const lastIn = new Map<number, number>();
    for (const s of samples) {
      const i = s.meta.point === L.CAPTURE_IN ? s.data.readUInt32BE(8) - (index - PER_SET) : lastIn.get(s.cpu) ?? -1;
      if (s.meta.point === L.CAPTURE_IN) lastIn.set(s.cpu, i);
      got.set(i, [...(got.get(i) ?? []), s]);
    }
    packets.forEach((p, i) => {
      const ss = got.get(i) ?? [];
      const forwarded = results[i].retval === bpf.XDP_TX;
      // an entry's cap length is the largest of its rules', so the copy's is the largest of the rules matched
      const caplen = entryCaplen(ruleIdsOf(want[i]), (r) => caplens.get(r)!);
      const ok =
        want[i] === 0n
          ? ss.length === 0
          : ss.length === (forwarded ? 2 : 1) &&
            ss.every((s) => s.meta.rules === want[i]) &&
            ss[0].meta.point === L.CAPTURE_IN &&
            ss[0].meta.capLen === (caplen === 0 ? p.frame.length : Math.min(caplen, p.frame.length)) &&
            ss[0].data.equals(p.frame.subarray(0, ss[0].meta.capLen)) &&
            (!forwarded || (ss[1].meta.point === L.CAPTURE_OUT && ss[1].meta.origLen === results[i].data.length));
      if (want[i]) matched++;
      if (want[i] && forwarded) outbound++;
      if (!ok) {
        mismatches++;
        if (mismatches <= 5)
          t.fail(`set ${set} packet ${i}: want rules 0x${want[i].toString(16)}, got ${ss.map((s) => `point ${s.meta.point} rules 0x${s.meta.rules.toString(16)} cap ${s.meta.capLen}`).join('; ') || 'no sample'}`);
      }
    });
  }
  t.equal(mismatches, 0, `BPF = matchCompiled = plain matcher on ${index} packets (${matched} matched, ${outbound} also recorded outbound)`);
  t.ok(matched > index / 10 && matched < index * 0.9, 'the random sets match a fair share, neither none nor all');
  t.ok(outbound > 0, 'some matching packets were for a VIP and recorded at both points');
  t.equal(ring.lost, 0, 'nothing lost in the ring');
  t.equal(rec.counts().outputFailed, 0n);
});

t.test('32 masks and 100,000 entries load, and packets find entries in the first and the last mask', needsRoot, async (t) => {
  const { w, rec, ring } = await recWorld(t);
  // 32 shapes: IPv4 source prefixes /1../32, each with exact dst, dport, proto
  const filters: RuleFilters[] = [];
  const byRule = new Map<number, Filter[]>();
  const N = 100_000;
  for (let i = 0; i < N; i++) {
    const len = 1 + (i % 32);
    const src = new Uint8Array(16);
    src.set([192, 0, 2, 100]);
    const f: Filter = {
      family: 4,
      src: { family: 4, bytes: maskTo(src, len), len },
      dst: { family: 4, bytes: new Uint8Array([203, 0, 113, 10, ...new Array(12).fill(0)]), len: 32 },
      dport: 1 + Math.floor(i / 32),
      proto: TCP,
    };
    const rule = i % 64;
    byRule.set(rule, [...(byRule.get(rule) ?? []), f]);
  }
  for (const [ruleId, fs] of byRule) filters.push({ ruleId, filters: fs });
  const t0 = Date.now();
  const compiled = compileFilters(filters);
  t.equal(compiled.masks.length, 32, '32 masks');
  t.equal(compiled.entries.length, N, `${N} entries`);
  rec.program(compiled);
  t.comment(`compiled and programmed in ${Date.now() - t0} ms`);
  const d = rec.entries.dump();
  t.equal(d.count, N, 'all entries in the map');

  // dport p has the filters i = 32(p-1) .. 32(p-1)+31, one per prefix
  // length, of rules i % 64: a packet from 192.0.2.100 matches all 32
  const cases = [
    { dport: 1, rules: 0xffffffffn, what: 'dport 1: filters 0..31 (rules 0..31) through all 32 masks' },
    { dport: 2, rules: 0xffffffffn << 32n, what: 'dport 2: filters 32..63 (rules 32..63)' },
    { dport: 3125, rules: 0xffffffffn, what: 'dport 3125: the last 32 filters (99,968..99,999: rules 0..31)' },
    { dport: 3126, rules: 0n, what: 'dport 3126: no filter' },
  ];
  for (const c of cases) {
    const frame = flowFrame(4, { dport: c.dport });
    t.equal(matchCompiled(compiled, { family: 4, proto: TCP, sport: SPORT, dport: c.dport, src: new Uint8Array([192, 0, 2, 100, ...new Array(12).fill(0)]), dst: new Uint8Array([203, 0, 113, 10, ...new Array(12).fill(0)]) }), c.rules, `${c.what}: filter.ts`);
    w.run(frame);
    const s = await ring.next(1, c.rules ? 5000 : 300);
    t.same(s.map((x) => x.meta.rules), c.rules ? [c.rules] : [], `${c.what}: BPF`);
  }
  // 192.0.3.100 shares its first 23 bits with 192.0.2.100
  const frame = flowFrame(4, { src: '192.0.3.100', dport: 1 });
  w.run(frame);
  const s = await ring.next(1);
  t.same(s.map((x) => x.meta.rules), [(1n << 23n) - 1n], '192.0.3.100: only /1../23 cover it (rules 0..22)');
});
