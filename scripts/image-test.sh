#!/usr/bin/env bash
# `make image-test`: build the Dockerfile unchanged with podman and run the image as production does.
#
# Builds on a local Debian bookworm base made with debootstrap (python3, python3-venv,
# python-is-python3, ca-certificates), passed through the Dockerfile's PYTHON_IMAGE build argument,
# so no registry is needed for the base. Then runs gateway, worker and monitor from the image
# read-only, with every capability dropped and no new privileges, against the RabbitMQ and Redis of
# this machine (AMQP_URL, REDIS_URL; a fresh namespace), and checks: a message is answered, the
# processes are not root, the HEALTHCHECK is in the image and passes, SIGTERM stops each with exit 0.
# Everything it started is removed at the end; the base image is kept for the next run
# (`podman rmi localhost/atendimento-base:bookworm` removes it). Prints the image size.
#
# What podman needs on such a machine, set in a private containers.conf (CONTAINERS_CONF):
#   - default_ulimits at or below the hard limits (podman's default nofile asks for more);
#   - runtime = "runc" (crun refuses a hybrid cgroup set-up);
#   - `--format docker` (the OCI image format has no HEALTHCHECK);
#   - the machine's CA bundle mounted into the build, where TLS is intercepted (pip must trust it).
set -euo pipefail

cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
BASE=localhost/atendimento-base:bookworm
IMAGE=localhost/ia-atendimento-bot:image-test
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
CA_BUNDLE=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
AMQP_URL=${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/}
REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379/0}
NAMESPACE="imagetest$(od -An -N4 -tx1 /dev/urandom | tr -d ' \n')"
WORK=$(mktemp -d)
CONTAINERS=()

say() { printf 'image-test: %s\n' "$*"; }
fail() { tail -n 20 "$WORK/podman.log" >&2 2>/dev/null || true; say "FAILED: $*" >&2; exit 1; }
# podman's own complaints go to a log shown on failure: without CNI plugins it warns about the
# default bridge network (every container here uses the host's network), and without systemd it
# cannot schedule the periodic health checks (`podman healthcheck run` runs them on demand).
pm() { podman "$@" 2>>"$WORK/podman.log"; }

cleanup() {
  local status=$?
  for name in "${CONTAINERS[@]}"; do pm rm -f -t 0 "$name" >/dev/null || true; done
  pm rmi -f "$IMAGE" >/dev/null || true
  # The build's other new images too (the builder stage's), not the base kept for the next run.
  if [ -n "${IMAGES_BEFORE+set}" ]; then
    local base_id
    base_id=$(pm image inspect --format '{{.Id}}' "$BASE" || true)
    for id in $(comm -13 <(printf '%s\n' "$IMAGES_BEFORE") <(pm images -qa --no-trunc | sort -u)); do
      [[ -n "$base_id" && "$id" == *"$base_id"* ]] || pm rmi -f "$id" >/dev/null || true
    done
  fi
  "$PY" -c "import asyncio, sys; from tests.support import purge_namespace; asyncio.run(purge_namespace(sys.argv[1]))" \
    "$NAMESPACE" >/dev/null 2>&1 || say "could not purge namespace $NAMESPACE"
  rm -rf "$WORK"
  exit "$status"
}
trap cleanup EXIT

