#!/usr/bin/env bash
# Make sure Redis (REDIS_URL) and RabbitMQ (AMQP_URL) answer. A local server that is installed but
# stopped is started; a missing one is installed with apt when we run as root; otherwise we stop
# with one line saying what to do.
set -euo pipefail

REDIS_URL=${REDIS_URL:-redis://localhost:6379/0}
AMQP_URL=${AMQP_URL:-amqp://guest:guest@localhost:5672/}

# host and port of a URL like scheme://[user:pass@]host[:port][/...]
host_of() { local rest=${1#*://}; rest=${rest##*@}; rest=${rest%%/*}; echo "${rest%%:*}"; }
port_of() { local rest=${1#*://}; rest=${rest##*@}; rest=${rest%%/*}; [[ $rest == *:* ]] && echo "${rest##*:}" || echo "$2"; }

answers() { timeout 1 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null; }

wait_for() {  # host port seconds name
  local deadline=$((SECONDS + $3))
  until answers "$1" "$2"; do
    if ((SECONDS >= deadline)); then echo "ensure-services: $4 did not start answering on $1:$2 within $3s" >&2; exit 1; fi
    sleep 0.5
  done
}

is_local() { [[ $1 == localhost || $1 == 127.* || $1 == ::1 ]]; }

apt_install() {
  if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null; then
    echo "ensure-services: $1 is not installed; install it (Debian/Ubuntu: sudo apt-get install -y $1) or point $2 at a running server" >&2
    exit 1
  fi
  echo "ensure-services: installing $1 with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq "$1" >/dev/null
}

ensure_redis() {
  local host port
  host=$(host_of "$REDIS_URL"); port=$(port_of "$REDIS_URL" 6379)
  answers "$host" "$port" && return 0
  if ! is_local "$host"; then echo "ensure-services: Redis at $host:$port does not answer (REDIS_URL)" >&2; exit 1; fi
  command -v redis-server >/dev/null || apt_install redis-server REDIS_URL
  echo "ensure-services: starting redis-server on port $port"
  redis-server --daemonize yes --bind 127.0.0.1 --port "$port" --dir /tmp --logfile /tmp/atendimento-redis.log >/dev/null
  wait_for "$host" "$port" 30 Redis
}

ensure_rabbitmq() {
  local host port
  host=$(host_of "$AMQP_URL"); port=$(port_of "$AMQP_URL" 5672)
  answers "$host" "$port" && return 0
  if ! is_local "$host"; then echo "ensure-services: RabbitMQ at $host:$port does not answer (AMQP_URL)" >&2; exit 1; fi
  command -v rabbitmq-server >/dev/null || apt_install rabbitmq-server AMQP_URL
  echo "ensure-services: starting rabbitmq-server"
  rabbitmq-server -detached >/dev/null 2>&1 || true
  wait_for "$host" "$port" 120 RabbitMQ
}

ensure_redis
ensure_rabbitmq
