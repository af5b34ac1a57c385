// The CLI's compact backend arguments: a backend without a port takes its
// service's port (the API's default), a reference to one needs the port.
import t from 'tap';
import { parseBackendArg, parseBackendRef } from '../src/cli/args';
import { serviceFromPb } from '../src/api/convert';
import { validateService } from '../src/control/validate';

t.test('a backend argument without a port leaves the port to the service', (t) => {
  t.same(parseBackendArg('198.51.100.11'), { address: '198.51.100.11', weight: 1, state: 'BACKEND_STATE_ACTIVE' });
  t.same(parseBackendArg('[2001:db8::11],weight=3'), { address: '2001:db8::11', weight: 3, state: 'BACKEND_STATE_ACTIVE' });
  t.same(parseBackendArg('2001:db8::11'), { address: '2001:db8::11', weight: 1, state: 'BACKEND_STATE_ACTIVE' }, 'a bare IPv6 address');
  t.same(parseBackendArg('198.51.100.11:8080,state=draining'), { address: '198.51.100.11', port: 8080, weight: 1, state: 'BACKEND_STATE_DRAINING' });
  t.same(parseBackendArg('[2001:db8::11]:80'), { address: '2001:db8::11', port: 80, weight: 1, state: 'BACKEND_STATE_ACTIVE' });
  const svc = validateService(
    serviceFromPb({ name: 'web', vip: '203.0.113.10', port: 80, protocol: 'PROTOCOL_TCP', backends: [parseBackendArg('198.51.100.11'), parseBackendArg('198.51.100.12:8080')] }),
    'service',
  );
  t.same(
    svc.backends.map((b) => [b.address, b.port]),
    [
      ['198.51.100.11', 80],
      ['198.51.100.12', 8080],
    ],
    'the API gives the portless backend the service port',
  );
  t.end();
});

t.test('a backend reference needs its port', (t) => {
  t.same(parseBackendRef('198.51.100.11:80'), { address: '198.51.100.11', port: 80 });
  t.throws(() => parseBackendRef('198.51.100.11'), /backend 198\.51\.100\.11: expected ADDRESS:PORT/);
  t.throws(() => parseBackendArg('198.51.100.11:http'), /port must be a number/);
  t.end();
});