need_tools() {
  local missing=()
  for tool in podman runc debootstrap; do command -v "$tool" >/dev/null || missing+=("$tool"); done
  [ ${#missing[@]} -eq 0 ] && return
  [ "$(id -u)" -eq 0 ] || fail "missing ${missing[*]}: apt-get install podman runc debootstrap"
  say "installing podman runc debootstrap (Debian packages)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends podman runc debootstrap >/dev/null
}

write_containers_conf() {
  # Both at or below the hard limits: podman's defaults ask for more (nofile 1048576, and nproc
  # above this machine's), which runc is not permitted to set. 32768 processes is buildah's own
  # default and plenty; (a machine's full hard nproc was refused here too).
  local nofile nproc
  nofile=$(ulimit -Hn)
  nproc=$(ulimit -Hu)
  [ "$nofile" = unlimited ] && nofile=1048576
  { [ "$nproc" = unlimited ] || [ "$nproc" -gt 32768 ]; } && nproc=32768
  cat >"$WORK/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=${nofile}:${nofile}", "nproc=${nproc}:${nproc}"]

[engine]
runtime = "runc"
EOF
  export CONTAINERS_CONF="$WORK/containers.conf"
}

make_base() {
  if pm image exists "$BASE"; then
    say "base $BASE already here"
    return
  fi
  say "making $BASE with debootstrap (a few minutes, once)"
  local root="$WORK/rootfs"
  debootstrap --variant=minbase --include=python3,python3-venv,python-is-python3,ca-certificates \
    bookworm "$root" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 || { tail -20 "$WORK/debootstrap.log"; fail "debootstrap"; }
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  tar -C "$root" -c . | pm import --change 'CMD ["python3"]' - "$BASE" >/dev/null
}

build() {
  local started=$SECONDS
  say "building $IMAGE"
  pm build --format docker --network host \
    --volume "$CA_BUNDLE:/etc/ssl/certs/ca-certificates.crt:ro" \
    --build-arg "PYTHON_IMAGE=$BASE" -t "$IMAGE" . >"$WORK/build.log" 2>&1 || { tail -30 "$WORK/build.log"; fail "podman build"; }
  say "built in $((SECONDS - started)) s"
  pm image inspect --format '{{json .Config.Healthcheck}}' "$IMAGE" | grep -q atendimento-healthcheck \
    || fail "the image has no HEALTHCHECK"
}

free_port() { "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

run_service() {  # name module port-variable port
  local name="$NAMESPACE-$1"
  CONTAINERS+=("$name")
  pm run -d --name "$name" --network host --read-only --tmpfs /tmp --cap-drop ALL \
    --security-opt no-new-privileges \
    -e AMQP_URL="$AMQP_URL" -e REDIS_URL="$REDIS_URL" -e ATENDIMENTO_NAMESPACE="$NAMESPACE" \
    -e ATENDIMENTO_SHARDS=4 -e KB_EMBEDDINGS=off -e OTEL_SDK_DISABLED=true -e "$3=$4" \
    "$IMAGE" python -m "services.$2" >/dev/null
}

wait_for() {  # url what
  for _ in $(seq 1 120); do
    if "$PY" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' "$1" 2>/dev/null; then return; fi
    sleep 1
  done
  for name in "${CONTAINERS[@]}"; do pm logs --tail 20 "$name" 2>&1 | sed "s/^/$name: /"; done
  fail "$2 did not answer $1"
}

ask() {  # gateway-url
  "$PY" - "$1" <<'EOF'
import json, sys, urllib.request
body = json.dumps({"user_id": "image-test", "conversation_id": "image-test", "text": "Qual o prazo de entrega?"}).encode()
request = urllib.request.Request(sys.argv[1] + "/v1/messages?wait=30", data=body, headers={"Content-Type": "application/json"})
with urllib.request.urlopen(request, timeout=40) as response:
    reply = json.load(response)
assert response.status == 200 and reply["status"] == "answered", reply
print(reply["reply"]["text"][:80])
EOF
}

check_running() {  # service
  local name="$NAMESPACE-$1"
  [ "$(pm exec "$name" id -u)" = 1001 ] || fail "$1 runs as root"
  [ "$(pm exec "$name" awk '/^CapEff/ {print $2}' /proc/1/status)" = 0000000000000000 ] || fail "$1 has capabilities"
  ! pm exec "$name" touch /app/written 2>/dev/null || fail "$1 could write to its image"
  pm healthcheck run "$name" >/dev/null || fail "$1: HEALTHCHECK failed"
  say "$1: uid 1001, no capabilities, image read-only, HEALTHCHECK passes"
}

stop_cleanly() {  # service
  local name="$NAMESPACE-$1" code
  pm stop -t 40 "$name" >/dev/null
  code=$(pm inspect --format '{{.State.ExitCode}}' "$name")
  [ "$code" = 0 ] || { pm logs --tail 20 "$name"; fail "$1 exited $code on SIGTERM"; }
  say "$1: stopped cleanly on SIGTERM (exit 0)"
}

need_tools
write_containers_conf
make_base
IMAGES_BEFORE=$(pm images -qa --no-trunc | sort -u)
build
gateway_port=$(free_port) worker_port=$(free_port) monitor_port=$(free_port)
run_service gateway gateway GATEWAY_PORT "$gateway_port"
run_service worker worker WORKER_PORT "$worker_port"
run_service monitor monitor MONITOR_PORT "$monitor_port"
wait_for "http://127.0.0.1:$gateway_port/monitoring/health" gateway
wait_for "http://127.0.0.1:$worker_port/monitoring/health" worker
wait_for "http://127.0.0.1:$monitor_port/monitoring/live" monitor
say "answered: $(ask "http://127.0.0.1:$gateway_port")"
for service in gateway worker monitor; do check_running "$service"; done
for service in worker gateway monitor; do stop_cleanly "$service"; done
size=$(pm image inspect --format '{{.Size}}' "$IMAGE")
base_size=$(pm image inspect --format '{{.Size}}' "$BASE")
say "image size $((size / 1000000)) MB, of which the debootstrap base $((base_size / 1000000)) MB"
say "passed"
