// The API's protos: where they are, how proto-loader reads them (the server
// and every client load them the same way), and protoc's descriptor set.
import * as path from 'node:path';
import * as protoLoader from '@grpc/proto-loader';
import { PACKAGE_ROOT } from '../sys/paths';

export const PROTO_DIR = path.join(PACKAGE_ROOT, 'proto');
export const PROTO_FILES = ['xdplb/v1/loadbalancer.proto', 'xdplb/v1/recorder.proto'];
export const SERVICE_NAME = 'xdplb.v1.LoadBalancer';
/** protoc's descriptors of proto/, their imports and the health and reflection protos (CMakeLists.txt builds it). */
export const DESCRIPTOR_SET = path.join(PACKAGE_ROOT, 'build', 'proto', 'xdplb.binpb');
export const LOADER_OPTIONS: protoLoader.Options = {
  keepCase: false,
  longs: Number,
  enums: String,
  defaults: true,
  oneofs: true,
  includeDirs: [PROTO_DIR],
};

export function loadProto(): protoLoader.PackageDefinition {
  return protoLoader.loadSync(PROTO_FILES, LOADER_OPTIONS);
}
