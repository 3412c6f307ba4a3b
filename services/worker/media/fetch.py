"""Downloading what a customer sent, from the channel that holds it, within MEDIA_MAX_BYTES.

- WhatsApp: `GET {WHATSAPP_API_BASE}/{media_id}` gives the file's short-lived `url` (and its size
  and type), then `GET url`; both with the access token.
- Telegram: `getFile` gives the `file_path`, then `GET {TELEGRAM_API_BASE}/file/bot<token>/<path>`.

Only where the platform serves media (hosts.py): the WhatsApp `url` must be on the API base's
origin or HTTPS on an allowed host with public addresses, and gets the token only when it is
Meta's; a Telegram `file_path` is a relative path of plain segments (no `..`, no scheme, no
query). Redirects are never followed: a 3xx is a failed download.

The size is checked against what the platform declares and again while the bytes stream in, so a
file that lies about its size is cut at the limit. The bytes live in memory until the reply is
generated; the URLs (Telegram's carries the bot token) are never logged.
"""

from __future__ import annotations

import mimetypes
import re
from dataclasses import dataclass
from typing import Any

import aiohttp

from shared.messages import Attachment, InboundMessage
from shared.settings import Settings

from .hosts import ForbiddenAddress, MediaHosts, NotAllowed

CHUNK_BYTES = 64 * 1024
# What Telegram's file paths look like ("voice/file_12.oga"): plain segments, nothing to climb with.
TELEGRAM_PATH_RE = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}(/[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}){0,7}$")
GENERIC_TYPES = frozenset({"", "application/octet-stream", "binary/octet-stream"})


def _file_types() -> mimetypes.MimeTypes:
    """Types by file name, the same on every machine: Python's own table (all a slim container
    image has, without /etc/mime.types), and the names channels give audio that it lacks
    (Telegram names voice notes `.oga` and serves every file as octet-stream)."""
    types = mimetypes.MimeTypes(filenames=())
    for extension, kind in ((".oga", "audio/ogg"), (".ogg", "audio/ogg"), (".m4a", "audio/mp4")):
        types.add_type(kind, extension)
    return types


FILE_TYPES = _file_types()


def type_by_name(name: str) -> str:
    """The media type a file name says, or "" when it says none known."""
    return FILE_TYPES.guess_type(name)[0] or ""


