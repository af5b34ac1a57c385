"""Drives xdplb.v1.Recorder from a second gRPC implementation (Debian's python3-grpcio).

Usage: python_recorder.py STUBS_DIR SOCKET
Starts a file recording, lists the recordings, stops it, asks for an unknown
one, and prints what it saw as one JSON document.
"""
import json
import sys

sys.path.insert(0, sys.argv[1])

import grpc  # noqa: E402
from xdplb.v1 import recorder_pb2 as pb  # noqa: E402
from xdplb.v1 import recorder_pb2_grpc as rpc  # noqa: E402

channel = grpc.insecure_channel("unix:" + sys.argv[2])
rec = rpc.RecorderStub(channel)
out = {}

started = rec.StartRecording(
    pb.StartRecordingRequest(
        file_sink=pb.FileSink(file_prefix="py", format=pb.CAPTURE_FORMAT_PCAPNG),
        include=[pb.CaptureFilter(source_cidr="192.0.2.0/24", destination_cidr="203.0.113.10/32", destination_port=80, protocol=pb.CAPTURE_PROTOCOL_TCP)],
        max_capture_length=128,
        stop_condition=pb.StopCondition(packets_captured_count=1000),
        name="py",
    ),
    timeout=10,
)
listed = rec.ListRecordings(pb.ListRecordingsRequest(), timeout=10)
out["list"] = [
    {
        "id": r.id,
        "name": r.name,
        "state": pb.RecordingState.Name(r.state),
        "include": [[f.source_cidr, f.destination_cidr, f.HasField("source_port"), f.destination_port, pb.CaptureProtocol.Name(f.protocol)] for f in r.include],
        "caplen": r.max_capture_length,
        "stop_packets": r.stop_condition.packets_captured_count,
        "files": [f.path for f in r.files],
        "started": r.started_at.seconds > 0,
    }
    for r in listed.recordings
]
stopped = rec.StopRecording(pb.StopRecordingRequest(id=started.id), timeout=10)
out["stopped"] = {"same_id": stopped.id == started.id, "state": pb.RecordingState.Name(stopped.state), "reason": pb.StopReason.Name(stopped.stop_reason), "closed": [f.closed for f in stopped.files]}

try:
    rec.StopRecording(pb.StopRecordingRequest(id="nosuchid"), timeout=10)
    out["missing"] = "found"
except grpc.RpcError as e:
    out["missing"] = e.code().name

print(json.dumps(out))
