#!/usr/bin/env bash
# Restore a backup made by scripts/backup.sh: the Redis keys of the backed-up namespace (RESTORE
# ... REPLACE, expiries kept) and, on request, the configuration and RabbitMQ definitions.
#
# Usage: scripts/restore.sh [--target compose|k8s|url] [options] BACKUP    (details: --help)
# Runbook: docs/operations.md, "Backup and recovery".
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: scripts/restore.sh [--target compose|k8s|url] [options] BACKUP

BACKUP is a directory made by scripts/backup.sh (backups/YYYYmmdd_HHMMSS) or its encrypted
form (YYYYmmdd_HHMMSS.tar.gpg).

Targets:
  compose (default)  the docker compose stack of this repository (docker compose exec)
  k8s                the Kubernetes deployment (kubectl exec into the monitor)
  url                any Redis reachable from this machine (--redis-url / REDIS_URL)

Options:
  --namespace NS        namespace to restore; must be the backup's (default: the backup's)
  --redis-url URL       url target: Redis to write (default $REDIS_URL or redis://localhost:6379/0)
  --no-replace          keep keys that exist now (default: the backup's version wins)
  --ttl-mode MODE       absolute (default): keys expire when they would have, already expired
                        ones are skipped; relative: each key gets back the TTL it had at backup
  --with-config         also restore configuration: compose -> files into this repository (the
                        current ones are saved first as backups/pre-restore-*.tar.gz);
                        k8s -> kubectl apply of the saved ConfigMaps/Secrets/Ingresses
  --with-rabbitmq-definitions   import the saved RabbitMQ definitions (compose/k8s)
  --compose-file FILE   compose target (default: docker-compose.yml of this repository)
  --k8s-namespace NS    k8s target: namespace (default atendimento)
  --context NAME        k8s target: kubectl context
  -y, --yes             do not ask for confirmation
  -h, --help            this help

Environment: PYTHON (url target) is the interpreter with the 'redis' package
(default: .venv/bin/python of this repository, else python3).
EOF
}

die() { echo "restore.sh: $*" >&2; exit 1; }
log() { echo "restore.sh: $*" >&2; }

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HELPER="$ROOT/deploy/backup/redis_keys.py"

TARGET=compose
NAMESPACE=""
REDIS_URL_ARG="${REDIS_URL:-redis://localhost:6379/0}"
REPLACE=1
TTL_MODE=absolute
WITH_CONFIG=0
WITH_DEFINITIONS=0
COMPOSE_FILE="$ROOT/docker-compose.yml"
K8S_NAMESPACE=atendimento
K8S_CONTEXT=""
ASSUME_YES=0
BACKUP=""

while [[ $# -gt 0 ]]; do
  case "$1" in
    --target) TARGET="${2:?--target needs a value}"; shift 2 ;;
    --namespace) NAMESPACE="${2:?}"; shift 2 ;;
    --redis-url) REDIS_URL_ARG="${2:?}"; shift 2 ;;
    --no-replace) REPLACE=0; shift ;;
    --ttl-mode) TTL_MODE="${2:?}"; shift 2 ;;
    --with-config) WITH_CONFIG=1; shift ;;
    --with-rabbitmq-definitions) WITH_DEFINITIONS=1; shift ;;
    --compose-file) COMPOSE_FILE="${2:?}"; shift 2 ;;
    --k8s-namespace) K8S_NAMESPACE="${2:?}"; shift 2 ;;
    --context) K8S_CONTEXT="${2:?}"; shift 2 ;;
    -y|--yes) ASSUME_YES=1; shift ;;
    -h|--help) usage; exit 0 ;;
    -*) usage >&2; die "unknown option: $1" ;;
    *) [[ -z "$BACKUP" ]] || die "only one BACKUP"; BACKUP="$1"; shift ;;
  esac
done

[[ -n "$BACKUP" ]] || { usage >&2; die "which backup? (a backups/YYYYmmdd_HHMMSS directory)"; }
case "$TARGET" in compose|k8s|url) ;; *) die "--target must be compose, k8s or url" ;; esac
case "$TTL_MODE" in absolute|relative) ;; *) die "--ttl-mode must be absolute or relative" ;; esac
[[ -f "$HELPER" ]] || die "missing $HELPER"
umask 077

# shellcheck source=scripts/lib/redis-target.sh
source "$ROOT/scripts/lib/redis-target.sh"

# --- open the backup (decrypting if needed) --------------------------------------------------------
WORK=""
cleanup() { [[ -n "$WORK" ]] && rm -rf "$WORK"; return 0; }
trap cleanup EXIT
if [[ -f "$BACKUP" && "$BACKUP" == *.tar.gpg ]]; then
  WORK="$(mktemp -d)"
  gpg --batch --decrypt "$BACKUP" | tar -C "$WORK" -xf -
  DIR="$(find "$WORK" -mindepth 1 -maxdepth 1 -type d | head -n 1)"