class MediaError(Exception):
    """The file could not be had; `reason` picks the polite reply."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class TooLarge(MediaError):
    def __init__(self, size: int, limit: int) -> None:
        super().__init__("too_large", f"media of {size} bytes is over MEDIA_MAX_BYTES={limit}")


@dataclass(frozen=True, slots=True)
class Fetched:
    data: bytes
    mime_type: str  # the file's type: the download's own, else what the channel declared


@dataclass(frozen=True, slots=True)
class MediaFetcher:
    session: aiohttp.ClientSession  # hosts.download_session: its resolver refuses non-public addresses
    settings: Settings
    hosts: MediaHosts

    async def fetch(self, message: InboundMessage, attachment: Attachment) -> Fetched:
        limit = self.settings.media_max_bytes
        if attachment.size > limit:
            raise TooLarge(attachment.size, limit)
        timeout = aiohttp.ClientTimeout(total=self.settings.media_timeout_s)
        try:
            if message.channel == "whatsapp":
                return await self._whatsapp(attachment, limit, timeout)
            if message.channel == "telegram":
                return await self._telegram(attachment, limit, timeout)
        except NotAllowed as exc:
            raise MediaError("unavailable", str(exc)) from None
        except (aiohttp.ClientError, TimeoutError, ForbiddenAddress) as exc:
            raise MediaError("unavailable", f"media download failed: {type(exc).__name__}") from None
        raise MediaError("unavailable", f"no media download on the {message.channel} channel")

    async def _whatsapp(self, attachment: Attachment, limit: int, timeout: aiohttp.ClientTimeout) -> Fetched:
        settings = self.settings
        auth = {"Authorization": f"Bearer {settings.whatsapp_access_token}"}
        info_url = f"{settings.whatsapp_api_base.rstrip('/')}/{attachment.media_id}"
        async with self.session.get(info_url, headers=auth, timeout=timeout, allow_redirects=False) as response:
            info = await _json(response, "WhatsApp media info")
        raw = info.get("url")
        if not isinstance(raw, str) or not raw:
            raise MediaError("unavailable", "WhatsApp media info has no url")
        url = self.hosts.check(raw)
        _check_declared(info.get("file_size"), limit)
        declared = str(info.get("mime_type") or attachment.mime_type)
        headers = auth if self.hosts.gets_token(url) else {}
        async with self.session.get(url, headers=headers, timeout=timeout, allow_redirects=False) as response:
            data = await _read(response, limit, "WhatsApp media")
            return Fetched(data, _type_of(response.headers.get("Content-Type", ""), declared, ""))

    async def _telegram(self, attachment: Attachment, limit: int, timeout: aiohttp.ClientTimeout) -> Fetched:
        base = self.settings.telegram_api_base.rstrip("/")
        token = self.settings.telegram_bot_token
        async with self.session.get(
            f"{base}/bot{token}/getFile",
            params={"file_id": attachment.media_id},
            timeout=timeout,
            allow_redirects=False,
        ) as response:
            payload = await _json(response, "Telegram getFile")
        result = payload.get("result") if payload.get("ok") else None
        path = result.get("file_path") if isinstance(result, dict) else None
        if not isinstance(path, str) or not path:
            raise MediaError("unavailable", "Telegram getFile has no file_path")
        if not TELEGRAM_PATH_RE.match(path):
            raise MediaError("unavailable", "Telegram getFile gave a file_path that is not a plain relative path")
        _check_declared(result.get("file_size") if isinstance(result, dict) else None, limit)
        url = self.hosts.check(f"{base}/file/bot{token}/{path}")
        async with self.session.get(url, timeout=timeout, allow_redirects=False) as response:
            data = await _read(response, limit, "Telegram file")
            return Fetched(data, _type_of(response.headers.get("Content-Type", ""), attachment.mime_type, path))


async def _json(response: aiohttp.ClientResponse, what: str) -> dict[str, Any]:
    if response.status != 200:
        raise MediaError("unavailable", f"{what} answered HTTP {response.status}")
    try:
        payload = await response.json(content_type=None)
    except ValueError:
        raise MediaError("unavailable", f"{what} is not JSON") from None
    if not isinstance(payload, dict):
        raise MediaError("unavailable", f"{what} is not a JSON object")
    return payload


async def _read(response: aiohttp.ClientResponse, limit: int, what: str) -> bytes:
    if response.status != 200:
        raise MediaError("unavailable", f"{what} answered HTTP {response.status}")
    if response.content_length is not None and response.content_length > limit:
        raise TooLarge(response.content_length, limit)
    chunks: list[bytes] = []
    total = 0
    async for chunk in response.content.iter_chunked(CHUNK_BYTES):
        total += len(chunk)
        if total > limit:
            raise TooLarge(total, limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _check_declared(size: object, limit: int) -> None:
    """Refuses a file declared over the limit: a number, or a string of digits (the Graph API's
    `file_size` comes as one); anything else says nothing (the download is counted anyway)."""
    if isinstance(size, str) and size.strip().isdigit():
        size = int(size)
    if isinstance(size, int) and not isinstance(size, bool) and size > limit:
        raise TooLarge(size, limit)


def _type_of(served: str, declared: str, path: str) -> str:
    """The media type, without parameters: the download's when it says one, else the channel's
    word for it, else the file name's (Telegram serves every file as octet-stream)."""
    for candidate in (served, declared, type_by_name(path) if path else ""):
        kind = candidate.split(";")[0].strip().lower()
        if kind not in GENERIC_TYPES:
            return kind
    return ""
