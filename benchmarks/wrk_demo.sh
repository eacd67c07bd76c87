#!/usr/bin/env bash
# Throughput and latency of the demo model (churn, sklearn pipeline) on v1 and OIP v2, auth on.
# Usage: bash benchmarks/wrk_demo.sh   (env: CONNS=16 DURATION=15s WORKERS=1)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
bin="$root/.venv/bin"
conns=${CONNS:-16}
duration=${DURATION:-15s}
workers=${WORKERS:-1}
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }

export BERTH_HOME=$(mktemp -d)
trap 'kill $server 2>/dev/null || true; rm -rf "$BERTH_HOME"' EXIT
"$bin/berth" demo --no-serve >/dev/null
key=$("$bin/berth" keys create bench --scope predict --scope read 2>/dev/null | tail -n 1)
port=$("$bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$bin/berth" serve churn@production --port "$port" --workers "$workers" >/dev/null 2>&1 &
server=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/ready" >/dev/null && break; sleep 0.2; done

v1_body='{"features": {"tenure_months": 8, "monthly_charges": 71.79, "plan": "pro", "support_calls": 1}}'
v2_body='{"inputs": [{"name": "tenure_months", "shape": [1], "datatype": "INT64", "data": [8]}, {"name": "monthly_charges", "shape": [1], "datatype": "FP64", "data": [71.79]}, {"name": "plan", "shape": [1], "datatype": "BYTES", "data": ["pro"]}, {"name": "support_calls", "shape": [1], "datatype": "INT64", "data": [1]}]}'

run() {
  local name=$1 path=$2 body=$3 script
  script=$(mktemp --suffix .lua)
  cat >"$script" <<LUA
wrk.method = "POST"
wrk.body = '$body'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-API-Key"] = "$key"
LUA
  curl -sf -X POST "http://127.0.0.1:$port$path" -H "X-API-Key: $key" -H 'Content-Type: application/json' -d "$body" >/dev/null
  echo "== $name ($conns connections, $duration, $workers worker(s))"
  wrk -t 1 -c "$conns" -d "$duration" --latency -s "$script" "http://127.0.0.1:$port$path" \
    | grep -E "Requests/sec|^ +50%|^ +99%|Non-2xx|Socket errors"
  rm -f "$script"
}
run "v1 predict" /api/v1/models/churn/predict "$v1_body"
run "v2 infer" /v2/models/churn/infer "$v2_body"
