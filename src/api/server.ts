// The gRPC server: xdplb.v1.LoadBalancer, xdplb.v1.Recorder, the standard health service and server
// reflection. A unix socket (mode 0600) by default; TCP only with mutual TLS.
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import type * as protoLoader from '@grpc/proto-loader';
import { ReflectionService } from '@grpc/reflection';
import { HealthImplementation } from 'grpc-health-check';
import { FileDescriptorProto, FileDescriptorSet } from 'protobufjs/ext/descriptor';
import type { Logger } from 'pino';
import type { Controller } from '../control/controller';
import { XdplbError } from '../control/errors';
import type { ApiSettings } from '../control/model';
import { validateServiceName } from '../control/validate';
import type { Recorder } from '../recorder/recordings';
import type { CountersSnapshot, NodeStatusSnapshot } from '../datapath/snapshot';
import type { BgpControl } from '../bgp/speaker';
import { RECORDER_SERVICE_NAME, recorderHandlers } from './recorder';
import { toServiceError, unary } from './grpc';
import { DESCRIPTOR_SET, loadProto, SERVICE_NAME } from './proto';
import { backendFromPb, serviceFromPb, serviceToPb, type PbBackend, type PbService } from './convert';

const HEALTH_SERVICE_NAME = 'grpc.health.v1.Health';
const REFLECTION_SERVICE_NAMES = ['grpc.reflection.v1.ServerReflection', 'grpc.reflection.v1alpha.ServerReflection'];

/**
 * Server reflection over protoc's descriptors: the original file names, field
 * names, map entries, proto3 optionals and imports, as a strict client (grpcurl,
 * Python's descriptor pool) expects them. Given proto-loader's package
 * definition, @grpc/reflection would hand out what protobufjs rebuilds from it:
 * one made-up file per package, camelCase fields, no imports. It reads nothing
 * but the fileDescriptorProtos of the definitions it is given, so one entry
 * carrying protoc's files is all it needs.
 */
function reflectionService(services: string[]): ReflectionService {
  let set: Buffer;
  try {
    set = fs.readFileSync(DESCRIPTOR_SET);
  } catch (e) {
    throw XdplbError.failedPrecondition(`server reflection: ${(e as Error).message} (scripts/bootstrap.sh builds it)`);
  }
  const files = (FileDescriptorSet.decode(set) as unknown as { file: object[] }).file.map((f) => FileDescriptorProto.encode(f).finish());
  const descriptors = { descriptors: { fileDescriptorProtos: files } } as unknown as protoLoader.PackageDefinition;
  return new ReflectionService(descriptors, { services });
}

export interface ApiDeps {
  controller: Controller;
  counters(service?: string): CountersSnapshot | Promise<CountersSnapshot>;
  status(): NodeStatusSnapshot | Promise<NodeStatusSnapshot>;
  log: Logger;
  /** the packet recorder: xdplb.v1.Recorder is served when given */
  recorder?: Recorder;
  /** VIP announcement over BGP, when the configuration has a bgp: section */
  bgp?: BgpControl;
}

interface NameReq {
  name: string;
}
interface BackendReq {
  service: string;
  backend?: PbBackend | null;
}
interface BackendRefReq {
  service: string;
  backend?: { address: string; port: number } | null;
}

function requireField<T>(v: T | null | undefined, field: string): T {
  if (v === null || v === undefined) throw XdplbError.invalid(field, 'is required');
  return v;
}

function bgpOf(deps: ApiDeps): BgpControl {
  if (!deps.bgp) throw XdplbError.failedPrecondition('BGP is not configured (the configuration has no bgp: section)');
  return deps.bgp;
}

export function loadBalancerHandlers(deps: ApiDeps): grpc.UntypedServiceImplementation {
  const { controller: c, log } = deps;
  const svc = (s: Promise<Parameters<typeof serviceToPb>[0]>) => s.then(serviceToPb);
  return {
    CreateService: unary(log, 'CreateService', (r: { service?: PbService }) =>
      svc(c.create(serviceFromPb(requireField(r.service, 'service')))),
    ),
    GetService: unary(log, 'GetService', (r: NameReq) => serviceToPb(c.get(validateServiceName(r.name, 'name')))),
    ListServices: unary(log, 'ListServices', () => ({ services: c.list().map(serviceToPb) })),
    UpdateService: unary(log, 'UpdateService', (r: { service?: PbService }) =>
      svc(c.update(serviceFromPb(requireField(r.service, 'service')))),
    ),
    DeleteService: unary(log, 'DeleteService', (r: NameReq) => c.delete(validateServiceName(r.name, 'name')).then(() => ({}))),
    SetBackends: unary(log, 'SetBackends', (r: { service: string; backends: PbBackend[] }) =>
      // The backends are checked as the service's list, which is the request's list.
      svc(c.setBackends(validateServiceName(r.service, 'service'), r.backends.map(backendFromPb))).catch((e: unknown) => {
        throw e instanceof XdplbError ? e.renamed('service.backends', 'backends') : e;
      }),
    ),
    AddBackend: unary(log, 'AddBackend', (r: BackendReq) =>
      svc(c.addBackend(validateServiceName(r.service, 'service'), backendFromPb(requireField(r.backend, 'backend')))),
    ),
    RemoveBackend: unary(log, 'RemoveBackend', (r: BackendRefReq) =>
      svc(c.removeBackend(validateServiceName(r.service, 'service'), requireField(r.backend, 'backend'))),
    ),
    DrainBackend: unary(log, 'DrainBackend', (r: BackendRefReq) =>
      svc(c.drainBackend(validateServiceName(r.service, 'service'), requireField(r.backend, 'backend'))),
    ),
    GetNodeStatus: unary(log, 'GetNodeStatus', () => deps.status()),
    GetBgpStatus: unary(log, 'GetBgpStatus', () => bgpOf(deps).status()),
    DrainNode: unary(log, 'DrainNode', () => bgpOf(deps).drain()),
    UndrainNode: unary(log, 'UndrainNode', () => bgpOf(deps).undrain()),
    GetCounters: unary(log, 'GetCounters', (r: { service: string }) => {
      if (r.service) c.get(validateServiceName(r.service, 'service'));
      return deps.counters(r.service || undefined);
    }),
    WatchCounters: (call: grpc.ServerWritableStream<{ service: string; intervalMs: number }, CountersSnapshot>) => {
      const { service, intervalMs } = call.request;
      // grpc-js ends a server stream with a status when the handler emits 'error'.
      const fail = (err: Partial<grpc.ServiceError>) => call.emit('error', err);
      if (intervalMs !== 0 && intervalMs < 100) {
        fail(toServiceError(XdplbError.invalid('interval_ms', 'must be 0 (default 1000) or at least 100')));
        return;
      }
      try {
        if (service) c.get(validateServiceName(service, 'service'));
      } catch (e) {
        fail(toServiceError(e));
        return;
      }
      let reading = false;
      const send = async () => {
        // Drop a tick rather than queue snapshots for a slow client, or read twice at once.
        if (reading || call.writableLength !== 0) return;
        reading = true;
        try {
          // A watched service that is deleted ends the stream (NOT_FOUND) rather than streaming empty lists.
          if (service) c.get(service);
          const snapshot = await deps.counters(service || undefined);
          if (!call.cancelled && !ended) call.write(snapshot);
        } catch (e) {
          stop();
          fail(toServiceError(e));
        } finally {
          reading = false;
        }
      };
      let timer: NodeJS.Timeout | undefined;
      let ended = false;
      const stop = () => {
        ended = true;
        clearInterval(timer);
      };
      void send();
      timer = setInterval(() => void send(), intervalMs || 1000);
      call.on('cancelled', stop);
      call.on('close', stop);
      call.on('error', stop);
    },
  };
}

