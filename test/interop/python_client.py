"""Drives the xdplb API from a second gRPC implementation (Debian's python3-grpcio).

Usage: python_client.py STUBS_DIR SOCKET
Creates a service, adds backends, lists services and reads counters, and prints
what it saw as one JSON document.
"""
import json
import sys

sys.path.insert(0, sys.argv[1])

import grpc  # noqa: E402
from xdplb.v1 import loadbalancer_pb2 as pb  # noqa: E402
from xdplb.v1 import loadbalancer_pb2_grpc as rpc  # noqa: E402

channel = grpc.insecure_channel("unix:" + sys.argv[2])
lb = rpc.LoadBalancerStub(channel)
out = {}

svc = pb.Service(name="py", vip="203.0.113.77", port=8080, protocol=pb.PROTOCOL_TCP)
svc.flags.l4_dnat = True
created = lb.CreateService(pb.CreateServiceRequest(service=svc), timeout=10)
out["created"] = {"name": created.name, "owner": pb.Owner.Name(created.owner), "echo": created.flags.icmp_echo}

for i, weight in ((11, 1), (12, 4)):
    lb.AddBackend(pb.AddBackendRequest(service="py", backend=pb.Backend(address="198.51.100.%d" % i, port=80, weight=weight)), timeout=10)

listed = lb.ListServices(pb.ListServicesRequest(), timeout=10)
out["services"] = [
    {
        "name": s.name,
        "vip": s.vip,
        "port": s.port,
        "protocol": pb.Protocol.Name(s.protocol),
        "dnat": s.flags.l4_dnat,
        "backends": [[b.address, b.port, b.weight, pb.BackendState.Name(b.state)] for b in s.backends],
    }
    for s in listed.services
]

counters = lb.GetCounters(pb.GetCountersRequest(service="py"), timeout=10)
out["counters"] = {
    "services": [s.name for s in counters.services],
    "backends": len(counters.services[0].backends),
    "reasons": len(counters.reasons),
    "verdicts": sorted(counters.verdicts.keys()),
}

try:
    lb.GetService(pb.GetServiceRequest(name="missing"), timeout=10)
    out["missing"] = "found"
except grpc.RpcError as e:
    out["missing"] = e.code().name

print(json.dumps(out))
