"""scripts/backup.sh and scripts/restore.sh against a real Redis.

Every test works in its own random ATENDIMENTO_NAMESPACE on the shared Redis (REDIS_URL, as for the
rest of the suite; default redis://127.0.0.1:6379/0) and deletes only its own keys: never FLUSHALL.
The url target runs for real; the compose and k8s targets run their exact command lines against
stand-in `docker`/`kubectl` executables that perform the `exec` locally (no Docker engine or
cluster here), so the data path through `python -c <helper>` is still exercised end to end.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

pytestmark = pytest.mark.integration  # the scripts run against the shared Redis

ROOT = Path(__file__).resolve().parents[1]
BACKUP_SH = ROOT / "scripts" / "backup.sh"
RESTORE_SH = ROOT / "scripts" / "restore.sh"
HELPER = ROOT / "deploy" / "backup" / "redis_keys.py"
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")

Snapshot = dict[bytes, tuple[str, Any, int]]


@pytest.fixture
def client() -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(REDIS_URL)
    try:
        connection.ping()
    except redis.RedisError as exc:
        pytest.fail(f"the backup/restore tests need a Redis at {REDIS_URL} ({exc}); `make test` starts one")
    yield connection
    connection.close()


@pytest.fixture
def namespace(client: redis.Redis) -> Iterator[str]:
    ns = f"bkp-{uuid.uuid4().hex[:12]}"
    yield ns
    for pattern in (f"{ns}:*", f"{ns}x:*", f"{ns}-other:*"):
        keys = list(client.scan_iter(match=pattern, count=500))
        if keys:
            client.delete(*keys)


def seed(client: redis.Redis, ns: str) -> None:
    """Data shaped like the bot's: memory lists, stats hashes with TTLs, a users sorted set,
    idempotency claims and stored replies with TTLs, and one key without expiry."""
    pipe = client.pipeline()
    for conversation in ("web:u1", "whatsapp:5511999990000", "telegram:42"):
        key = f"{ns}:memory:{conversation}"
        pipe.rpush(key, json.dumps({"role": "user", "text": "Qual o prazo de entrega?"}))
        pipe.rpush(key, json.dumps({"role": "assistant", "text": "Entregamos em até 5 dias úteis."}))
        pipe.expire(key, 86_400)
    for bucket in (1_800_000_000, 1_800_000_010):
        key = f"{ns}:stats:10s:{bucket}"
        pipe.hset(key, mapping={"messages": 7, "errors": 1, "lat_ms_sum": 5321})
        pipe.expire(key, 7_200)
    pipe.hset(f"{ns}:stats:total", mapping={"messages": 1234, "errors": 5})
    pipe.zadd(f"{ns}:users:last-seen", {"u1": 1_800_000_000, "u2": 1_800_000_100})
    pipe.set(f"{ns}:msg:m-1", "claimed", ex=3_600)
    pipe.set(f"{ns}:reply:m-1", json.dumps({"text": "Olá!", "engine": "kb"}), ex=3_600)
    pipe.hset(f"{ns}:handoff:web:u9", mapping={"state": "human", "since": 1_800_000_000})
    pipe.expire(f"{ns}:handoff:web:u9", 43_200)
    # Neighbours that must be neither backed up nor touched.
    pipe.set(f"{ns}x:memory:web:u1", "other deployment")
    pipe.set(f"{ns}-other:stats:total", "other deployment")
    pipe.execute()


def snapshot(client: redis.Redis, ns: str) -> Snapshot:
    """Type, value and TTL (ms) of every key of the namespace."""
    result: Snapshot = {}
    for key in client.scan_iter(match=f"{ns}:*", count=500):
        raw_kind = client.type(key)
        kind = raw_kind.decode() if isinstance(raw_kind, bytes) else str(raw_kind)
        value: Any
        if kind == "list":
            value = client.lrange(key, 0, -1)
        elif kind == "hash":
            value = client.hgetall(key)
        elif kind == "zset":
            value = client.zrange(key, 0, -1, withscores=True)
        elif kind == "string":
            value = client.get(key)
        else:  # pragma: no cover - seed() writes only the types above
            value = client.dump(key)
        result[key] = (kind, value, int(client.pttl(key)))
    return result


def delete_namespace(client: redis.Redis, ns: str) -> None:
    keys = list(client.scan_iter(match=f"{ns}:*", count=500))
    if keys:
        client.delete(*keys)
    assert not list(client.scan_iter(match=f"{ns}:*"))


def run(
    script: Path, *args: str, env: dict[str, str] | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "PYTHON": sys.executable, **(env or {})}
    proc = subprocess.run(
        ["bash", str(script), *args], capture_output=True, text=True, env=full_env, timeout=120, check=False
    )
    if check and proc.returncode != 0:
        pytest.fail(f"{script.name} {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def backup_url(ns: str, output: Path, *extra: str) -> Path:
    proc = run(
        BACKUP_SH, "--target", "url", "--redis-url", REDIS_URL, "--namespace", ns, "--output", str(output), *extra
    )
    return Path(proc.stdout.strip().splitlines()[-1])


def restore_url(backup: Path, *extra: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run(RESTORE_SH, "--target", "url", "--redis-url", REDIS_URL, "--yes", *extra, str(backup), check=check)


def assert_restored(before: Snapshot, after: Snapshot, elapsed_ms: int) -> None:
    assert set(after) == set(before), "the same keys are back"
    for key, (kind, value, ttl) in before.items():
        kind_after, value_after, ttl_after = after[key]
        assert (kind_after, value_after) == (kind, value), key
        if ttl == -1:
            assert ttl_after == -1, f"{key!r} had no expiry and must not get one"
        else:
            assert 0 < ttl_after <= ttl, f"{key!r} keeps its expiry ({ttl_after} ms, was {ttl} ms)"
            assert ttl_after >= ttl - elapsed_ms - 2_000, f"{key!r} expiry kept, not reset or shortened"


def test_round_trip_url_target(client: redis.Redis, namespace: str, tmp_path: Path) -> None:
    seed(client, namespace)
    before = snapshot(client, namespace)
    assert len(before) == 10
    env_file = tmp_path / "prod.env"
    env_file.write_text("ATENDIMENTO_NAMESPACE=" + namespace + "\nADMIN_TOKEN=placeholder\n")
    started = time.monotonic()

    backup = backup_url(namespace, tmp_path / "backups", "--env-file", str(env_file))

    assert backup.parent == tmp_path / "backups"
    assert {p.name for p in backup.iterdir()} == {"redis-keys.jsonl.gz", "MANIFEST", "SHA256SUMS", "config"}
    assert (backup / "config" / "prod.env").read_text() == env_file.read_text()
    assert oct(backup.stat().st_mode & 0o777) == oct(0o700), "backups hold secrets: owner only"
    lines = gzip.decompress((backup / "redis-keys.jsonl.gz").read_bytes()).decode().splitlines()
    header, footer = json.loads(lines[0]), json.loads(lines[-1])
    assert header["namespace"] == namespace
    assert footer == {"end": True, "keys": 10}
    assert "other deployment" not in "".join(lines)
    assert "target=url" in (backup / "MANIFEST").read_text()

    # Disaster: the namespace is wiped, and the neighbour changes meanwhile.
    delete_namespace(client, namespace)
    client.set(f"{namespace}x:memory:web:u1", "changed after the backup")

    proc = restore_url(backup)

    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary == {"namespace": namespace, "restored": 10, "expired": 0, "kept_existing": 0, "errors": 0}
    elapsed_ms = int((time.monotonic() - started) * 1000)
    assert_restored(before, snapshot(client, namespace), elapsed_ms)
    assert client.get(f"{namespace}x:memory:web:u1") == b"changed after the backup"
    assert client.get(f"{namespace}-other:stats:total") == b"other deployment"


def test_restore_replaces_by_default_and_keeps_with_no_replace(
    client: redis.Redis, namespace: str, tmp_path: Path
) -> None:
    seed(client, namespace)
    backup = backup_url(namespace, tmp_path)
    key = f"{namespace}:stats:total"

    client.hset(key, "messages", 9999)
    restore_url(backup)
    assert client.hget(key, "messages") == b"1234", "the backup's version wins by default (RESTORE ... REPLACE)"

    client.hset(key, "messages", 9999)
    proc = restore_url(backup, "--no-replace")
    assert client.hget(key, "messages") == b"9999"
    assert json.loads(proc.stdout.strip().splitlines()[-1])["kept_existing"] == 10


def test_expired_keys_are_skipped_unless_relative_ttls(client: redis.Redis, namespace: str, tmp_path: Path) -> None:
    short, long = f"{namespace}:msg:short", f"{namespace}:msg:long"
    client.set(short, "1", px=1_200)
    client.set(long, "1", ex=600)
    backup = backup_url(namespace, tmp_path)
    deadline = time.monotonic() + 10
    while client.exists(short):  # until the original expiry has passed
        assert time.monotonic() < deadline, "the short key never expired"
        time.sleep(0.05)
    delete_namespace(client, namespace)

    summary = json.loads(restore_url(backup).stdout.strip().splitlines()[-1])
    assert (summary["restored"], summary["expired"]) == (1, 1)
    assert client.exists(short) == 0, "a key past its original expiry stays gone"
    assert 0 < int(client.pttl(long)) <= 600_000

    delete_namespace(client, namespace)
    restore_url(backup, "--ttl-mode", "relative")
    assert 0 < int(client.pttl(short)) <= 1_200, "relative mode gives the key back the TTL it had"


def test_damaged_or_foreign_backups_are_refused(client: redis.Redis, namespace: str, tmp_path: Path) -> None:
    seed(client, namespace)
    backup = backup_url(namespace, tmp_path)

    other = restore_url(backup, "--namespace", "someone-else", check=False)
    assert other.returncode != 0
    assert f"holds namespace '{namespace}'" in other.stderr

    data = backup / "redis-keys.jsonl.gz"
    lines = gzip.decompress(data.read_bytes()).decode().splitlines(keepends=True)
    data.write_bytes(gzip.compress("".join(lines[:-3]).encode()))
    damaged = restore_url(backup, check=False)
    assert damaged.returncode != 0
    assert "checksums do not match" in damaged.stderr

    # Without checksums, the helper itself notices the missing end marker.
    (backup / "SHA256SUMS").unlink()
    truncated = restore_url(backup, check=False)
    assert truncated.returncode != 0
    assert "truncated" in truncated.stderr


def test_encrypted_backup_round_trip(client: redis.Redis, namespace: str, tmp_path: Path) -> None:
    gpg = shutil.which("gpg")
    if not gpg:
        pytest.skip("gpg not installed")
    home = tmp_path / "gnupg"
    home.mkdir(mode=0o700)
    env = {"GNUPGHOME": str(home)}
    recipient = "backup-test@example.invalid"
    try:
        subprocess.run(
            [
                gpg,
                "--batch",
                "--quiet",
                "--passphrase",
                "",
                "--quick-gen-key",
                recipient,
                "default",
                "default",
                "never",
            ],
            env={**os.environ, **env},
            check=True,
            capture_output=True,
            timeout=60,
        )
        seed(client, namespace)
        before = snapshot(client, namespace)
        started = time.monotonic()
        output = tmp_path / "backups"
        proc = run(
            BACKUP_SH, "--target", "url", "--redis-url", REDIS_URL, "--namespace", namespace,
            "--output", str(output), "--gpg-recipient", recipient, env=env,
        )  # fmt: skip
        encrypted = Path(proc.stdout.strip().splitlines()[-1])
        assert encrypted.name.endswith(".tar.gpg")
        assert [p.name for p in output.iterdir()] == [encrypted.name], "no plaintext copy is left behind"
        assert b"memory" not in encrypted.read_bytes()

        delete_namespace(client, namespace)
        run(RESTORE_SH, "--target", "url", "--redis-url", REDIS_URL, "--yes", str(encrypted), env=env)
        assert_restored(before, snapshot(client, namespace), int((time.monotonic() - started) * 1000))
    finally:
        if shutil.which("gpgconf"):
            subprocess.run(["gpgconf", "--kill", "all"], env={**os.environ, **env}, check=False, timeout=30)


def test_confirmation_is_required_without_yes(namespace: str, client: redis.Redis, tmp_path: Path) -> None:
    seed(client, namespace)
    backup = backup_url(namespace, tmp_path)
    proc = subprocess.run(
        ["bash", str(RESTORE_SH), "--target", "url", "--redis-url", REDIS_URL, str(backup)],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "PYTHON": sys.executable},
        timeout=60,
        check=False,
    )
    assert proc.returncode != 0
    assert "--yes" in proc.stderr


def test_bad_arguments(tmp_path: Path) -> None:
    for script, args in (
        (BACKUP_SH, ["--target", "swarm"]),
        (BACKUP_SH, ["--retention-days", "soon"]),
        (RESTORE_SH, ["--target", "url"]),
        (RESTORE_SH, ["--ttl-mode", "forever", str(tmp_path)]),
    ):
        proc = run(script, *args, check=False)
        assert proc.returncode != 0, (script.name, args)
    help_text = run(BACKUP_SH, "--help").stdout
    assert "--target" in help_text and "compose" in help_text and "k8s" in help_text


# ---- compose and Kubernetes targets through stand-in docker/kubectl ---------------------------

FAKE_TOOL = """\
#!{python}
# Stand-in for `{name}`: logs its arguments and performs `exec` into the bot's image locally.
import json, os, subprocess, sys

