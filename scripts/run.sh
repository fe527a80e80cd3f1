#!/usr/bin/env bash
# The main job: start the service with the embedded default model and a retrieval index, wait until
# it is healthy, compress the sample request through it, index the sample's passages and compress
# again with retrieval instead of chunks, then stop it gracefully (SIGTERM -> drain).
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=${FOCAL_PORT:-50051}
DATA=$(mktemp -d)
.venv/bin/focal serve --port "$PORT" --metrics-port 0 --data-dir "$DATA" &
SERVER=$!
trap 'kill -TERM $SERVER 2>/dev/null || true; wait $SERVER 2>/dev/null || true; rm -rf "$DATA"' EXIT
.venv/bin/focal health --target "127.0.0.1:$PORT" --wait 120
echo "== compress the sample's eight chunks to a quarter of their tokens" >&2
.venv/bin/focal call examples/sample_request.jsonl --target "127.0.0.1:$PORT" --rate 0.25
echo "== index the same passages in the server, then compress what retrieval finds for the question" >&2
.venv/bin/focal index add examples/sample_request.jsonl --target "127.0.0.1:$PORT" --namespace sample
.venv/bin/focal call examples/sample_request.jsonl --target "127.0.0.1:$PORT" --rate 0.5 --retrieve-top-k 4 \
    --namespace sample
