// Server reflection as a strict client loads it: Python's descriptor pool, fed
// only what the daemon's reflection hands out (no xdplb .proto file on the
// client), builds the messages and calls the API with JSON, over both
// reflection versions.
import t from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { daemonFixture } from '../harness/daemon';
import { needsRoot, sh } from '../harness/fixtures';

const ROOT = path.resolve(__dirname, '..', '..');
const REFLECTION_PROTOS = path.join(path.dirname(require.resolve('@grpc/reflection/package.json')), 'build', 'proto', 'grpc', 'reflection');

interface Seen {
  services: string[];
  by_symbol: Record<string, string>;
  by_filename: string[] | string;
  unknown_file: string;
  fetched_by_filename: string[];
  files: Record<string, string[]>;
  methods: Record<string, string[]>;
  fields: Record<string, Array<[string, string]>>;
  optional: string[];
  map_entry: [string, boolean, string[]];
  well_known: string[];
  created: { name: string; flags: Record<string, boolean>; backends: unknown[] } | string;
  listed: unknown[];
  missing: string;
  verdicts: string[];
  health: { status: string } | string;
  deleted: object | string;
}

t.test('a client holding no .proto file loads every descriptor from reflection and calls the API', needsRoot, async (t) => {
  const stubs = fs.mkdtempSync(path.join(os.tmpdir(), 'xdplbt-refl-'));
  t.teardown(() => fs.rmSync(stubs, { recursive: true, force: true }));
  // The reflection protocol's own messages, under a name that does not shadow Python's grpc package.
  sh('protoc', `-Ireflection=${REFLECTION_PROTOS}`, `--python_out=${stubs}`, 'reflection/v1/reflection.proto', 'reflection/v1alpha/reflection.proto');

  const d = await daemonFixture(t);
  await d.start();
  for (const version of ['v1', 'v1alpha']) {
    const name = `refl-${version}`;
    const out = JSON.parse(sh('/usr/bin/python3', path.join(ROOT, 'test', 'interop', 'python_reflection.py'), stubs, d.socket, version, name)) as Seen;
    t.same(
      out.services,
      ['grpc.health.v1.Health', 'grpc.reflection.v1.ServerReflection', 'grpc.reflection.v1alpha.ServerReflection', 'xdplb.v1.LoadBalancer', 'xdplb.v1.Recorder'],
      `${version}: every served service is listed`,
    );
    t.same(
      out.by_symbol,
      {
        'grpc.health.v1.Health': 'grpc/health/v1/health.proto',
        'grpc.reflection.v1.ServerReflection': 'grpc/reflection/v1/reflection.proto',
        'grpc.reflection.v1alpha.ServerReflection': 'grpc/reflection/v1alpha/reflection.proto',
        'xdplb.v1.LoadBalancer': 'xdplb/v1/loadbalancer.proto',
        'xdplb.v1.Recorder': 'xdplb/v1/recorder.proto',
      },
      `${version}: each service comes in its original file`,
    );
    t.same(out.by_filename, ['xdplb/v1/loadbalancer.proto'], `${version}: a file is found by its name in proto/`);
    t.equal(out.unknown_file, 'NOT_FOUND');
    t.same(
      out.files,
      {
        'google/protobuf/duration.proto': [],
        'google/protobuf/timestamp.proto': [],
        'grpc/health/v1/health.proto': [],
        'grpc/reflection/v1/reflection.proto': [],
        'grpc/reflection/v1alpha/reflection.proto': [],
        'xdplb/v1/loadbalancer.proto': [],
        'xdplb/v1/recorder.proto': ['google/protobuf/duration.proto', 'google/protobuf/timestamp.proto'],
      },
      `${version}: the files and their imports, as in the .proto files`,
    );
    t.same(out.fetched_by_filename, [], `${version}: imports come with the file that needs them`);
    t.same(out.well_known, ['google.protobuf.Duration', 'google.protobuf.Timestamp', 'google.protobuf.Timestamp'], `${version}: well-known types resolve`);
    t.same(out.methods['xdplb.v1.LoadBalancer'], [
      'AddBackend', 'CreateService', 'DeleteService', 'DrainBackend', 'DrainNode', 'GetBgpStatus', 'GetCounters', 'GetNodeStatus',
      'GetService', 'ListServices', 'RemoveBackend', 'SetBackends', 'UndrainNode', 'UpdateService', 'WatchCounters',
    ]);
    t.same(out.fields['xdplb.v1.ServiceFlags'], [
      ['l4_dnat', 'l4Dnat'],
      ['source_hash', 'sourceHash'],
      ['conntrack_bypass', 'conntrackBypass'],
      ['icmp_echo', 'icmpEcho'],
    ], `${version}: field names as in the .proto, JSON names beside them`);
    t.same(out.fields['xdplb.v1.WatchCountersRequest'], [['service', 'service'], ['interval_ms', 'intervalMs']]);
    t.ok(out.fields['xdplb.v1.NodeStatus'].some(([n]) => n === 'next_hops_unresolved'));
    t.same(out.optional, ['port', 'weight'], `${version}: proto3 optional fields keep their presence`);
    t.same(out.map_entry, ['xdplb.v1.Counters.VerdictsEntry', true, ['key', 'value']], `${version}: map entries are ...Entry messages`);
    t.match(out.created, { name, flags: { l4_dnat: true }, backends: [{ address: '198.51.100.21', port: 8080, weight: 3, state: 'BACKEND_STATE_ACTIVE' }] }, `${version}: CreateService from JSON`);
    t.same(out.listed, [out.created], `${version}: ListServices shows it`);
    t.equal(out.missing, 'NOT_FOUND');
    t.same(out.verdicts, ['XDP_DROP', 'XDP_PASS', 'XDP_REDIRECT', 'XDP_TX'], `${version}: the verdicts map decodes`);
    t.same(out.health, { status: 'SERVING' }, `${version}: the health service is callable from its reflected descriptor`);
    t.same(out.deleted, {}, `${version}: DeleteService`);
  }
});
