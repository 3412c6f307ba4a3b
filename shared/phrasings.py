"""The phrasings operators taught the bot: an overlay of extra questions for knowledge-base entries.

The knowledge-base file (KB_PATH) stays the operators' own. What they teach in the admin area ("this
question meant entry X", an accepted suggested phrasing) lives in Redis, in one hash of the
deployment's namespace: entry id -> JSON list of phrasings. Every change raises the overlay's version
in the same script, so a reader never sees a new overlay under an old version; each worker watches
that version (services/worker/kbreload.py) and rebuilds its engine from the file plus the overlay,
without a restart. `export_yaml` writes the overlay as a patch to merge into the file.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import orjson
import yaml
from redis.asyncio import Redis

from shared.names import Names

MAX_PHRASING = 300  # characters: a customer's question as the unanswered list keeps it
MAX_PER_ENTRY = 100  # beyond this, the entry's questions belong in the file

# KEYS: overlay hash, version. ARGV: entry id, phrasing, cap. 1 added, 0 already there, -1 full.
_ADD = """
local raw = redis.call('HGET', KEYS[1], ARGV[1])
local list = {}
if raw then list = cjson.decode(raw) end
for _, phrasing in ipairs(list) do
  if phrasing == ARGV[2] then return 0 end
end
if #list >= tonumber(ARGV[3]) then return -1 end
table.insert(list, ARGV[2])
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(list))
redis.call('INCR', KEYS[2])
return 1
"""

# KEYS: overlay hash, version. ARGV: entry id, phrasing. 1 removed, 0 not there.
_REMOVE = """
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return 0 end
local kept, found = {}, false
for _, phrasing in ipairs(cjson.decode(raw)) do
  if phrasing == ARGV[2] then found = true else table.insert(kept, phrasing) end
end
if not found then return 0 end
if #kept == 0 then
  redis.call('HDEL', KEYS[1], ARGV[1])
else
  redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(kept))
end
redis.call('INCR', KEYS[2])
return 1
"""


class OverlayFull(Exception):
    """The entry already has MAX_PER_ENTRY taught phrasings."""


@dataclass(frozen=True, slots=True)
class Overlay:
    version: int  # 0: nothing was ever taught
    phrasings: dict[str, tuple[str, ...]]  # entry id -> extra questions, in the order taught

    @property
    def size(self) -> int:
        return sum(len(questions) for questions in self.phrasings.values())


def clean(phrasing: str) -> str:
    """A phrasing as it is stored: single spaces, at most MAX_PHRASING characters."""
    return " ".join(phrasing.split())[:MAX_PHRASING]


async def version(redis: Redis, names: Names) -> int:
    value = await redis.get(names.kb_phrasings_version_key)
    return int(value) if value is not None else 0


async def read(redis: Redis, names: Names) -> Overlay:
    """The overlay and its version, read together (one transaction)."""
    async with redis.pipeline(transaction=True) as pipe:
        pipe.get(names.kb_phrasings_version_key)
        pipe.hgetall(names.kb_phrasings_key)
        raw_version, raw = await pipe.execute()
    phrasings = {_text(entry_id): tuple(str(p) for p in orjson.loads(value)) for entry_id, value in raw.items()}
    return Overlay(int(raw_version) if raw_version is not None else 0, dict(sorted(phrasings.items())))


async def add(redis: Redis, names: Names, entry_id: str, phrasing: str) -> bool:
    """Teach `phrasing` to the entry; False when it already has it, OverlayFull when it has enough."""
    script = redis.register_script(_ADD)
    keys = [names.kb_phrasings_key, names.kb_phrasings_version_key]
    outcome = int(await script(keys=keys, args=[entry_id, clean(phrasing), MAX_PER_ENTRY]))
    if outcome < 0:
        raise OverlayFull(f"entry {entry_id!r} already has {MAX_PER_ENTRY} taught phrasings")
    return outcome == 1


async def remove(redis: Redis, names: Names, entry_id: str, phrasing: str) -> bool:
    """Forget a taught phrasing; False when the entry did not have it."""
    script = redis.register_script(_REMOVE)
    keys = [names.kb_phrasings_key, names.kb_phrasings_version_key]
    return int(await script(keys=keys, args=[entry_id, phrasing])) == 1


def export_yaml(overlay: Overlay, namespace: str, unknown: frozenset[str], now: float | None = None) -> str:
    """The overlay as a YAML patch for the knowledge-base file, with a header saying what it is;
    `unknown`: entry ids the base in force no longer has (marked, so nobody merges them blindly)."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() if now is None else now))
    header = [
        f"# Phrasings taught in the admin area (namespace {namespace}), exported {stamp}.",
        "# A patch, not a knowledge base: append each entry's `questions` below to the `questions` of",
        "# the entry with the same id in your KB_PATH file, then remove them from the admin area's",
        "# taught phrasings (the workers apply the overlay on top of the file until then).",
    ]
    if unknown:
        header.append(f"# Not in the base in force (ignored by the workers): {', '.join(sorted(unknown))}.")
    body = {
        "entries": [{"id": entry_id, "questions": list(questions)} for entry_id, questions in overlay.phrasings.items()]
    }
    return "\n".join(header) + "\n" + yaml.safe_dump(body, allow_unicode=True, sort_keys=False, width=1000)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
