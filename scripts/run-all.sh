#!/usr/bin/env bash
# Run gateway, one worker and the monitor in the foreground with prefixed logs; Ctrl-C stops all.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
pids=()

start() {
  "$PY" -m "services.$1" > >(sed -u "s/^/[$1] /") 2>&1 &
  pids+=($!)
}

stop() {
  trap - INT TERM
  echo "stopping..."
  kill -TERM "${pids[@]}" 2>/dev/null
  wait "${pids[@]}" 2>/dev/null
  exit 0
}
trap stop INT TERM

start gateway
start worker
start monitor
echo "chat page:  http://localhost:${GATEWAY_PORT:-8080}/"
echo "admin:      http://localhost:${MONITOR_PORT:-8082}/admin"
echo "health:     http://localhost:${MONITOR_PORT:-8082}/monitoring/health"
echo "Ctrl-C stops all three."
# If one service exits on its own (a configuration error, say), stop the others too.
wait -n "${pids[@]}"
status=$?
kill -TERM "${pids[@]}" 2>/dev/null
wait "${pids[@]}" 2>/dev/null
exit "$status"
