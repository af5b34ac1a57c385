// Parsing of the CLI's compact arguments into API messages. Errors name the
// flag and the expected form.

export interface BackendArg {
  address: string;
  /** absent: the service's port (the API's default) */
  port?: number;
  weight: number;
  state: string;
}

/** "198.51.100.11:8080,weight=2,state=draining" or "[2001:db8::11]:80" or a bare address. */
export function parseBackendArg(text: string, flag = '--backend'): BackendArg {
  const [hostPort, ...opts] = text.split(',');
  let address = hostPort;
  let port: number | undefined;
  const v6 = /^\[([^\]]+)\](?::(\d+))?$/.exec(hostPort);
  if (v6) {
    address = v6[1];
    port = v6[2] ? Number(v6[2]) : undefined;
  } else if ((hostPort.match(/:/g) ?? []).length === 1) {
    const [a, p] = hostPort.split(':');
    address = a;
    port = Number(p);
    if (!/^\d+$/.test(p)) throw new Error(`${flag} ${text}: port must be a number`);
  }
  const out: BackendArg = { address, ...(port === undefined ? {} : { port }), weight: 1, state: 'BACKEND_STATE_ACTIVE' };
  for (const o of opts) {
    const [k, v] = o.split('=');
    if (k === 'weight' && /^\d+$/.test(v ?? '')) out.weight = Number(v);
    else if (k === 'state' && ['active', 'draining', 'down'].includes(v ?? '')) out.state = `BACKEND_STATE_${v.toUpperCase()}`;
    else throw new Error(`${flag} ${text}: unknown option "${o}" (expected weight=N or state=active|draining|down)`);
  }
  return out;
}

export function parsePort(text: string, flag: string): number {
  if (text === 'all' || text === '*') return 0;
  if (!/^\d+$/.test(text) || Number(text) > 65535) throw new Error(`${flag} ${text}: expected 0..65535 or "all"`);
  return Number(text);
}

export function parseProtocol(text: string): string {
  const p = text.toLowerCase();
  if (p !== 'tcp' && p !== 'udp') throw new Error(`--protocol ${text}: expected tcp or udp`);
  return `PROTOCOL_${p.toUpperCase()}`;
}

/** "198.51.100.11:80" or "[2001:db8::11]:80" → reference to a backend of a service. */
export function parseBackendRef(text: string): { address: string; port: number } {
  const b = parseBackendArg(text, 'backend');
  if (b.port === undefined) throw new Error(`backend ${text}: expected ADDRESS:PORT or [ADDRESS]:PORT`);
  return { address: b.address, port: b.port };
}
