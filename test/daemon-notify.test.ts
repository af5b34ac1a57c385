// The pure parts of the daemon's systemd side, without root: a failing notify
// socket is logged once per kind and never throws; STATUS= lines and their rate
// limit; which capabilities are missing from an effective set.
import t from 'tap';
import pino from 'pino';
import { Writable } from 'node:stream';
import { Notifier } from '../src/daemon/notify';
import { StatusReporter, statusLine, type StatusFacts } from '../src/daemon/status';
import { checkCapabilities, missingCapabilities } from '../src/daemon/capabilities';
import { effectiveCapabilities } from '../src/sys/capabilities';
import type { ServiceSpec } from '../src/control/model';

function memoryLog(): { log: pino.Logger; lines: Array<Record<string, unknown>> } {
  const lines: Array<Record<string, unknown>> = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, done) {
      lines.push(JSON.parse(chunk.toString()) as Record<string, unknown>);
      done();
    },
  });
  return { log: pino({ level: 'debug' }, sink), lines };
}

const errno = (code: string) => Object.assign(new Error(`sd_notify send /run/x: ${code}`), { code });

t.test('a failing notify socket: never thrown, one warning per errno until a message gets through', async (t) => {
  const { log, lines } = memoryLog();
  let fail: string | undefined = 'ENOENT';
  const sent: string[] = [];
  const n = new Notifier(log, (state) => {
    if (fail) throw errno(fail);
    sent.push(state);
    return true;
  });
  t.equal(n.notify('READY=1'), false, 'a failure returns false');
  for (let i = 0; i < 50; i++) t.equal(n.notify('STATUS=x'), false);
  fail = 'ECONNREFUSED';
  n.notify('RELOADING=1');
  n.notify('READY=1');
  const warnings = () => lines.filter((l) => l.level === 40);
  t.match(
    warnings().map((w) => [w.notification, w.error]),
    [
      ['READY=1', /ENOENT/],
      ['RELOADING=1', /ECONNREFUSED/],
    ],
    'one warning per kind of failure, naming the message that failed',
  );
  fail = undefined;
  t.equal(n.notify('STATUS=y'), true);
  t.equal(lines.at(-1)?.msg, 'systemd notifications get through again');
  t.equal(n.notify('STATUS=z'), true);
  t.equal(lines.filter((l) => l.msg === 'systemd notifications get through again').length, 1, 'said once');
  fail = 'ENOENT';
  n.notify('STOPPING=1');
  t.equal(warnings().length, 3, 'after a delivery, the same failure is worth a warning again');
  t.same(sent, ['STATUS=y', 'STATUS=z']);
});

t.test('no notify socket: nothing sent, nothing logged', async (t) => {
  const { log, lines } = memoryLog();
  t.equal(new Notifier(log, () => false).notify('READY=1'), false);
  t.same(lines, []);
});

const svc = (name: string, states: Array<'active' | 'draining' | 'down'>): ServiceSpec =>
  ({ name, backends: states.map((state, i) => ({ address: `198.51.100.${i + 1}`, port: 80, weight: 1, state })) }) as unknown as ServiceSpec;

t.test('the STATUS= line', async (t) => {
  t.equal(statusLine({ services: [], recordings: 0 }), 'serving 0 services, 0 backends (0 down, 0 draining); 0 recordings');
  t.equal(statusLine({ services: [svc('a', ['active'])], recordings: 1 }), 'serving 1 service, 1 backend (0 down, 0 draining); 1 recording');
  t.equal(
    statusLine({ services: [svc('a', ['active', 'down']), svc('b', ['draining', 'down', 'active'])], recordings: 2 }),
    'serving 2 services, 5 backends (2 down, 1 draining); 2 recordings',
  );
});

t.test('updates: none before READY=1, at most one per interval with the latest state, only when the line changes, none after stop', async (t) => {
  const facts: StatusFacts = { services: [], recordings: 0 };
  const sent: string[] = [];
  let reads = 0;
  const r = new StatusReporter({
    facts: () => {
      reads++;
      return facts;
    },
    send: (line) => sent.push(line),
    minIntervalMs: 100,
  });
  facts.recordings = 1;
  r.changed();
  t.equal(reads, 0, 'before READY=1 a change reads nothing');
  t.equal(r.ready(), 'serving 0 services, 0 backends (0 down, 0 draining); 1 recording', 'the line for READY=1');
  for (let i = 2; i <= 10; i++) {
    facts.recordings = i;
    r.changed();
  }
  t.same(sent, [], 'within the interval of READY=1: nothing yet');
  t.equal(reads, 1, 'and the state was not read for each change');
  await new Promise((res) => setTimeout(res, 250));
  t.same(sent, ['serving 0 services, 0 backends (0 down, 0 draining); 10 recordings'], 'one update, with the latest state');
  await new Promise((res) => setTimeout(res, 150));
  r.changed();
  t.equal(sent.length, 1, 'an unchanged line is not sent again');
  facts.recordings = 0;
  r.changed();
  t.equal(sent.at(-1), 'serving 0 services, 0 backends (0 down, 0 draining); 0 recordings', 'a change after a quiet interval goes out at once');
  facts.recordings = 5;
  r.changed();
  r.stop();
  await new Promise((res) => setTimeout(res, 250));
  t.equal(sent.length, 2, 'the update still waiting at stop is dropped: nothing after STOPPING=1');
});

t.test('capabilities: each missing one named with its reason; CAP_SYS_ADMIN stands in for CAP_BPF and CAP_PERFMON only', async (t) => {
  const bits = (...b: number[]) => b.reduce((m, x) => m | (1n << BigInt(x)), 0n);
  t.equal(effectiveCapabilities('Name:\tnode\nCapInh:\t0000000000000000\nCapEff:\t000001fffeffffff\n'), 0x1fffeffffffn);
  t.throws(() => effectiveCapabilities('Name:\tnode\n'), /no CapEff/);
  const names = (eff: bigint) => missingCapabilities(eff).map((c) => c.name);
  t.same(names(0x1fffeffffffn), [], "this machine's root (no CAP_SYS_RESOURCE) has them all");
  t.same(names(bits(12, 38, 39)), [], 'the unit set');
  t.same(names(0n), ['CAP_BPF', 'CAP_NET_ADMIN', 'CAP_PERFMON']);
  t.same(names(bits(12, 21)), [], 'CAP_SYS_ADMIN + CAP_NET_ADMIN');
  t.same(names(bits(21, 38, 39)), ['CAP_NET_ADMIN'], 'nothing stands in for CAP_NET_ADMIN');
  const { log, lines } = memoryLog();
  t.throws(() => checkCapabilities(log, `CapEff:\t${bits(12).toString(16).padStart(16, '0')}\n`), {
    code: 'FAILED_PRECONDITION',
    message: /^missing capabilities CAP_BPF \(bpf\(\): .*\), CAP_PERFMON \(the verifier .*\); run as root or grant CAP_BPF CAP_NET_ADMIN CAP_PERFMON/,
  });
  t.doesNotThrow(() => checkCapabilities(log, 'garbage'), 'an unreadable set is let through');
  t.match(lines, [{ level: 40, msg: /capabilities not checked/ }], '... and logged');
});
