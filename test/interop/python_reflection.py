"""A client that knows no xdplb .proto file: everything from server reflection.

Usage: python_reflection.py STUBS_DIR SOCKET VERSION NAME
STUBS_DIR holds the reflection protocol's messages (reflection/VERSION/reflection_pb2);
VERSION is v1 or v1alpha; NAME is the service to create.

Does what grpcio-reflection's ProtoReflectionDescriptorDatabase does (Debian has
no package of it): asks for the file of every listed service, then for every
import it was not given by file name, and adds the files to an empty descriptor
pool, which refuses a file whose imports it does not hold. Then builds messages
from the pool alone, calls the API with JSON, and prints what it saw as JSON.
"""
import importlib
import json
import sys

sys.path.insert(0, sys.argv[1])

import grpc  # noqa: E402
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory  # noqa: E402

socket, version, name = sys.argv[2], sys.argv[3], sys.argv[4]
rpb = importlib.import_module("reflection.%s.reflection_pb2" % version)
channel = grpc.insecure_channel("unix:" + socket)
info = channel.stream_stream(
    "/grpc.reflection.%s.ServerReflection/ServerReflectionInfo" % version,
    request_serializer=rpb.ServerReflectionRequest.SerializeToString,
    response_deserializer=rpb.ServerReflectionResponse.FromString,
)


def ask(**request):
    (response,) = list(info(iter([rpb.ServerReflectionRequest(**request)]), timeout=10))
    if response.HasField("error_response"):
        return next(c.name for c in grpc.StatusCode if c.value[0] == response.error_response.error_code)
    return response


files = {}


def take(response):
    names = []
    for raw in response.file_descriptor_response.file_descriptor_proto:
        fd = descriptor_pb2.FileDescriptorProto.FromString(raw)
        files.setdefault(fd.name, fd)
        names.append(fd.name)
    return names


out = {}
out["services"] = sorted(s.name for s in ask(list_services="*").list_services_response.service)
out["by_symbol"] = {s: take(ask(file_containing_symbol=s))[0] for s in out["services"]}
by_name = ask(file_by_filename="xdplb/v1/loadbalancer.proto")
out["by_filename"] = by_name if isinstance(by_name, str) else take(by_name)
out["unknown_file"] = ask(file_by_filename="xdplb/v1/nothing.proto")
out["fetched_by_filename"] = []
while True:
    missing = sorted({d for fd in files.values() for d in fd.dependency if d not in files})
    if not missing:
        break
    for dep in missing:
        take(ask(file_by_filename=dep))
        out["fetched_by_filename"].append(dep)
out["files"] = {n: list(fd.dependency) for n, fd in sorted(files.items())}

pool = descriptor_pool.DescriptorPool()
added = set()


def add(file_name):
    if file_name in added:
        return
    for dep in files[file_name].dependency:
        add(dep)
    pool.Add(files[file_name])
    added.add(file_name)


for n in sorted(files):
    add(n)


def message(full_name):
    return pool.FindMessageTypeByName(full_name)


out["methods"] = {s: sorted(m.name for m in pool.FindServiceByName(s).methods) for s in out["services"]}
out["fields"] = {
    m: [[f.name, f.json_name] for f in message(m).fields]
    for m in ("xdplb.v1.ServiceFlags", "xdplb.v1.Backend", "xdplb.v1.NodeStatus", "xdplb.v1.WatchCountersRequest")
}
out["optional"] = [f.name for f in message("xdplb.v1.Backend").fields if f.containing_oneof is not None]
verdicts = message("xdplb.v1.Counters").fields_by_name["verdicts"].message_type
out["map_entry"] = [verdicts.full_name, verdicts.GetOptions().map_entry, [f.name for f in verdicts.fields]]
out["well_known"] = sorted(
    f.message_type.full_name
    for m in ("xdplb.v1.StopCondition", "xdplb.v1.Recording")
    for f in message(m).fields
    if f.message_type is not None and f.message_type.file.package == "google.protobuf"
)

factory = message_factory.MessageFactory(pool)


def call(service, method, body):
    m = pool.FindServiceByName(service).methods_by_name[method]
    request = json_format.Parse(json.dumps(body), factory.GetPrototype(m.input_type)())
    response_class = factory.GetPrototype(m.output_type)
    fn = channel.unary_unary("/%s/%s" % (service, method), request_serializer=lambda r: r.SerializeToString(), response_deserializer=response_class.FromString)
    try:
        return json_format.MessageToDict(fn(request, timeout=10), preserving_proto_field_name=True)
    except grpc.RpcError as e:
        return e.code().name


lb = "xdplb.v1.LoadBalancer"
backend = {"address": "198.51.100.21", "port": 8080, "weight": 3}
out["created"] = call(lb, "CreateService", {"service": {"name": name, "vip": "203.0.113.78", "port": 80, "protocol": "PROTOCOL_TCP", "flags": {"l4_dnat": True}, "backends": [backend]}})
out["listed"] = [s for s in call(lb, "ListServices", {})["services"] if s["name"] == name]
out["missing"] = call(lb, "GetService", {"name": name + "-missing"})
out["verdicts"] = sorted(call(lb, "GetCounters", {})["verdicts"])
out["health"] = call("grpc.health.v1.Health", "Check", {"service": lb})
out["deleted"] = call(lb, "DeleteService", {"name": name})
print(json.dumps(out))