args = sys.argv[1:]
with open(os.environ["FAKE_LOG"], "a") as log:
    log.write(json.dumps(["{name}", *args]) + "\\n")

def run_in_image(command):
    if command[:1] == ["python"]:
        env = dict(os.environ, REDIS_URL=os.environ["FAKE_REDIS_URL"],
                   ATENDIMENTO_NAMESPACE=os.environ["FAKE_NAMESPACE"])
        sys.exit(subprocess.call([sys.executable, *command[1:]], env=env))
    if "export_definitions" in command:
        print(json.dumps({{"rabbit_version": "4.1.0", "users": [], "queues": []}}))
        sys.exit(0)
    sys.exit("fake {name}: unexpected command " + repr(command))

if "{name}" == "docker":
    assert args[0] == "compose" and args[1] == "-f", args
    rest = args[args.index("exec") + 1:]
    assert rest[0] == "-T", "compose exec needs -T to stream binary-safe stdin/stdout"
    service, command = rest[1], rest[2:]
    assert service in ("monitor", "rabbitmq"), service
    run_in_image(command)
else:
    assert args[0] == "-n", args
    verb = args[2]
    if verb == "exec":
        target = args[args.index("exec") + 1:]
        if target[0] == "-i":
            target = target[1:]
        assert target[0] in ("deploy/atendimento-monitor", "atendimento-rabbitmq-server-0"), target
        run_in_image(target[target.index("--") + 1:])
    elif verb == "get":
        item = {{"apiVersion": "v1", "kind": "ConfigMap",
                 "metadata": {{"name": "atendimento-config-abc", "namespace": args[1], "uid": "u-1",
                              "resourceVersion": "42", "managedFields": [{{}}],
                              "annotations": {{"kubectl.kubernetes.io/last-applied-configuration": "{{}}"}}}},
                 "data": {{"LOG_LEVEL": "INFO"}}}}
        print(json.dumps({{"apiVersion": "v1", "kind": "List", "items": [item]}}))
    else:
        sys.exit("fake kubectl: unexpected " + repr(args))
