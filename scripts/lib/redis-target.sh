# Sourced by backup.sh and restore.sh: how to reach the deployment's Redis for each --target.
# Expects TARGET, COMPOSE_FILE, K8S_NAMESPACE, K8S_CONTEXT, ROOT and HELPER to be set.

compose() { docker compose -f "$COMPOSE_FILE" "$@"; }

kube() {
  if [[ -n "$K8S_CONTEXT" ]]; then kubectl --context "$K8S_CONTEXT" -n "$K8S_NAMESPACE" "$@"
  else kubectl -n "$K8S_NAMESPACE" "$@"; fi
}

pick_python() {
  if [[ -n "${PYTHON:-}" ]]; then echo "$PYTHON"
  elif [[ -x "$ROOT/.venv/bin/python" ]]; then echo "$ROOT/.venv/bin/python"
  else echo python3; fi
}

# Run the helper where Redis is reachable: here (url), or inside the bot's image next to the
# services (compose/k8s), where REDIS_URL and ATENDIMENTO_NAMESPACE are already set.
run_helper() {
  case "$TARGET" in
    url) "$(pick_python)" "$HELPER" "$@" ;;
    compose) compose exec -T monitor python -c "$(cat "$HELPER")" "$@" ;;
    k8s) kube exec -i deploy/atendimento-monitor -c monitor -- python -c "$(cat "$HELPER")" "$@" ;;
  esac
}
