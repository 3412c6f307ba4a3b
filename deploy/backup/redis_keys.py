"""Back up and restore every Redis key of one ATENDIMENTO_NAMESPACE (used by scripts/backup.sh
and scripts/restore.sh).

    python redis_keys.py dump    [--redis-url URL] [--namespace NS]            > keys.jsonl
    python redis_keys.py restore [--redis-url URL] [--namespace NS] [--no-replace]
                                 [--ttl-mode absolute|relative]                < keys.jsonl
    python redis_keys.py k8s-clean < kubectl-get-output.json > applyable.json
    python redis_keys.py hash-tag [--redis-url URL] [--namespace NS]

`hash-tag` moves the keys of a deployment made before keys carried their namespace as a Redis
Cluster hash tag (`NS:x` becomes `NS:{NS}:x`, TTLs kept; run it once, with the services stopped,
after upgrading; a backup taken before the upgrade restores the old names, run it after that too).

Key names are never hard-coded: `dump` walks `{namespace}:*` with SCAN and saves each key's
DUMP payload (Redis' own serialisation: lists, hashes, sorted sets... all the same) with its
expiry; `restore` puts them back with RESTORE ... REPLACE. Keys of other namespaces sharing the
Redis are neither read nor touched.

The stream is JSON lines: a header, one line per key, and a footer with the count (a truncated
backup is detected). It only needs redis-py, so it runs on the operator's machine (`--target
url`) or inside the bot's image through `docker compose exec` / `kubectl exec`, which is how the
shell scripts use it: defaults come from the process environment (REDIS_URL,
ATENDIMENTO_NAMESPACE), i.e. from the same settings the services use. With REDIS_SENTINELS set and
no --redis-url, it works on the primary the sentinels name (REDIS_SENTINEL_SERVICE; REDIS_URL then
gives only the user, password and database), as the services do: REDIS_URL's host may be any node
of the set, a replica that refuses RESTORE or lags behind the primary.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, TextIO, cast

FORMAT = "ia-atendimento-bot/redis-keys"
VERSION = 1
BATCH = 500


@dataclass(frozen=True)
class Target:
    """Where the keys are: `url`, or, with `sentinels`, the primary they name for `service` (`url`
    then gives only the user, password and database)."""

    url: str
    sentinels: tuple[tuple[str, int], ...] = ()
    service: str = "mymaster"

    @classmethod
    def of(cls, redis_url: str | None) -> Target:
        """--redis-url when given; else REDIS_URL, behind REDIS_SENTINELS (and REDIS_SENTINEL_SERVICE)
        when those are set, as the services read them."""
        if redis_url is not None:
            return cls(redis_url)
        url = os.environ.get("REDIS_URL", "").strip() or "redis://localhost:6379/0"
        service = os.environ.get("REDIS_SENTINEL_SERVICE", "").strip() or "mymaster"
        return cls(url, _sentinel_hosts(os.environ.get("REDIS_SENTINELS", "")), service)


def _sentinel_hosts(raw: str) -> tuple[tuple[str, int], ...]:
    hosts = []
    for entry in (item.strip() for item in raw.split(",")):
        if entry:
            host, _, port = entry.rpartition(":")
            hosts.append((host.strip("[]"), int(port)))
    return tuple(hosts)


def _redis(target: Target) -> Any:
    try:
        import redis
        from redis.connection import parse_url
        from redis.sentinel import Sentinel
    except ImportError:  # pragma: no cover - depends on the interpreter chosen by the scripts
        sys.exit("redis_keys: the Python package 'redis' is missing (use the project's .venv/bin/python)")
    url = target.url
    if not target.sentinels:
        return redis.Redis.from_url(url, decode_responses=False, socket_timeout=30)
    parsed = parse_url(url)
    credentials = {key: parsed[key] for key in ("username", "password", "db") if parsed.get(key) is not None}
    tls: dict[str, Any] = {}
    if url.startswith("rediss://"):
        tls = {"ssl": True, "ssl_cert_reqs": "required"}
        for option, variable in (
            ("ssl_ca_certs", "REDIS_CA_FILE"),
            ("ssl_certfile", "REDIS_CERT_FILE"),
            ("ssl_keyfile", "REDIS_KEY_FILE"),
        ):
            if os.environ.get(variable, "").strip():
                tls[option] = os.environ[variable].strip()
    sentinel = Sentinel(list(target.sentinels), sentinel_kwargs={"socket_timeout": 5, **tls})
    return sentinel.master_for(
        target.service, redis_class=redis.Redis, decode_responses=False, socket_timeout=30, **credentials, **tls
    )


def _now_ms() -> int:
    return int(time.time() * 1000)


def _escape_glob(text: str) -> str:
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def dump(target: Target, namespace: str, out: TextIO) -> int:
    client = _redis(target)
    info = cast("dict[str, Any]", client.info("server"))
    pattern = _escape_glob(namespace) + ":*"
    header = {
        "format": FORMAT,
        "version": VERSION,
        "namespace": namespace,
        "created_ms": _now_ms(),
        "redis_version": str(info.get("redis_version", "")),
    }
    out.write(json.dumps(header) + "\n")
    count = 0
    seen: set[bytes] = set()
    batch: list[bytes] = []

    def flush() -> None:
        nonlocal count
        if not batch:
            return
        pipe = client.pipeline(transaction=False)
        for key in batch:
            pipe.dump(key)
            pipe.pttl(key)
        results = pipe.execute()
        taken_ms = _now_ms()
        for index, key in enumerate(batch):
            payload, pttl = results[2 * index], int(results[2 * index + 1])
            if payload is None or pttl == -2:  # expired or deleted since SCAN returned it
                continue
            record = {
                "k": _b64(key),
                "d": _b64(payload),
                "p": pttl if pttl >= 0 else -1,
                "x": taken_ms + pttl if pttl >= 0 else None,
            }
            out.write(json.dumps(record) + "\n")
            count += 1
        batch.clear()

    for key in client.scan_iter(match=pattern, count=BATCH):
        if key in seen:  # SCAN may return a key more than once
            continue
        seen.add(key)
        batch.append(key)
        if len(batch) >= BATCH:
            flush()
    flush()
    out.write(json.dumps({"end": True, "keys": count}) + "\n")
    out.flush()
    print(f"redis_keys: dumped {count} keys of namespace {namespace!r}", file=sys.stderr)
    return 0


def _records(stream: TextIO) -> Iterator[dict[str, Any]]:
    for number, line in enumerate(stream, start=1):
        line = line.strip()
        if not line:
            continue
        try:
            yield cast("dict[str, Any]", json.loads(line))
        except json.JSONDecodeError as exc:
            raise SystemExit(f"redis_keys: line {number} of the backup is not JSON ({exc})") from None


def restore(target: Target, namespace: str | None, replace: bool, ttl_mode: str, stream: TextIO) -> int:
    records = _records(stream)
    header = next(records, None)
    if not header or header.get("format") != FORMAT:
        raise SystemExit("redis_keys: not a redis_keys backup (missing header)")
    if int(header.get("version", 0)) > VERSION:
        raise SystemExit(f"redis_keys: backup format version {header['version']} is newer than this tool")
    source_ns = str(header["namespace"])
    if namespace is not None and namespace != source_ns:
        raise SystemExit(
            f"redis_keys: the backup holds namespace {source_ns!r}, not {namespace!r}; "
            "restore it with --namespace " + source_ns
        )
    env_ns = os.environ.get("ATENDIMENTO_NAMESPACE", "").strip()
    if env_ns and env_ns != source_ns:
        print(
            f"redis_keys: warning: restoring namespace {source_ns!r}, but this environment's "
            f"ATENDIMENTO_NAMESPACE is {env_ns!r}",
            file=sys.stderr,
        )
    prefix = (source_ns + ":").encode()
    client = _redis(target)
    stats = {"restored": 0, "expired": 0, "kept_existing": 0, "errors": 0}
    footer: dict[str, Any] | None = None
    pending: list[tuple[bytes, int, bytes, bool]] = []

    def flush() -> None:
        if not pending:
            return
        pipe = client.pipeline(transaction=False)
        for key, ttl, payload, absolute in pending:
            pipe.restore(key, ttl, payload, replace=replace, absttl=absolute)
        for (key, _, _, _), result in zip(pending, pipe.execute(raise_on_error=False), strict=True):
            if isinstance(result, Exception):
                if "BUSYKEY" in str(result):
                    stats["kept_existing"] += 1
                else:
                    stats["errors"] += 1
                    print(f"redis_keys: {key!r}: {result}", file=sys.stderr)
            else:
                stats["restored"] += 1
        pending.clear()

    for record in records:
        if record.get("end"):
            footer = record
            break
        key = base64.b64decode(record["k"])
        if not key.startswith(prefix):
            raise SystemExit(f"redis_keys: key {key!r} is outside namespace {source_ns!r}; refusing")
        payload = base64.b64decode(record["d"])
        if record.get("x") is None:
            ttl, absolute = 0, False
        elif ttl_mode == "absolute":
            ttl, absolute = int(record["x"]), True
            if ttl <= _now_ms():
                stats["expired"] += 1
                continue
        else:
            ttl, absolute = max(int(record["p"]), 1), False
        pending.append((key, ttl, payload, absolute))
        if len(pending) >= BATCH:
            flush()
    flush()
    if footer is None:
        print("redis_keys: the backup has no end marker: it was truncated; restored what it holds", file=sys.stderr)
        stats["errors"] += 1
    elif int(footer.get("keys", -1)) != stats["restored"] + stats["expired"] + stats["kept_existing"] + stats["errors"]:
        print("redis_keys: key count differs from the backup's footer", file=sys.stderr)
        stats["errors"] += 1
    print(json.dumps({"namespace": source_ns, **stats}))
    return 1 if stats["errors"] else 0


_SERVER_FIELDS = ("uid", "resourceVersion", "creationTimestamp", "generation", "managedFields", "selfLink")


def k8s_clean(stream: TextIO, out: TextIO) -> int:
    """Strip server-set fields from `kubectl get -o json` output so `kubectl apply -f` accepts it."""
    document = json.load(stream)
    items = document.get("items", [document]) if isinstance(document, dict) else []
    cleaned = []
    for item in items:
        item.pop("status", None)
        metadata = item.get("metadata", {})
        for name in _SERVER_FIELDS:
            metadata.pop(name, None)
        metadata.pop("ownerReferences", None)
        annotations = metadata.get("annotations", {})
        annotations.pop("kubectl.kubernetes.io/last-applied-configuration", None)
        if not annotations:
            metadata.pop("annotations", None)
        cleaned.append(item)
    json.dump({"apiVersion": "v1", "kind": "List", "items": cleaned}, out, indent=1, sort_keys=True)
    out.write("\n")
    return 0


def hash_tag(target: Target, namespace: str) -> int:
    """Rename `NS:x` to `NS:{NS}:x` for every key of the namespace not tagged yet."""
    client = _redis(target)
    tagged = f"{namespace}:{{{namespace}}}:".encode()
    moved = 0
    for key in list(client.scan_iter(match=_escape_glob(namespace) + ":*", count=BATCH)):
        if not key.startswith(tagged):
            client.rename(key, tagged + key[len(namespace) + 1 :])
            moved += 1
    print(f"redis_keys: {moved} keys of {namespace} moved under the hash tag {{{namespace}}}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="redis_keys", description="Back up and restore the Redis keys of one ATENDIMENTO_NAMESPACE."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    default_ns = os.environ.get("ATENDIMENTO_NAMESPACE", "").strip() or "atendimento"

    p_dump = commands.add_parser("dump", help="write the namespace's keys as JSON lines to stdout")
    p_dump.add_argument("--redis-url", help="default: REDIS_URL (behind REDIS_SENTINELS when set)")
    p_dump.add_argument("--namespace", default=default_ns)

    p_restore = commands.add_parser("restore", help="restore JSON lines from stdin")
    p_restore.add_argument("--redis-url", help="default: REDIS_URL (behind REDIS_SENTINELS when set)")
    p_restore.add_argument("--namespace", default=None, help="must match the backup's (default: the backup's)")
    p_restore.add_argument("--no-replace", action="store_true", help="keep keys that already exist")
    p_restore.add_argument(
        "--ttl-mode",
        choices=("absolute", "relative"),
        default="absolute",
        help="absolute: keys expire when they would have (expired ones are skipped); "
        "relative: each key gets back the TTL it had when the backup was taken",
    )

    commands.add_parser("k8s-clean", help="make `kubectl get -o json` output re-appliable")

    p_tag = commands.add_parser("hash-tag", help="move keys made before the namespace hash tag under it")
    p_tag.add_argument("--redis-url", help="default: REDIS_URL (behind REDIS_SENTINELS when set)")
    p_tag.add_argument("--namespace", default=default_ns)

    args = parser.parse_args(argv)
    if args.command == "dump":
        return dump(Target.of(args.redis_url), args.namespace, sys.stdout)
    if args.command == "restore":
        return restore(Target.of(args.redis_url), args.namespace, not args.no_replace, args.ttl_mode, sys.stdin)
    if args.command == "hash-tag":
        return hash_tag(Target.of(args.redis_url), args.namespace)
    return k8s_clean(sys.stdin, sys.stdout)


if __name__ == "__main__":
    raise SystemExit(main())
