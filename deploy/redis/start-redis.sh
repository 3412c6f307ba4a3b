#!/bin/sh
# Starts one Redis of a primary + replicas set watched by Sentinel (Kubernetes StatefulSet
# atendimento-redis, docker compose profile `ha`). Whoever the sentinels name as primary is followed;
# when none answers (the very first start), PRIMARY_HOST is the primary and every other node its
# replica. Each node announces its stable DNS name, not its IP, so a restarted pod keeps its identity.
#   SELF_HOST      this node's DNS name (as the others and the sentinels reach it)
#   PRIMARY_HOST   the primary of a fresh set
#   SENTINEL_HOSTS space-separated sentinel host names (port 26379)
#   MASTER_NAME    the set's name in Sentinel [mymaster]
#   REDIS_CONF [/usr/local/etc/redis/redis.conf], RUN_DIR [/run/redis]: the configuration and where
#                  its writable copy goes; further arguments are passed on to redis-server
set -eu
master_name=${MASTER_NAME:-mymaster}
primary=""
for sentinel in $SENTINEL_HOSTS; do
  # Two lines, host and port, from a sentinel that knows the set; anything else (an error, nil,
  # no answer within 3 s) asks the next.
  answer=$(timeout 3 redis-cli -h "$sentinel" -p 26379 --raw sentinel get-master-addr-by-name "$master_name" 2>/dev/null) || answer=""
  port=$(printf '%s\n' "$answer" | sed -n 2p)
  case "$port" in '' | *[!0-9]*) continue ;; esac
  primary=$(printf '%s\n' "$answer" | sed -n 1p)
  break
done
primary=${primary:-$PRIMARY_HOST}
# A writable copy: Sentinel rewrites the configuration (CONFIG REWRITE) when it re-points a node.
run_dir=${RUN_DIR:-/run/redis}
mkdir -p "$run_dir"
cp "${REDIS_CONF:-/usr/local/etc/redis/redis.conf}" "$run_dir/redis.conf"
if [ "$primary" = "$SELF_HOST" ]; then
  echo "starting as the primary ($SELF_HOST)"
  exec redis-server "$run_dir/redis.conf" --replica-announce-ip "$SELF_HOST" "$@"
fi
echo "starting as a replica of $primary"
exec redis-server "$run_dir/redis.conf" --replica-announce-ip "$SELF_HOST" --replicaof "$primary" 6379 "$@"