"""


@pytest.fixture
def fake_tools(tmp_path: Path, namespace: str) -> Iterator[tuple[dict[str, str], Path]]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("docker", "kubectl"):
        tool = bin_dir / name
        tool.write_text(textwrap.dedent(FAKE_TOOL).format(python=sys.executable, name=name))
        tool.chmod(0o755)
    log = tmp_path / "calls.jsonl"
    env = {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "FAKE_LOG": str(log),
        "FAKE_REDIS_URL": REDIS_URL,
        "FAKE_NAMESPACE": namespace,
    }
    yield env, log


def calls(log: Path) -> list[list[str]]:
    return [json.loads(line) for line in log.read_text().splitlines()]


@pytest.mark.parametrize("target", ["compose", "k8s"])
def test_round_trip_compose_and_k8s_targets(
    target: str, client: redis.Redis, namespace: str, tmp_path: Path, fake_tools: tuple[dict[str, str], Path]
) -> None:
    env, log = fake_tools
    seed(client, namespace)
    before = snapshot(client, namespace)
    started = time.monotonic()

    # No --namespace: inside the image the helper takes ATENDIMENTO_NAMESPACE from the service's env.
    proc = run(BACKUP_SH, "--target", target, "--output", str(tmp_path / "b"), env=env)
    backup = Path(proc.stdout.strip().splitlines()[-1])

    names = {p.name for p in backup.iterdir()}
    assert {"redis-keys.jsonl.gz", "MANIFEST", "SHA256SUMS", "rabbitmq-definitions.json"} <= names
    assert json.loads((backup / "rabbitmq-definitions.json").read_text())["rabbit_version"] == "4.1.0"
    if target == "compose":
        listing = subprocess.run(
            ["tar", "-tzf", str(backup / "config.tar.gz")], capture_output=True, text=True, check=True
        ).stdout.split()
        assert "docker-compose.yml" in listing
        assert any(name.startswith("deploy/nginx") for name in listing)
        assert any(name.startswith("deploy/redis") for name in listing)
    else:
        objects = json.loads((backup / "k8s-objects.json").read_text())
        metadata = objects["items"][0]["metadata"]
        assert objects["kind"] == "List"
        assert not {"uid", "resourceVersion", "managedFields", "annotations"} & set(metadata), metadata

    delete_namespace(client, namespace)
    run(RESTORE_SH, "--target", target, "--yes", str(backup), env=env)

    assert_restored(before, snapshot(client, namespace), int((time.monotonic() - started) * 1000))
    issued = calls(log)
    if target == "compose":
        assert any(c[:2] == ["docker", "compose"] and "monitor" in c and "python" in c for c in issued)
    else:
        exec_calls = [c for c in issued if c[0] == "kubectl" and "exec" in c]
        assert all(c[1:3] == ["-n", "atendimento"] for c in exec_calls)
        assert any("deploy/atendimento-monitor" in c for c in exec_calls)


def test_helper_is_lint_clean_python() -> None:
    """The helper runs as `python -c` inside the image: it must compile on its own."""
    compile(HELPER.read_text(), str(HELPER), "exec")


@pytest.mark.skipif(not shutil.which("redis-server"), reason="needs redis-server for a private Sentinel set")
async def test_inside_a_sentinel_deployment_the_helper_works_on_the_primary(tmp_path: Path) -> None:
    """In Kubernetes (and the compose `ha` profile) REDIS_URL names the headless Service of every
    Redis node, replicas included, and REDIS_SENTINELS the sentinels: the helper the compose and k8s
    targets run in the monitor must ask the sentinels for the primary, as the services do, or a
    restore that lands on a replica fails (READONLY) and a dump may read a lagging copy."""
    from tests.support import eventually
    from tests.support.ha import SentinelRedis

    ns = f"bk{uuid.uuid4().hex[:10]}"
    nodes = await SentinelRedis(tmp_path / "redis").start()
    try:
        primary_port = await nodes.primary_port()
        replica = next(server for server in nodes.servers if server.port != primary_port)
        primary = redis.Redis(port=primary_port)

        async def takes_writes() -> bool:  # min-replicas-to-write: once a replica is counted in sync
            try:
                return bool(primary.set(f"{ns}:probe", "1"))
            except redis.RedisError:
                return False

        await eventually(takes_writes, timeout=20, what="the primary takes writes")
        primary.delete(f"{ns}:probe")
        seed(primary, ns)
        before = snapshot(primary, ns)
        env = {
            **os.environ,
            "REDIS_URL": f"redis://127.0.0.1:{replica.port}/0",  # a node that is not the primary
            "REDIS_SENTINELS": nodes.sentinel_setting,
            "REDIS_SENTINEL_SERVICE": "mymaster",
            "ATENDIMENTO_NAMESPACE": ns,
        }

        def helper(*args: str, stdin: str = "") -> str:
            proc = subprocess.run(
                [sys.executable, str(HELPER), *args], input=stdin, capture_output=True, text=True, env=env, timeout=60
            )
            assert proc.returncode == 0, proc.stderr
            return proc.stdout

        dumped = helper("dump")
        delete_namespace(primary, ns)
        started = time.monotonic()
        helper("restore", stdin=dumped)
        assert_restored(before, snapshot(primary, ns), int((time.monotonic() - started) * 1000))
        primary.close()
    finally:
        nodes.stop()
