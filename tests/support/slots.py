"""Redis Cluster's key slots, computed as the cluster does (CRC16-XMODEM of the key, or of its hash
tag, modulo 16384), and the keys a command sent to Redis touches."""

from __future__ import annotations

SLOTS = 16384


def crc16(data: bytes) -> int:
    """CRC16-CCITT (XMODEM): polynomial 0x1021, initial value 0, as in Redis's crc16.c."""
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def key_slot(key: str) -> int:
    """The slot of `key`: only the part between the first `{` and the next `}` counts, when that
    part is not empty (the cluster specification's hash tags)."""
    raw = key.encode()
    start = raw.find(b"{")
    if start != -1:
        end = raw.find(b"}", start + 1)
        if end > start + 1:
            raw = raw[start + 1 : end]
    return crc16(raw) % SLOTS


# Commands whose every argument after the name is a key; and those with a key count first.
ALL_KEYS = frozenset({"MGET", "DEL", "UNLINK", "EXISTS", "TOUCH", "WATCH"})
NUMKEYS = frozenset({"EVAL", "EVALSHA", "EVAL_RO", "EVALSHA_RO", "FCALL", "FCALL_RO"})


def command_keys(words: list[str]) -> list[str]:
    """The keys of one command as MONITOR shows it (name first); [] for single-key commands."""
    name = words[0].upper()
    if name in ALL_KEYS:
        return words[1:]
    if name in NUMKEYS:
        return words[3 : 3 + int(words[2])]
    if name == "MSET":
        return words[1::2]
    return []