else
  DIR="$BACKUP"
fi
[[ -f "$DIR/redis-keys.jsonl.gz" ]] || die "$BACKUP holds no redis-keys.jsonl.gz"
if [[ -f "$DIR/SHA256SUMS" ]]; then
  (cd "$DIR" && sha256sum --quiet -c SHA256SUMS) || die "checksums do not match: the backup is damaged"
fi

BACKUP_NS="$(gzip -dc "$DIR/redis-keys.jsonl.gz" | head -n 1 \
  | sed -n 's/.*"namespace": *"\([^"]*\)".*/\1/p' || true)"
[[ -n "$BACKUP_NS" ]] || die "cannot read the namespace from the backup header"
if [[ -n "$NAMESPACE" && "$NAMESPACE" != "$BACKUP_NS" ]]; then
  die "the backup holds namespace '$BACKUP_NS', not '$NAMESPACE'"
fi

if [[ "$ASSUME_YES" != 1 ]]; then
  if [[ -t 0 ]]; then
    what="Redis keys of namespace '$BACKUP_NS'"
    [[ "$WITH_CONFIG" == 1 ]] && what="$what + configuration"
    [[ "$WITH_DEFINITIONS" == 1 ]] && what="$what + RabbitMQ definitions"
    read -r -p "Restore $what from $BACKUP into target '$TARGET'? [y/N] " answer
    [[ "$answer" == y || "$answer" == Y ]] || die "aborted"
  else
    die "no terminal to confirm on: pass --yes"
  fi
fi

# --- Redis data -----------------------------------------------------------------------------------
RESTORE_ARGS=(restore --namespace "$BACKUP_NS" --ttl-mode "$TTL_MODE")
[[ "$REPLACE" == 0 ]] && RESTORE_ARGS+=(--no-replace)
[[ "$TARGET" == url ]] && RESTORE_ARGS+=(--redis-url "$REDIS_URL_ARG")
log "restoring Redis keys of namespace '$BACKUP_NS' ($TARGET) ..."
gzip -dc "$DIR/redis-keys.jsonl.gz" | run_helper "${RESTORE_ARGS[@]}"

# --- configuration ---------------------------------------------------------------------------------
if [[ "$WITH_CONFIG" == 1 ]]; then
  case "$TARGET" in
    compose)
      [[ -f "$DIR/config.tar.gz" ]] || die "the backup has no config.tar.gz"
      mkdir -p "$ROOT/backups"
      SAVED="$ROOT/backups/pre-restore-$(date -u +%Y%m%d_%H%M%S).tar.gz"
      current=()
      for path in .env docker-compose.yml deploy/nginx deploy/redis deploy/rabbitmq; do
        [[ -e "$ROOT/$path" ]] && current+=("$path")
      done
      tar -C "$ROOT" -czf "$SAVED" "${current[@]}"
      tar -C "$ROOT" -xzf "$DIR/config.tar.gz"
      log "configuration restored (previous files saved in $SAVED); apply it: docker compose up -d"
      ;;
    k8s)
      for file in "$DIR"/k8s-*.json; do
        [[ -f "$file" ]] && kube apply -f "$file"
      done
      log "configuration applied; reload it: kubectl -n $K8S_NAMESPACE rollout restart deployment"
      ;;
    url)
      if [[ -d "$DIR/config" ]]; then
        log "saved configuration files (copy them back by hand): $(ls "$DIR/config")"
      fi
      ;;
  esac
fi

# --- RabbitMQ definitions ---------------------------------------------------------------------------
if [[ "$WITH_DEFINITIONS" == 1 ]]; then
  [[ -f "$DIR/rabbitmq-definitions.json" ]] || die "the backup has no rabbitmq-definitions.json"
  # Runs inside the RabbitMQ container (single quotes on purpose).
  # shellcheck disable=SC2016
  IMPORT='cat > /tmp/definitions.json && rabbitmqctl -q import_definitions /tmp/definitions.json; rc=$?; rm -f /tmp/definitions.json; exit $rc'
  case "$TARGET" in
    compose) compose exec -T rabbitmq sh -c "$IMPORT" < "$DIR/rabbitmq-definitions.json" ;;
    k8s) kube exec -i atendimento-rabbitmq-server-0 -c rabbitmq -- sh -c "$IMPORT" < "$DIR/rabbitmq-definitions.json" ;;
    url) die "--with-rabbitmq-definitions needs --target compose or k8s" ;;
  esac
  log "RabbitMQ definitions imported"
fi

log "done"
