#!/bin/sh
# Starts one Redis Sentinel (Kubernetes StatefulSet atendimento-redis-sentinel, docker compose
# profile `ha`). It watches the primary the other sentinels name, or PRIMARY_HOST on a fresh set;
# failover needs QUORUM sentinels to agree that the primary is down (2 of 3).
#   SELF_HOST      this sentinel's DNS name
#   PRIMARY_HOST   the primary of a fresh set
#   SENTINEL_HOSTS space-separated sentinel host names (port 26379)
#   MASTER_NAME [mymaster], QUORUM [2], DOWN_AFTER_MS [5000], FAILOVER_TIMEOUT_MS [60000]
#   RUN_DIR [/run/sentinel]: where its configuration is written; further arguments are passed on
set -eu
master_name=${MASTER_NAME:-mymaster}
primary=""
for sentinel in $SENTINEL_HOSTS; do
  [ "$sentinel" = "$SELF_HOST" ] && continue
  # Two lines, host and port, from a sentinel that knows the set; anything else (an error, nil,
  # no answer within 3 s) asks the next.
  answer=$(timeout 3 redis-cli -h "$sentinel" -p 26379 --raw sentinel get-master-addr-by-name "$master_name" 2>/dev/null) || answer=""
  port=$(printf '%s\n' "$answer" | sed -n 2p)
  case "$port" in '' | *[!0-9]*) continue ;; esac
  primary=$(printf '%s\n' "$answer" | sed -n 1p)
  break
done
primary=${primary:-$PRIMARY_HOST}
# Sentinel keeps its state in its configuration file: it must be writable (an emptyDir).
run_dir=${RUN_DIR:-/run/sentinel}
mkdir -p "$run_dir"
cat >"$run_dir/sentinel.conf" <<CONF
port 26379
protected-mode no
sentinel resolve-hostnames yes
sentinel announce-hostnames yes
sentinel announce-ip $SELF_HOST
sentinel monitor $master_name $primary 6379 ${QUORUM:-2}
sentinel down-after-milliseconds $master_name ${DOWN_AFTER_MS:-5000}
sentinel failover-timeout $master_name ${FAILOVER_TIMEOUT_MS:-60000}
sentinel parallel-syncs $master_name 1
CONF
echo "sentinel $SELF_HOST watching $master_name at $primary"
exec redis-server "$run_dir/sentinel.conf" --sentinel "$@"
