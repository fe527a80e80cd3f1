#!/usr/bin/env bash
# The main job: start the service with the embedded default model, wait until it is healthy,
# compress the sample request through it, then stop it gracefully (SIGTERM -> drain).
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=${FOCAL_PORT:-50051}
.venv/bin/focal serve --port "$PORT" --metrics-port 0 &
SERVER=$!
trap 'kill -TERM $SERVER 2>/dev/null || true; wait $SERVER 2>/dev/null || true' EXIT
.venv/bin/python - "$PORT" <<'PY'
import sys, time, grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
channel = grpc.insecure_channel(f"127.0.0.1:{sys.argv[1]}")
deadline = time.monotonic() + 120
while True:
    try:
        if health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2).status == 1:
            break
    except grpc.RpcError:
        if time.monotonic() > deadline:
            sys.exit("the service did not become healthy within 120 s")
        time.sleep(0.5)
PY
.venv/bin/focal call examples/sample_request.jsonl --target "127.0.0.1:$PORT" --rate 0.25
