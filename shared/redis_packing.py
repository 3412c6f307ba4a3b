"""Redis connections that pack the common command in one C call, the bytes on the wire unchanged.

redis-py's packer (redis/connection.py `HiredisRespSerializer`) spends Python time on every
argument before its one call to `hiredis.pack_command`: a pass looking for memoryviews, then a
generator through `Encoder.encode`'s isinstance chain. Every message makes such calls, in the
gateway (its admission: EVALSHA, 3 keys, 9 arguments) and in the worker (its commit: EVALSHA,
16 keys, a 2.2 KB payload). Packing the commit took 8.6 us, 1.5 us of it in hiredis; here 2.1 us.
The admission: 7.2 -> 2.1 us (1.0 in hiredis).

A command whose name is letters only and whose arguments are all exactly str, bytes, int or
float goes to `hiredis.pack_command` as it is: hiredis encodes a str as strict UTF-8 and a float
by its repr, the bytes `Encoder.encode` gives them on a connection with redis-py's default
encoding (only such a connection takes this way). An int is made a str first: `Encoder.encode`'s
repr again, but Python's, whose ValueError past the digit limit is kept (hiredis crashes there).
Anything else (memoryview, bytearray, bool, None, a subclass, a name of several words such as
'CLIENT SETINFO', another encoding) is packed by redis-py as before, its errors included.

`connection_class` names the class for the URL of a single server; Sentinel's pool takes
`SentinelConnection` or `SentinelSSLConnection` (shared/redis_client.py).
"""

from __future__ import annotations

import codecs
from typing import Any

import hiredis
from redis.asyncio.connection import (
    AbstractConnection,
    Connection,
    SSLConnection,
    UnixDomainSocketConnection,
    parse_url,
)
from redis.asyncio.sentinel import SentinelManagedConnection, SentinelManagedSSLConnection
from redis.typing import EncodableT


class FastPacking(AbstractConnection):
    """Packs the common command itself (the module's docstring says which); mixed into each class."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        encoder = self.encoder
        self.fast_packing = codecs.lookup(encoder.encoding).name == "utf-8" and encoder.encoding_errors == "strict"

    def pack_command(self, *args: EncodableT) -> list[bytes]:
        plain = hiredis_arguments(args) if self.fast_packing else None
        if plain is None:
            return super().pack_command(*args)
        return [hiredis.pack_command(plain)]  # type: ignore[arg-type]  # its stub types a 1-tuple


def hiredis_arguments(args: tuple[EncodableT, ...]) -> tuple[EncodableT, ...] | None:
    """The arguments as hiredis takes them (str, bytes, float), or None when redis-py must pack them."""
    name = args[0]
    # redis-py splits a name at whitespace ('CLIENT SETINFO' is two words); letters are no whitespace.
    if type(name) is not str or not name.isalpha():
        return None
    plain: list[EncodableT] = []
    for arg in args:
        kind = type(arg)
        if kind is int:
            plain.append(str(arg))
        elif kind is str or kind is bytes or kind is float:
            plain.append(arg)
        else:
            return None
    return tuple(plain)


class FastConnection(FastPacking, Connection):
    pass


class FastSSLConnection(FastPacking, SSLConnection):
    pass


class FastUnixConnection(FastPacking, UnixDomainSocketConnection):
    pass


class SentinelConnection(FastPacking, SentinelManagedConnection):
    pass


class SentinelSSLConnection(FastPacking, SentinelManagedSSLConnection):
    pass


# The class redis-py picks for a URL's scheme -> the same, packing fast.
_FAST: dict[type[AbstractConnection], type[AbstractConnection]] = {
    Connection: FastConnection,
    SSLConnection: FastSSLConnection,
    UnixDomainSocketConnection: FastUnixConnection,
}


def connection_class(url: str) -> type[AbstractConnection]:
    """The class for a single server's URL: the one redis-py picks for its scheme, packing fast."""
    return _FAST[parse_url(url).get("connection_class", Connection)]