export interface ApiServer {
  server: grpc.Server;
  health: HealthImplementation;
  endpoints: string[];
  close(): Promise<void>;
}

/**
 * Removes a leftover socket file, refusing to touch anything that is not a
 * socket or a socket somebody still listens on (another daemon's API).
 */
async function clearStaleSocket(socket: string): Promise<void> {
  let st: fs.Stats;
  try {
    st = fs.lstatSync(socket);
  } catch {
    return;
  }
  if (!st.isSocket()) throw XdplbError.invalid('api.socket', `${socket} exists and is not a socket`);
  const listening = await new Promise<boolean>((resolve) => {
    const c = net.connect(socket);
    c.once('connect', () => {
      c.destroy();
      resolve(true);
    });
    c.once('error', () => resolve(false));
  });
  if (listening) throw XdplbError.failedPrecondition(`${socket}: another process listens on this socket`, 'api.socket');
  fs.unlinkSync(socket);
}

function bind(server: grpc.Server, address: string, creds: grpc.ServerCredentials): Promise<number> {
  return new Promise((resolve, reject) => server.bindAsync(address, creds, (err, port) => (err ? reject(err) : resolve(port))));
}

export async function startApi(settings: ApiSettings, deps: ApiDeps): Promise<ApiServer> {
  if (settings.tcp && !settings.tls) throw XdplbError.invalid('api.tcp', 'requires api.tls (mutual TLS)');
  const pkg = loadProto();
  const proto = grpc.loadPackageDefinition(pkg) as unknown as {
    xdplb: { v1: { LoadBalancer: grpc.ServiceClientConstructor; Recorder: grpc.ServiceClientConstructor } };
  };
  const server = new grpc.Server();
  const served = [SERVICE_NAME, HEALTH_SERVICE_NAME, ...REFLECTION_SERVICE_NAMES];
  server.addService(proto.xdplb.v1.LoadBalancer.service, loadBalancerHandlers(deps));
  if (deps.recorder) {
    server.addService(proto.xdplb.v1.Recorder.service, recorderHandlers(deps.recorder, deps.log));
    served.push(RECORDER_SERVICE_NAME);
  }
  const health = new HealthImplementation({ '': 'NOT_SERVING', [SERVICE_NAME]: 'NOT_SERVING' });
  health.addToServer(server);
  reflectionService(served).addToServer(server);

  const endpoints: string[] = [];
  fs.mkdirSync(path.dirname(settings.socket), { recursive: true, mode: 0o755 });
  await clearStaleSocket(settings.socket);
  // The socket is created with the umask; tighten it before anyone can connect.
  const oldMask = process.umask(0o177);
  try {
    await bind(server, `unix:${settings.socket}`, grpc.ServerCredentials.createInsecure());
  } finally {
    process.umask(oldMask);
  }
  fs.chmodSync(settings.socket, 0o600);
  endpoints.push(`unix:${settings.socket}`);
  if (settings.tcp && settings.tls) {
    const creds = grpc.ServerCredentials.createSsl(
      fs.readFileSync(settings.tls.ca),
      [{ cert_chain: fs.readFileSync(settings.tls.cert), private_key: fs.readFileSync(settings.tls.key) }],
      true,
    );
    const port = await bind(server, settings.tcp, creds);
    endpoints.push(settings.tcp.replace(/:\d+$/, `:${port}`));
  }
  return {
    server,
    health,
    endpoints,
    close: () =>
      new Promise<void>((resolve) => {
        server.tryShutdown(() => {
          try {
            fs.unlinkSync(settings.socket);
          } catch {
            // already gone
          }
          resolve();
        });
      }),
  };
}
