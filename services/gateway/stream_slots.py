"""Event streams per client address (MAX_STREAMS_PER_IP): each holds a connection and a
subscription for as long as it lasts, so one address may hold only so many at once (issue 26:
1,500 from one address were accepted). Counted per gateway process."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

from shared.web import Problem

RETRY_AFTER_S = 5


@dataclass(slots=True)
class StreamSlots:
    cap: int  # 0: no cap
    open: dict[str, int] = field(default_factory=dict)

    @contextlib.contextmanager
    def hold(self, address: str) -> Iterator[None]:
        """One stream of `address` for the block; 429 when it already holds `cap`."""
        count = self.open.get(address, 0)
        if self.cap and count >= self.cap:
            raise Problem(
                429,
                f"client address: at most {self.cap} event streams at once from one address (MAX_STREAMS_PER_IP)",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )
        self.open[address] = count + 1
        try:
            yield
        finally:
            left = self.open[address] - 1
            if left:
                self.open[address] = left
            else:
                del self.open[address]
