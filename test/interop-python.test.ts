// A second gRPC implementation drives the API: Python grpcio from Debian, with
// stubs generated from proto/ at test time by Debian's protoc and grpc plugin.
import t from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { daemonFixture } from '../harness/daemon';
import { needsRoot, sh } from '../harness/fixtures';

const ROOT = path.resolve(__dirname, '..', '..');

t.test('Python grpcio creates a service, adds backends, lists them and reads counters', needsRoot, async (t) => {
  const stubs = fs.mkdtempSync(path.join(os.tmpdir(), 'xdplbt-py-'));
  t.teardown(() => fs.rmSync(stubs, { recursive: true, force: true }));
  sh('protoc', `-I${ROOT}/proto`, `--python_out=${stubs}`, `--grpc_python_out=${stubs}`, '--plugin=protoc-gen-grpc_python=/usr/bin/grpc_python_plugin', 'xdplb/v1/loadbalancer.proto');

  const d = await daemonFixture(t);
  await d.start();
  // Debian's python, not whatever python3 comes first on PATH: the grpc module is Debian's.
  const out = JSON.parse(sh('/usr/bin/python3', path.join(ROOT, 'test', 'interop', 'python_client.py'), stubs, d.socket)) as {
    created: { name: string; owner: string; echo: boolean };
    services: Array<{ name: string; vip: string; port: number; protocol: string; dnat: boolean; backends: Array<[string, number, number, string]> }>;
    counters: { services: string[]; backends: number; reasons: number; verdicts: string[] };
    missing: string;
  };
  t.same(out.created, { name: 'py', owner: 'OWNER_API', echo: true });
  t.same(out.services, [
    {
      name: 'py',
      vip: '203.0.113.77',
      port: 8080,
      protocol: 'PROTOCOL_TCP',
      dnat: true,
      backends: [
        ['198.51.100.11', 80, 1, 'BACKEND_STATE_ACTIVE'],
        ['198.51.100.12', 80, 4, 'BACKEND_STATE_ACTIVE'],
      ],
    },
  ]);
  t.same(out.counters.services, ['py']);
  t.equal(out.counters.backends, 2);
  t.ok(out.counters.reasons >= 20, `${out.counters.reasons} reasons`);
  t.same(out.counters.verdicts, ['XDP_DROP', 'XDP_PASS', 'XDP_REDIRECT', 'XDP_TX']);
  t.equal(out.missing, 'NOT_FOUND');

  const list = JSON.parse(d.cli('service', 'get', 'py', '-o', 'json').stdout) as { backends: unknown[] };
  t.equal(list.backends.length, 2, 'the Node CLI sees what Python made');
});
