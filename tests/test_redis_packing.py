"""Commands packed by shared/redis_packing.py: the same bytes as redis-py's own packer for every kind
of argument redis-py takes, the same errors for those it refuses, and real round trips through
each client the services build (a single server, over TLS too, and the primary Sentinel names)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection, Connection, SSLConnection, UnixDomainSocketConnection
from redis.asyncio.sentinel import SentinelManagedConnection, SentinelManagedSSLConnection
from redis.exceptions import DataError
from redis.typing import EncodableT

from shared.redis_client import build_redis
from shared.redis_packing import (
    FastConnection,
    FastPacking,
    FastSSLConnection,
    FastUnixConnection,
    SentinelConnection,
    SentinelSSLConnection,
    hiredis_arguments,
)
from shared.settings import Settings
from shared.store import create_redis
from tests.support import REDIS_URL, eventually, free_port
from tests.support.ha import RedisNode
from tests.support.tls import make_test_pki, redis_serving, tls_redis

SHA = "0123456789abcdef0123456789abcdef01234567"
KEYS = [f"atendimento:{{atendimento}}:key-{i}:{uuid.UUID(int=i)}" for i in range(16)]
PAYLOAD = orjson.dumps({"reply": "Olá! O prazo de entrega é de 3 a 5 dias úteis. " * 45})
BIG = "ção" * 2500  # 7500 characters, 12500 bytes: past redis-py's 6000-byte chunking
# The worker's commit call and the gateway's admission call (shape and kinds of their arguments).
COMMIT: tuple[EncodableT, ...] = ("EVALSHA", SHA, 16, *KEYS, PAYLOAD)
ADMISSION: tuple[EncodableT, ...] = (
    "EVALSHA",
    SHA,
    3,
    *KEYS[:3],
    str(uuid.uuid4()),
    "web:u1:c1",
    10_000,
    86_400,
    1.0,
    5.0,
    20.0,
    0.5,
    10.0,
)

SAME_BYTES: list[tuple[EncodableT, ...]] = [
    COMMIT,
    ADMISSION,
    ("SET", "k", "v"),
    ("SET", "chave:ação", "olá ✓ 日本語 😀 \x00 \r\n"),
    ("SET", "k", b"\x00\xff\r\n bytes"),
    ("SET", "k", ""),
    ("SET", "k", b""),
    ("ZADD", "k", 0, -1, 1, 2**63, -(2**100), 10**4299),  # 4300 digits: Python's limit, still packed
    ("ZADD", "k", 1.0, -0.0, 0.1, 1e100, 1e-7, 1.5e16, 123456789.123456789, float("inf"), float("-inf")),
    ("ZADD", "k", float("nan")),
    ("SET", "k", memoryview(b"a view")),
    ("SET", "k", bytearray(b"an array")),
    ("RPUSH", "k", memoryview(b"x" * 7000), "y", 1, 2.5),
    ("RPUSH", "k", bytearray(b"x" * 7000), "y"),
    ("SET", "k", BIG),
    ("SET", "k", BIG.encode()),
    ("EVALSHA", SHA, 16, *KEYS, BIG.encode(), BIG, 7, 0.25),
    ("CLIENT SETINFO", "LIB-NAME", "x"),  # a name of two words is split
    ("client\tsetinfo", "lib-ver", "1"),
    ("CONFIG GET", "maxmemory"),
    (b"CONFIG GET", b"maxmemory"),
    (b"GET", "k"),
    ("JSON.SET", "k", "$", "{}"),
    ("ÉCHO", "é"),
    ("get", "k"),
]


class Text(str):
    pass


class Number(int):
    pass


class Real(float):
    pass


# Subclasses redis-py packs by its own rules (a str subclass by its text, an int's by repr).
SAME_BYTES += [("SET", Text("k"), Text("v")), ("SET", "k", Number(5)), ("SET", "k", Real(2.5)), (Text("GET"), "k")]

REFUSED: list[tuple[Any, ...]] = [
    ("SET", "k", None),
    ("SET", "k", {"a": 1}),
    ("SET", "k", ["a"]),
    ("SET", "k", True),
    ("SET", "k", False),
    ("SET", "k", object()),
    ("EVALSHA", SHA, 1, "k", None, "v", 2),
    ("SET", "k", "\ud800"),  # a lone surrogate: no UTF-8
    ("SET", "k", 10**4300),  # past Python's digit limit: its ValueError (hiredis would crash)
    (None, "k"),
    (),
]


def kinds(args: tuple[Any, ...]) -> str:
    """A test's id: the command and its arguments' types (an int past the digit limit has no repr)."""
    return " ".join([str(args[0])[:16], *(type(arg).__name__ for arg in args[1:4])]) if args else "nothing"


def stock_and_fast(**options: Any) -> tuple[Connection, FastConnection]:
    """Two connections (never connected) with the same options: redis-py's and ours."""
    return Connection(**options), FastConnection(**options)


