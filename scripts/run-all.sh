#!/usr/bin/env bash
# Run gateway, one worker and the monitor in the foreground with prefixed logs; Ctrl-C (SIGINT) or
# SIGTERM stops all three. Launched in the background, a shell starts with SIGINT ignored and cannot
# trap it: stop it with SIGTERM then (`kill <pid>`).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
pids=()

# .env (or ENV_FILE), when present, as docker compose reads it: KEY=VALUE lines, no shell
# expansion, an unquoted value ending at " #" (a comment), a later line for a name replacing an
# earlier one (a block appended to a copied .env.example wins), and a variable already in the
# environment winning over the file. Empty values mean "the default", so they set nothing.
env_file=${ENV_FILE:-.env}
declare -A from_file=()
if [[ -f $env_file ]]; then
  while IFS= read -r line || [[ -n $line ]]; do
    [[ $line =~ ^[[:space:]]*(#|$) ]] && continue
    if [[ ! $line =~ ^[[:space:]]*([A-Za-z_][A-Za-z0-9_]*)=(.*)$ ]]; then
      echo "run-all: $env_file: not a KEY=VALUE line: $line" >&2
      exit 2
    fi
    name=${BASH_REMATCH[1]} value=${BASH_REMATCH[2]}
    if [[ $value =~ ^(\"[^\"]*\"|\'[^\']*\')[[:space:]]+# ]]; then value=${BASH_REMATCH[1]}; fi
    if [[ $value =~ ^\"(.*)\"$ || $value =~ ^\'(.*)\'$ ]]; then
      value=${BASH_REMATCH[1]}
    else
      value=${value%%" #"*}
      value=${value%"${value##*[![:space:]]}"}  # the spaces before the comment
    fi
    [[ -v $name && -z ${from_file[$name]:-} ]] && continue  # set in the environment: it wins
    if [[ -z $value ]]; then
      [[ -n ${from_file[$name]:-} ]] && unset "$name"  # back to the default, as compose reads it
      continue
    fi
    from_file[$name]=1
    export "$name=$value"
  done < "$env_file"
  echo "settings: $env_file (variables already set in the environment win)"
fi

start() {
  # Ctrl-C reaches every process of the job: the prefixer ignores it and ends when its service's
  # output does, so what a service logs while it stops still reaches the terminal.
  "$PY" -m "services.$1" > >(trap '' INT; exec sed -u "s/^/[$1] /") 2>&1 &
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
