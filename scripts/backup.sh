#!/usr/bin/env bash
# Back up what ia-atendimento-bot must not lose:
#   - every Redis key under "{ATENDIMENTO_NAMESPACE}:" (conversation memory, stats, idempotency
#     claims, stored replies, handoff state...), with its expiry: redis-keys.jsonl.gz
#   - the configuration: compose -> .env, docker-compose.yml, deploy/{nginx,redis,rabbitmq}
#                        k8s     -> the bot's ConfigMaps, Secrets and Ingresses (re-appliable)
#                        url     -> the file given with --env-file, if any
#   - RabbitMQ definitions (users, vhosts, policies, queues) for compose and k8s.
# Messages still in the queues are not backed up: they are in flight, replicated by the quorum
# queues, and the gateways answered for them.
#
# Usage: scripts/backup.sh [--target compose|k8s|url] [options]     (details: --help)
# Restore with scripts/restore.sh. Runbook: docs/operations.md, "Backup and recovery".
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: scripts/backup.sh [--target compose|k8s|url] [options]

Targets:
  compose (default)  the docker compose stack of this repository (docker compose exec)
  k8s                the Kubernetes deployment (kubectl exec into the monitor)
  url                any Redis reachable from this machine (--redis-url / REDIS_URL)

Options:
  --output DIR          where backups go (default: $BACKUP_DIR or ./backups); each run
                        creates DIR/YYYYmmdd_HHMMSS/
  --namespace NS        ATENDIMENTO_NAMESPACE to back up (compose/k8s: default is the one the
                        services run with; url: $ATENDIMENTO_NAMESPACE or "atendimento")
  --redis-url URL       url target: Redis to read (default $REDIS_URL or redis://localhost:6379/0)
  --env-file FILE       url target: configuration file to save with the data
  --compose-file FILE   compose target (default: docker-compose.yml of this repository)
  --k8s-namespace NS    k8s target: namespace (default atendimento)
  --context NAME        k8s target: kubectl context
  --no-config           back up Redis data only
  --retention-days N    delete backups older than N days in the output dir (default 30, 0 = keep)
  --gpg-recipient ID    encrypt: leave only DIR/YYYYmmdd_HHMMSS.tar.gpg (gpg public key ID)
  -h, --help            this help

Environment: PYTHON (url target) is the interpreter with the 'redis' package
(default: .venv/bin/python of this repository, else python3).
EOF
}

die() { echo "backup.sh: $*" >&2; exit 1; }
log() { echo "backup.sh: $*" >&2; }

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HELPER="$ROOT/deploy/backup/redis_keys.py"

TARGET=compose
OUTPUT="${BACKUP_DIR:-$ROOT/backups}"
NAMESPACE=""
REDIS_URL_ARG="${REDIS_URL:-redis://localhost:6379/0}"
ENV_FILE=""
COMPOSE_FILE="$ROOT/docker-compose.yml"
K8S_NAMESPACE=atendimento
K8S_CONTEXT=""
WITH_CONFIG=1
RETENTION_DAYS=30
GPG_RECIPIENT=""

while [[ $# -gt 0 ]]; do
  case "$1" in
    --target) TARGET="${2:?--target needs a value}"; shift 2 ;;
    --output) OUTPUT="${2:?}"; shift 2 ;;
    --namespace) NAMESPACE="${2:?}"; shift 2 ;;
    --redis-url) REDIS_URL_ARG="${2:?}"; shift 2 ;;
    --env-file) ENV_FILE="${2:?}"; shift 2 ;;
    --compose-file) COMPOSE_FILE="${2:?}"; shift 2 ;;
    --k8s-namespace) K8S_NAMESPACE="${2:?}"; shift 2 ;;
    --context) K8S_CONTEXT="${2:?}"; shift 2 ;;
    --no-config) WITH_CONFIG=0; shift ;;
    --retention-days) RETENTION_DAYS="${2:?}"; shift 2 ;;
    --gpg-recipient) GPG_RECIPIENT="${2:?}"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
done

case "$TARGET" in compose|k8s|url) ;; *) die "--target must be compose, k8s or url" ;; esac
[[ "$RETENTION_DAYS" =~ ^[0-9]+$ ]] || die "--retention-days must be a whole number"
[[ -f "$HELPER" ]] || die "missing $HELPER"

# Backups hold secrets (.env, Secrets, RabbitMQ password hashes): owner-only from the start.
umask 077

STAMP="$(date -u +%Y%m%d_%H%M%S)"
DEST="$OUTPUT/$STAMP"
[[ -e "$DEST" ]] && die "$DEST already exists"
mkdir -p "$DEST"
OUTPUT="$(cd "$OUTPUT" && pwd)"
DEST="$OUTPUT/$STAMP"
# A failed run leaves nothing half-written behind.
on_exit() {
  local rc=$?
  if [[ $rc -ne 0 ]]; then rm -rf "$DEST"; fi
  exit "$rc"
}
trap on_exit EXIT

