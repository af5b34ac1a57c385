// A connection to the daemon's API: a gRPC client over the unix socket, or over
// TCP with mutual TLS, as the CLI and the lab use it.
import * as fs from 'node:fs';
import * as grpc from '@grpc/grpc-js';
import { loadProto } from '../api/proto';
import { DEFAULT_NODE } from '../control/model';

export interface ConnectOptions {
  socket?: string;
  address?: string;
  tlsCert?: string;
  tlsKey?: string;
  tlsCa?: string;
  timeout?: number;
}

export type Client = grpc.Client & Record<string, (...args: unknown[]) => unknown>;

/** A client of one of the daemon's services: xdplb.v1.LoadBalancer (default) or xdplb.v1.Recorder. */
export function connect(o: ConnectOptions, service: 'LoadBalancer' | 'Recorder' = 'LoadBalancer'): Client {
  const proto = grpc.loadPackageDefinition(loadProto()) as unknown as {
    xdplb: { v1: Record<'LoadBalancer' | 'Recorder', grpc.ServiceClientConstructor> };
  };
  let target: string;
  let creds: grpc.ChannelCredentials;
  if (o.address) {
    if (!o.tlsCert || !o.tlsKey || !o.tlsCa) throw new Error('--address needs --tls-cert, --tls-key and --tls-ca (the daemon only serves TCP with mutual TLS)');
    target = o.address;
    creds = grpc.credentials.createSsl(fs.readFileSync(o.tlsCa), fs.readFileSync(o.tlsKey), fs.readFileSync(o.tlsCert));
  } else {
    target = `unix:${o.socket ?? DEFAULT_NODE.api.socket}`;
    creds = grpc.credentials.createInsecure();
  }
  return new proto.xdplb.v1[service](target, creds) as unknown as Client;
}

/** Calls a unary method; rejects with the daemon's status message. */
export function call<T>(client: Client, method: string, req: unknown, timeoutMs = 10000): Promise<T> {
  return new Promise((resolve, reject) => {
    const fn = client[method] as (req: unknown, md: grpc.Metadata, opts: grpc.CallOptions, cb: (e: grpc.ServiceError | null, r: T) => void) => void;
    fn.call(client, req, new grpc.Metadata(), { deadline: Date.now() + timeoutMs }, (err, res) => {
      if (err) reject(new Error(describe(err)));
      else resolve(res);
    });
  });
}

export function describe(err: grpc.ServiceError): string {
  if (err.code === grpc.status.UNAVAILABLE) return `cannot reach the daemon (${err.details}); is it running, and is --socket right?`;
  if (err.code === grpc.status.DEADLINE_EXCEEDED) return 'the daemon did not answer in time';
  return `${grpc.status[err.code]}: ${err.details}`;
}

/** A service as the API returns it. */
export interface ApiService {
  name: string;
  vip: string;
  port: number;
  protocol: string;
  flags: { l4Dnat?: boolean; sourceHash?: boolean; conntrackBypass?: boolean; icmpEcho?: boolean };
  backends: Array<{ address: string; port: number; weight: number; state: string }>;
}
