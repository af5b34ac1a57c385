// TCP only with mutual TLS: a client with a certificate from the configured CA
// gets in; one without a certificate, or with one from another CA, does not.
import t from 'tap';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { daemonFixture, MAIN } from '../harness/daemon';
import { needsRoot, sh } from '../harness/fixtures';

function makeCa(dir: string, name: string): void {
  sh('openssl', 'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '2', '-subj', `/CN=${name}`, '-keyout', `${dir}/${name}.key`, '-out', `${dir}/${name}.crt`);
}

function makeCert(dir: string, ca: string, name: string, san: string): void {
  sh('openssl', 'req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-subj', `/CN=${name}`, '-keyout', `${dir}/${name}.key`, '-out', `${dir}/${name}.csr`);
  fs.writeFileSync(`${dir}/${name}.ext`, `subjectAltName=${san}\n`);
  sh('openssl', 'x509', '-req', '-in', `${dir}/${name}.csr`, '-CA', `${dir}/${ca}.crt`, '-CAkey', `${dir}/${ca}.key`, '-CAcreateserial', '-days', '2', '-extfile', `${dir}/${name}.ext`, '-out', `${dir}/${name}.crt`);
}

t.test('the API over TCP requires a client certificate from the configured CA', needsRoot, async (t) => {
  const d = await daemonFixture(t);
  const pki = path.join(d.dir, 'pki');
  fs.mkdirSync(pki);
  makeCa(pki, 'ca');
  makeCa(pki, 'rogue');
  makeCert(pki, 'ca', 'server', 'IP:127.0.0.1');
  makeCert(pki, 'ca', 'client', 'DNS:automation');
  makeCert(pki, 'rogue', 'intruder', 'DNS:intruder');
  d.writeConfig({ extraYaml: `  tcp: 127.0.0.1:50551\n  tls:\n    cert: ${pki}/server.crt\n    key: ${pki}/server.key\n    ca: ${pki}/ca.crt` });
  await d.start();
  const cli = (...args: string[]) => {
    try {
      return { code: 0, out: sh('nsenter', `--net=/var/run/netns/${d.topo.lbNs}`, process.execPath, MAIN, '--address', '127.0.0.1:50551', ...args) };
    } catch (e) {
      return { code: (e as { status: number }).status, out: (e as { stderr: string }).stderr };
    }
  };
  const ok = cli('--tls-cert', `${pki}/client.crt`, '--tls-key', `${pki}/client.key`, '--tls-ca', `${pki}/ca.crt`, 'service', 'list', '-o', 'json');
  t.equal(ok.code, 0, ok.out);
  t.same(JSON.parse(ok.out), []);
  const rogue = cli('--tls-cert', `${pki}/intruder.crt`, '--tls-key', `${pki}/intruder.key`, '--tls-ca', `${pki}/ca.crt`, 'service', 'list');
  t.equal(rogue.code, 1, 'a certificate from another CA is refused');
  const none = cli('service', 'list');
  t.equal(none.code, 1);
  t.match(none.out, /--address needs --tls-cert, --tls-key and --tls-ca/);
});

t.test('a TCP endpoint without TLS files is refused at startup', needsRoot, async (t) => {
  const d = await daemonFixture(t);
  d.writeConfig({ extraYaml: '  tcp: 127.0.0.1:50552' });
  const r = await d.runToExit();
  t.equal(r.code, 1);
  t.match(r.output, /api\.tcp: requires api\.tls \(mutual TLS\)/);
});
