"""Where media may be downloaded from, and who sees the WhatsApp access token (issue 26, SSRF).

The media lookup answers with a URL; the worker must not fetch whatever it names (a private
address, the metadata service, another port on this host) nor hand the token to it. A URL is
fetched when it is
  * on the origin of a configured API base (`WHATSAPP_API_BASE`, `TELEGRAM_API_BASE`: scheme, host
    and port exactly as configured). The operator chose those; this is also the one, explicit way
    tests and development use local stand-ins: an API base of `http://127.0.0.1:8123` allows that
    origin and nothing else on the machine; or
  * HTTPS on the standard port, on a host of `MEDIA_ALLOWED_HOSTS` (a leading dot: its
    subdomains), never an IP literal, and every address the name resolves to is public: not
    private, loopback, link-local, multicast or reserved. The check is made where the connection is
    made (`GuardedResolver`, the download session's resolver), so a name cannot resolve to one
    address when checked and another when used. Redirects are not followed.
The token goes to the WhatsApp API base's origin and to Meta's own media hosts (`TOKEN_HOSTS`,
lookaside.fbsbx.com is where Meta serves media, and it wants the token), never to any other host,
whatever MEDIA_ALLOWED_HOSTS says.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from shared.settings import Settings

TOKEN_HOSTS = (".fbsbx.com",)


def _origin(url: URL) -> tuple[str, str, int | None]:
    return (url.scheme, (url.host or "").lower(), url.port)


def _matches(host: str, patterns: tuple[str, ...]) -> bool:
    return any(host.endswith(pattern) if pattern.startswith(".") else host == pattern for pattern in patterns)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def is_public(address: str) -> bool:
    """A unicast address on the internet: not private, loopback, link-local, CGNAT or reserved."""
    ip = ipaddress.ip_address(address.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


class NotAllowed(Exception):
    """Media may not be fetched from this URL; the message says why (never the URL: it may carry a token)."""


@dataclass(frozen=True, slots=True)
class MediaHosts:
    trusted: frozenset[tuple[str, str, int | None]]  # origins of the configured API bases
    whatsapp: tuple[str, str, int | None]
    allowed: tuple[str, ...]

    @classmethod
    def from_settings(cls, settings: Settings) -> MediaHosts:
        bases = [URL(settings.whatsapp_api_base), URL(settings.telegram_api_base)]
        return cls(frozenset(_origin(base) for base in bases), _origin(bases[0]), settings.media_allowed_hosts)

    @property
    def trusted_hosts(self) -> frozenset[str]:
        return frozenset(host for _, host, _ in self.trusted)

    def check(self, raw: str) -> URL:
        """The URL, when media may be fetched from it; raises NotAllowed."""
        try:
            url = URL(raw)
        except (ValueError, TypeError):
            raise NotAllowed("the media URL is not a URL") from None
        if _origin(url) in self.trusted:
            return url
        host = (url.host or "").lower()
        if url.scheme != "https" or url.port != 443 or url.user is not None:
            raise NotAllowed("the media URL is not plain HTTPS on an API base or allowed host")
        if _is_ip(host) or not _matches(host, self.allowed):
            raise NotAllowed(f"the media host {host!r} is not in MEDIA_ALLOWED_HOSTS")
        return url

    def gets_token(self, url: URL) -> bool:
        """Whether the WhatsApp access token may go with a request to `url` (already checked)."""
        if _origin(url) == self.whatsapp:
            return True
        return url.scheme == "https" and _matches((url.host or "").lower(), TOKEN_HOSTS)


class ForbiddenAddress(OSError):
    """A media host resolved to an address that is not public."""


class GuardedResolver(AbstractResolver):
    """The system resolver, refusing any name (other than the API bases' own) that resolves to an
    address which is not public: the connection is made to the addresses checked here."""

    def __init__(self, trusted_hosts: frozenset[str]) -> None:
        self._inner = aiohttp.ThreadedResolver()
        self._trusted = trusted_hosts

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        if host.lower() not in self._trusted and not all(is_public(result["host"]) for result in results):
            raise ForbiddenAddress(f"the media host {host!r} resolves to an address that is not public")
        return results

    async def close(self) -> None:
        await self._inner.close()


def download_session(hosts: MediaHosts, **kwargs: Any) -> aiohttp.ClientSession:
    """The session media files are downloaded with: its connector resolves through the guard."""
    connector = aiohttp.TCPConnector(resolver=GuardedResolver(hosts.trusted_hosts))
    return aiohttp.ClientSession(connector=connector, **kwargs)
