// Errors through the gRPC API, as a client sees them: each names the field of
// the request it was given (its own path, not that of a list it ends up in),
// repeats a bad value only in part, and changes nothing. And a counter stream
// ends when the service it watches is gone.
import t from 'tap';
import * as grpc from '@grpc/grpc-js';
import type { Client } from '../src/client/client';
import { daemonFixture, rpc } from '../harness/daemon';
import { needsRoot } from '../harness/fixtures';

const FILE_SERVICES = `
  - name: web
    vip: 203.0.113.10
    port: 80
    protocol: tcp
    backends:
      - address: 198.51.100.11
`;

const API_SERVICE = {
  name: 'api1',
  vip: '203.0.113.20',
  port: 443,
  protocol: 'PROTOCOL_TCP',
  backends: [{ address: '198.51.100.21' }, { address: '198.51.100.22' }],
};

type Case = [method: string, request: unknown, code: grpc.status, details: string | RegExp];

t.test('every refusal names the request field it is about and changes nothing', needsRoot, async (t) => {
  const d = await daemonFixture(t, { servicesYaml: FILE_SERVICES });
  await d.start();
  const lb = d.client();
  const rec = d.client('Recorder');
  const [e0] = await rpc(lb, 'CreateService', { service: API_SERVICE });
  t.error(e0);
  const [, before] = await rpc(lb, 'ListServices', {});

  const be = (address: string, port?: number) => ({ address, port });
  const lbCases: Case[] = [
    ['CreateService', {}, grpc.status.INVALID_ARGUMENT, 'service: is required'],
    ['CreateService', { service: { ...API_SERVICE, name: '' } }, grpc.status.INVALID_ARGUMENT, 'service.name: is required'],
    ['CreateService', { service: { ...API_SERVICE, name: 'x', vip: '203.0.113.300' } }, grpc.status.INVALID_ARGUMENT, /^service\.vip: "203\.0\.113\.300"/],
    ['CreateService', { service: { ...API_SERVICE, name: 'x', backends: [be('198.51.100.1'), be('2001:db8::1')] } }, grpc.status.INVALID_ARGUMENT, /^service\.backends\[1\]\.address: /],
    ['UpdateService', { service: { ...API_SERVICE, backends: [be('198.51.100.1', 70000)] } }, grpc.status.INVALID_ARGUMENT, /^service\.backends\[0\]\.port: must be <= 65535/],
    ['UpdateService', { service: { ...API_SERVICE, name: 'nope' } }, grpc.status.NOT_FOUND, 'service nope not found'],
    ['GetService', { name: '' }, grpc.status.INVALID_ARGUMENT, 'name: is required'],
    ['GetService', { name: 'No_Such' }, grpc.status.INVALID_ARGUMENT, /^name: "No_Such" is not an RFC 1123 label/],
    ['GetService', { name: 'nope' }, grpc.status.NOT_FOUND, 'service nope not found'],
    ['DeleteService', { name: '' }, grpc.status.INVALID_ARGUMENT, 'name: is required'],
    ['DeleteService', { name: 'web' }, grpc.status.FAILED_PRECONDITION, /^service web is declared in the configuration file/],
    ['SetBackends', { service: '', backends: [] }, grpc.status.INVALID_ARGUMENT, 'service: is required'],
    ['SetBackends', { service: 'api1', backends: [be('198.51.100.1'), be('198.51.100.2'), be('198.51.100.999')] }, grpc.status.INVALID_ARGUMENT, /^backends\[2\]\.address: "198\.51\.100\.999"/],
    ['SetBackends', { service: 'api1', backends: [be('198.51.100.1'), be('198.51.100.1')] }, grpc.status.ALREADY_EXISTS, 'backends[1]: backend 198.51.100.1 port 443 is also backends[0]'],
    ['SetBackends', { service: 'api1', backends: [{ address: '198.51.100.1', weight: 70000 }] }, grpc.status.INVALID_ARGUMENT, /^backends\[0\]\.weight: must be <= 65535/],
    ['AddBackend', { service: '', backend: be('198.51.100.1') }, grpc.status.INVALID_ARGUMENT, 'service: is required'],
    ['AddBackend', { service: 'api1' }, grpc.status.INVALID_ARGUMENT, 'backend: is required'],
    ['AddBackend', { service: 'api1', backend: be('198.51.100.x') }, grpc.status.INVALID_ARGUMENT, /^backend\.address: "198\.51\.100\.x" is not an IPv4 or IPv6 address/],
    ['AddBackend', { service: 'api1', backend: be('2001:db8::1') }, grpc.status.INVALID_ARGUMENT, /^backend\.address: "2001:db8::1" is IPv6 but the service's VIP is IPv4/],
    ['AddBackend', { service: 'api1', backend: { address: '198.51.100.1', weight: 70000 } }, grpc.status.INVALID_ARGUMENT, /^backend\.weight: must be <= 65535/],
    ['AddBackend', { service: 'api1', backend: be('198.51.100.22') }, grpc.status.ALREADY_EXISTS, 'backend: backend 198.51.100.22 port 443 is already in service api1'],
    ['AddBackend', { service: 'nope', backend: be('198.51.100.1') }, grpc.status.NOT_FOUND, 'service nope not found'],
    ['RemoveBackend', { service: '', backend: be('198.51.100.21', 443) }, grpc.status.INVALID_ARGUMENT, 'service: is required'],
    ['RemoveBackend', { service: 'api1' }, grpc.status.INVALID_ARGUMENT, 'backend: is required'],
    ['RemoveBackend', { service: 'api1', backend: be('198.51.100.300', 443) }, grpc.status.INVALID_ARGUMENT, /^backend\.address: "198\.51\.100\.300" is not/],
    ['RemoveBackend', { service: 'api1', backend: be('198.51.100.21', 0) }, grpc.status.INVALID_ARGUMENT, 'backend.port: must be >= 1, got 0'],
    ['RemoveBackend', { service: 'api1', backend: be('198.51.100.21', 70000) }, grpc.status.INVALID_ARGUMENT, 'backend.port: must be <= 65535, got 70000'],
    ['RemoveBackend', { service: 'nope', backend: be('bad', 443) }, grpc.status.INVALID_ARGUMENT, /^backend\.address: "bad"/],
    ['RemoveBackend', { service: 'api1', backend: be('198.51.100.29', 443) }, grpc.status.NOT_FOUND, 'backend 198.51.100.29 port 443 in service api1 not found'],
    ['DrainBackend', { service: '', backend: be('198.51.100.21', 443) }, grpc.status.INVALID_ARGUMENT, 'service: is required'],
    ['DrainBackend', { service: 'api1', backend: be('not-an-ip', 443) }, grpc.status.INVALID_ARGUMENT, /^backend\.address: "not-an-ip"/],
    ['DrainBackend', { service: 'api1', backend: be('198.51.100.21') }, grpc.status.INVALID_ARGUMENT, 'backend.port: must be >= 1, got 0'],
    ['DrainBackend', { service: 'web', backend: be('198.51.100.11', 80) }, grpc.status.FAILED_PRECONDITION, /^service web is declared in the configuration file/],
    ['GetCounters', { service: 'Bad Name' }, grpc.status.INVALID_ARGUMENT, /^service: "Bad Name" is not an RFC 1123 label/],
    ['GetCounters', { service: 'nope' }, grpc.status.NOT_FOUND, 'service nope not found'],
  ];
  const recCases: Case[] = [
    ['StartRecording', { include: [] }, grpc.status.INVALID_ARGUMENT, /^include: /],
    ['StartRecording', { include: [{ sourceCidr: '192.0.2.0/33' }] }, grpc.status.INVALID_ARGUMENT, /^include\[0\]\.source_cidr: /],
    ['StartRecording', { include: [{}], fileSink: { filePrefix: 'a/b' } }, grpc.status.INVALID_ARGUMENT, /^file_sink\.file_prefix: /],
    ['StartRecording', { include: [{}], maxCaptureLength: 1 << 20 }, grpc.status.INVALID_ARGUMENT, /^max_capture_length: /],
    ['StopRecording', { id: '' }, grpc.status.INVALID_ARGUMENT, 'id: is required'],
  ];
  for (const [client, cases] of [[lb, lbCases], [rec, recCases]] as const) {
    for (const [method, req, code, details] of cases) {
      const [e] = await rpc(client, method, req);
      const what = `${method} ${JSON.stringify(req)}`;
      t.equal(e?.code, code, `${what}: ${grpc.status[code]}`);
      if (typeof details === 'string') t.equal(e?.details, details, what);
      else t.match(e?.details, details, what);
    }
  }
  const [, after] = await rpc(lb, 'ListServices', {});
  t.same(after, before, 'no refused call changed a service');
  const [, recordings] = await rpc<{ recordings: unknown[] }>(rec, 'ListRecordings', { includeStopped: true });
  t.same(recordings.recordings, [], 'nor started a recording');
});

t.test('a 100 KB bad value comes back cut short in an INVALID_ARGUMENT, on every field', needsRoot, async (t) => {
  const d = await daemonFixture(t);
  await d.start();
  const lb = d.client();
  const rec = d.client('Recorder');
  const big = 'x'.repeat(100 * 1024);
  const [e0] = await rpc(lb, 'CreateService', { service: API_SERVICE });
  t.error(e0);
  const cases: Array<[Client, string, unknown, string]> = [
    [lb, 'CreateService', { service: { ...API_SERVICE, name: big } }, 'service.name'],
    [lb, 'CreateService', { service: { ...API_SERVICE, name: 'x', vip: big } }, 'service.vip'],
    [lb, 'CreateService', { service: { ...API_SERVICE, name: 'x', backends: [{ address: big }] } }, 'service.backends[0].address'],
    [lb, 'UpdateService', { service: { ...API_SERVICE, backends: [{ address: '198.51.100.1' }, { address: `2001:db8::${big}` }] } }, 'service.backends[1].address'],
    [lb, 'GetService', { name: big }, 'name'],
    [lb, 'DeleteService', { name: big }, 'name'],
    [lb, 'SetBackends', { service: big, backends: [] }, 'service'],
    [lb, 'SetBackends', { service: 'api1', backends: [{ address: big }] }, 'backends[0].address'],
    [lb, 'AddBackend', { service: 'api1', backend: { address: big } }, 'backend.address'],
    [lb, 'RemoveBackend', { service: 'api1', backend: { address: big, port: 443 } }, 'backend.address'],
    [lb, 'DrainBackend', { service: big, backend: { address: '198.51.100.21', port: 443 } }, 'service'],
    [lb, 'GetCounters', { service: big }, 'service'],
    [rec, 'StartRecording', { include: [{}], name: big }, 'name'],
    [rec, 'StartRecording', { include: [{}], fileSink: { filePrefix: big } }, 'file_sink.file_prefix'],
    [rec, 'StartRecording', { include: [{ destinationCidr: big }] }, 'include[0].destination_cidr'],
  ];
  // A deadline: a client that cannot take the status in its metadata may wait for ever.
  const deadline = () => ({ deadline: Date.now() + 10_000 });
  for (const [client, method, req, field] of cases) {
    const [e] = await rpc(client, method, req, deadline());
    t.equal(e?.code, grpc.status.INVALID_ARGUMENT, `${method} ${field}: INVALID_ARGUMENT`);
    t.ok(e?.details.startsWith(`${field}: `), `${method}: names ${field}: ${e?.details.slice(0, 80)}`);
    t.ok((e?.details.length ?? Infinity) < 2048, `${method} ${field}: ${e?.details.length} characters`);
  }
  const [e1] = await rpc(lb, 'GetService', { name: big }, deadline());
  t.match(e1?.details, /^name: "x{64}…" \(102400 characters\) is not an RFC 1123 label/, 'the value is cut after 64 characters, with its length');
  const [e2] = await rpc(lb, 'AddBackend', { service: 'api1', backend: { address: 'é'.repeat(70) } }, deadline());
  t.equal(e2?.details, `backend.address: "${'é'.repeat(64)}…" (70 characters) is not an IPv4 or IPv6 address`, 'cut by characters, not bytes');
});

t.test('WatchCounters ends with NOT_FOUND when its service is deleted, and starts with it for an unknown one', needsRoot, async (t) => {
  const d = await daemonFixture(t);
  await d.start();
  const lb = d.client();
  const [e0] = await rpc(lb, 'CreateService', { service: API_SERVICE });
  t.error(e0);
  const watch = (lb.WatchCounters as (r: unknown) => grpc.ClientReadableStream<{ services: Array<{ name: string }> }>).bind(lb);
  const stream = watch({ service: 'api1', intervalMs: 100 });
  const seen: string[][] = [];
  const ended = new Promise<grpc.ServiceError | undefined>((resolve) => {
    stream.on('error', (e: grpc.ServiceError) => resolve(e));
    stream.on('end', () => resolve(undefined));
  });
  let deleted: Promise<unknown> | undefined;
  stream.on('data', (s: { services: Array<{ name: string }> }) => {
    seen.push(s.services.map((x) => x.name));
    if (seen.length === 2) deleted = rpc(lb, 'DeleteService', { name: 'api1' });
    if (seen.length > 20) stream.cancel();
  });
  const err = await ended;
  await deleted;
  t.equal(err?.code, grpc.status.NOT_FOUND, 'the stream ends with NOT_FOUND');
  t.equal(err?.details, 'service api1 not found');
  t.ok(seen.length >= 2 && seen.length <= 3, `${seen.length} snapshots before the end`);
  t.same(seen.filter((names) => names.length !== 1), [], 'no empty snapshot was streamed');

  const unknown = watch({ service: 'nope', intervalMs: 100 });
  const code = await new Promise<number>((resolve) => unknown.on('error', (e: grpc.ServiceError) => resolve(e.code)));
  t.equal(code, grpc.status.NOT_FOUND, 'an unknown service is NOT_FOUND at the start');
  const empty = watch({ service: 'Bad_Name', intervalMs: 100 });
  const invalid = await new Promise<grpc.ServiceError>((resolve) => empty.on('error', resolve));
  t.equal(invalid.code, grpc.status.INVALID_ARGUMENT);
  t.match(invalid.details, /^service: "Bad_Name"/);
});