# shellcheck source=scripts/lib/redis-target.sh
source "$ROOT/scripts/lib/redis-target.sh"

# --- Redis data ---------------------------------------------------------------------------------
DUMP_ARGS=(dump)
[[ -n "$NAMESPACE" ]] && DUMP_ARGS+=(--namespace "$NAMESPACE")
[[ "$TARGET" == url ]] && DUMP_ARGS+=(--redis-url "$REDIS_URL_ARG")
log "dumping Redis keys ($TARGET) ..."
run_helper "${DUMP_ARGS[@]}" | gzip -9 > "$DEST/redis-keys.jsonl.gz"
# The last line is the end marker with the key count: a cut-off dump is caught here.
FOOTER="$(gzip -dc "$DEST/redis-keys.jsonl.gz" | tail -n 1)"
[[ "$FOOTER" == *'"end": true'* ]] || die "the Redis dump is incomplete (no end marker)"
HEADER="$(gzip -dc "$DEST/redis-keys.jsonl.gz" | head -n 1 || true)"

# --- configuration and RabbitMQ definitions ------------------------------------------------------
if [[ "$WITH_CONFIG" == 1 ]]; then
  case "$TARGET" in
    compose)
      files=()
      for path in .env docker-compose.yml deploy/nginx deploy/redis deploy/rabbitmq; do
        [[ -e "$ROOT/$path" ]] && files+=("$path")
      done
      tar -C "$ROOT" -czf "$DEST/config.tar.gz" "${files[@]}"
      if compose exec -T rabbitmq rabbitmqctl -q export_definitions - > "$DEST/rabbitmq-definitions.json"; then
        log "saved RabbitMQ definitions"
      else
        log "warning: could not export RabbitMQ definitions"; rm -f "$DEST/rabbitmq-definitions.json"
      fi
      ;;
    k8s)
      kube get configmap,secret,ingress -l app.kubernetes.io/part-of=ia-atendimento-bot -o json \
        | "$(pick_python)" "$HELPER" k8s-clean > "$DEST/k8s-objects.json"
      # The Secret made by hand from secret.example.yaml may lack the part-of label.
      if kube get secret atendimento-secrets -o json > "$DEST/.secret.json" 2>/dev/null; then
        "$(pick_python)" "$HELPER" k8s-clean < "$DEST/.secret.json" > "$DEST/k8s-secret-atendimento-secrets.json"
      fi
      rm -f "$DEST/.secret.json"
      if kube exec atendimento-rabbitmq-server-0 -c rabbitmq -- rabbitmqctl -q export_definitions - \
           > "$DEST/rabbitmq-definitions.json"; then
        log "saved RabbitMQ definitions"
      else
        log "warning: could not export RabbitMQ definitions"; rm -f "$DEST/rabbitmq-definitions.json"
      fi
      ;;
    url)
      if [[ -n "$ENV_FILE" ]]; then
        [[ -f "$ENV_FILE" ]] || die "--env-file $ENV_FILE does not exist"
        mkdir -p "$DEST/config"
        cp -p "$ENV_FILE" "$DEST/config/$(basename "$ENV_FILE")"
      fi
      ;;
  esac
fi

# --- manifest -------------------------------------------------------------------------------------
{
  echo "created_utc=$STAMP"
  echo "target=$TARGET"
  echo "host=$(hostname)"
  echo "redis_header=$HEADER"
  echo "redis_footer=$FOOTER"
  echo "git_commit=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
} > "$DEST/MANIFEST"
(cd "$DEST" && find . -type f -print0 | sort -z | xargs -0 sha256sum > "$OUTPUT/.SHA256SUMS.$STAMP")
mv "$OUTPUT/.SHA256SUMS.$STAMP" "$DEST/SHA256SUMS"

# --- optional encryption --------------------------------------------------------------------------
if [[ -n "$GPG_RECIPIENT" ]]; then
  tar -C "$OUTPUT" -cf - "$STAMP" | gpg --batch --yes --encrypt --recipient "$GPG_RECIPIENT" \
    --output "$DEST.tar.gpg"
  rm -rf "$DEST"
  RESULT="$DEST.tar.gpg"
else
  RESULT="$DEST"
fi

# --- retention (only entries this script names: YYYYmmdd_HHMMSS[.tar.gpg]) -------------------------
if [[ "$RETENTION_DAYS" -gt 0 ]]; then
  find "$OUTPUT" -mindepth 1 -maxdepth 1 -mtime +"$RETENTION_DAYS" \
    -regextype posix-extended -regex '.*/[0-9]{8}_[0-9]{6}(\.tar\.gpg)?' \
    -exec rm -rf {} + 2>/dev/null || true
fi

log "done: $RESULT  ($FOOTER)"
echo "$RESULT"