def packed(connection: AbstractConnection, args: tuple[Any, ...]) -> bytes:
    return b"".join(bytes(piece) for piece in connection.pack_command(*args))


def outcome(connection: AbstractConnection, args: tuple[Any, ...]) -> bytes | tuple[type[Exception], str]:
    """The bytes packed, or the error raised and its message."""
    try:
        return packed(connection, args)
    except Exception as exc:
        return type(exc), str(exc)


@pytest.mark.parametrize("args", SAME_BYTES, ids=kinds)
def test_the_same_bytes_as_redis_py(args: tuple[EncodableT, ...]) -> None:
    stock, fast = stock_and_fast(decode_responses=True)
    assert packed(fast, args) == packed(stock, args)
    # The pieces too, which pack_commands joins or keeps apart around the 6000-byte cutoff.
    assert fast.pack_commands([args, ("GET", "k")]) == stock.pack_commands([args, ("GET", "k")])


def test_the_common_calls_are_packed_by_one_hiredis_call() -> None:
    for args in (COMMIT, ADMISSION, ("SET", "k", BIG), ("get", "k")):
        assert hiredis_arguments(args) is not None, args[0]
    assert FastConnection().fast_packing
    assert FastConnection(encoding="UTF8").fast_packing
    for args in (("CLIENT SETINFO", "x", "y"), ("SET", "k", memoryview(b"v")), ("SET", "k", True), (b"GET", "k")):
        assert hiredis_arguments(args) is None, args
    for encoding in ({"encoding": "latin-1"}, {"encoding": "utf-16"}, {"encoding_errors": "replace"}):
        assert not FastConnection(**encoding).fast_packing


@pytest.mark.parametrize("args", REFUSED, ids=kinds)
def test_the_same_error_for_what_redis_py_refuses(args: tuple[Any, ...]) -> None:
    stock, fast = stock_and_fast(decode_responses=True)
    assert not isinstance(outcome(stock, args), bytes)
    assert outcome(fast, args) == outcome(stock, args)


def test_bad_types_are_data_errors_naming_the_type() -> None:
    _, fast = stock_and_fast()
    bad: list[tuple[Any, str]] = [(None, "NoneType"), ({"a": 1}, "dict"), (True, "bool")]
    for value, name in bad:
        with pytest.raises(DataError, match=rf"^Invalid input of type: '{name}'\. Convert to a bytes, string, int"):
            fast.pack_command("SET", "k", value)


@pytest.mark.parametrize("options", [{"encoding": "latin-1"}, {"encoding": "utf-16"}, {"encoding_errors": "replace"}])
def test_other_encodings_are_honoured(options: dict[str, str]) -> None:
    stock, fast = stock_and_fast(**options)
    for args in (("SET", "chave", "olá"), ("SET", "k", "\ud800 é"), ("SET", "k", BIG, 5, 1.5), ("SET", "k", "日本")):
        assert outcome(fast, args) == outcome(stock, args)


def test_every_client_the_services_build_packs_fast(tmp_path: Path) -> None:
    """The class redis-py would pick for each URL and deployment, packing fast (nothing connects)."""
    sentinels = f"127.0.0.1:{free_port()}"
    expected: list[tuple[Redis, type[AbstractConnection], type[AbstractConnection]]] = [
        (create_redis("redis://127.0.0.1:6379/0"), FastConnection, Connection),
        (create_redis("rediss://127.0.0.1:6379/0"), FastSSLConnection, SSLConnection),
        (create_redis(f"unix://{tmp_path}/r.sock"), FastUnixConnection, UnixDomainSocketConnection),
        (build_redis(Settings.from_env({"REDIS_SENTINELS": sentinels})), SentinelConnection, SentinelManagedConnection),
        (
            build_redis(Settings.from_env({"REDIS_SENTINELS": sentinels, "REDIS_URL": "rediss://127.0.0.1/0"})),
            SentinelSSLConnection,
            SentinelManagedSSLConnection,
        ),
    ]
    for client, fast, stock in expected:
        pool = client.connection_pool
        assert pool.connection_class is fast
        connection = pool.make_connection()  # type: ignore[no-untyped-call]
        assert isinstance(connection, stock)
        assert isinstance(connection, FastPacking)
        assert connection.fast_packing


# Round trips -----------------------------------------------------------------------------------

ECHO = "return {KEYS[1], #KEYS, ARGV[1], #ARGV[1], ARGV[2], ARGV[3], ARGV[#ARGV]}"


async def a_connection(redis: Redis) -> AbstractConnection:
    """One of the client's connections (made by the round trip), given back to its pool."""
    pool = redis.connection_pool
    connection: AbstractConnection = await pool.get_connection()  # type: ignore[no-untyped-call]
    await pool.release(connection)
    return connection


async def round_trip(redis: Redis, prefix: str) -> None:
    """Values of every kind written and read back, scripts run alone and pipelined, a refused value."""
    keys = [f"{prefix}:{i}" for i in range(16)]
    try:
        assert await redis.set(keys[0], "olá ✓ 日本語 😀")
        assert await redis.get(keys[0]) == "olá ✓ 日本語 😀"
        await redis.set(keys[1], BIG.encode())
        assert await redis.get(keys[1]) == BIG
        await redis.set(keys[2], -(2**62))
        assert await redis.get(keys[2]) == str(-(2**62))
        await redis.set(keys[3], 0.1)
        assert await redis.get(keys[3]) == "0.1"
        await redis.set(keys[4], memoryview(b"a view"))
        await redis.set(keys[5], bytearray(b"an array"))
        assert await redis.mget(keys[4], keys[5]) == ["a view", "an array"]
        with pytest.raises(DataError):
            await redis.set(keys[6], None)  # type: ignore[arg-type]
        sha = await redis.script_load(ECHO)
        args = (PAYLOAD, 10_000, 2.5, "último")
        expected = [keys[0], 16, PAYLOAD.decode(), len(PAYLOAD), "10000", "2.5", "último"]
        assert await redis.evalsha(sha, 16, *keys, *args) == expected
        async with redis.pipeline(transaction=False) as pipe:
            for _ in range(3):
                pipe.evalsha(sha, 16, *keys, *args)
            pipe.rpush(keys[7], memoryview(BIG.encode()), "é", 3)
            pipe.lrange(keys[7], 0, -1)
            replies = await pipe.execute()
        assert replies == [expected, expected, expected, 3, [BIG, "é", "3"]]
    finally:
        await redis.delete(*keys)


async def round_trip_and_close(redis: Redis, connection_class: type[AbstractConnection]) -> None:
    """`round_trip` under a fresh prefix through a client the services build, whose connections
    must be `connection_class`; the client is closed afterwards."""
    try:
        await round_trip(redis, f"test-packing:{uuid.uuid4().hex}")
        assert isinstance(await a_connection(redis), connection_class)
    finally:
        await redis.aclose()


@pytest.mark.integration
async def test_a_round_trip_through_the_single_server_client() -> None:
    await round_trip_and_close(create_redis(REDIS_URL), FastConnection)


@pytest.fixture
async def sentinel(tmp_path: Path) -> AsyncIterator[str]:
    """A private redis-server and one sentinel naming it (REDIS_SENTINELS); the shared ones untouched."""
    server = RedisNode(tmp_path / "redis", [])
    watcher = RedisNode(tmp_path / "sentinel", [f"sentinel monitor mymaster 127.0.0.1 {server.port} 1"])
    try:
        server.start()
        watcher.start(sentinel=True)
        await eventually(server.answers, timeout=20, what="the private redis-server")
        await eventually(watcher.answers, timeout=20, what="the sentinel")
        yield f"127.0.0.1:{watcher.port}"
    finally:
        watcher.kill()
        server.kill()


@pytest.mark.integration
async def test_a_round_trip_through_the_primary_sentinel_names(sentinel: str) -> None:
    settings = Settings.from_env({"REDIS_SENTINELS": sentinel, "REDIS_URL": "redis://127.0.0.1/0"})
    await round_trip_and_close(build_redis(settings), SentinelConnection)


@pytest.mark.integration
async def test_a_round_trip_over_tls(tmp_path: Path) -> None:
    pki = await asyncio.to_thread(make_test_pki, tmp_path / "pki")
    server = tls_redis(tmp_path / "redis", pki)
    try:
        server.start()
        await redis_serving(server)
        settings = Settings.from_env(
            {
                "REDIS_URL": f"rediss://127.0.0.1:{server.port}/0",
                "REDIS_CA_FILE": str(pki.ca),
                "REDIS_CERT_FILE": str(pki.path("client.crt")),
                "REDIS_KEY_FILE": str(pki.path("client.key")),
            }
        )
        await round_trip_and_close(build_redis(settings), FastSSLConnection)
    finally:
        server.kill()
