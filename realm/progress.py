"""A one-line progress bar for long CLI work, written to stderr (no dependencies)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


def format_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'."""
    if abs(n) < 1024:
        return f"{n:.0f} B"
    for unit in ("KiB", "MiB"):
        n /= 1024
        if abs(n) < 1024:
            return f"{n:.1f} {unit}"
    return f"{n / 1024:.1f} GiB"


class Progress:
    """Counts bytes of work done out of `total` and redraws one line at most ten times a second.

    Drawn only when `enabled` (default: when the stream is a terminal); `note`
    sets a short label (e.g. the current tensor) shown after the figures.
    """

    def __init__(self, total: int, desc: str, *, stream: TextIO | None = None,
                 enabled: bool | None = None, width: int = 30):
        self.total = max(int(total), 0)
        self.desc = desc
        self.stream = stream if stream is not None else sys.stderr
        if enabled is None:
            isatty = getattr(self.stream, "isatty", None)
            enabled = bool(isatty and isatty())
        self.enabled = enabled
        self.width = width
        self.done = 0
        self.note = ""
        self._start = time.monotonic()
        self._last_draw = 0.0

    def update(self, n: int, note: str | None = None) -> None:
        self.done += n
        if note is not None:
            self.note = note
        now = time.monotonic()
        if self.enabled and (now - self._last_draw >= 0.1 or self.done >= self.total):
            self._draw(now)

    def _draw(self, now: float) -> None:
        self._last_draw = now
        frac = min(self.done / self.total, 1.0) if self.total else 1.0
        filled = int(frac * self.width)
        rate = self.done / max(now - self._start, 1e-9)
        line = (f"\r{self.desc} {frac:4.0%} |{'#' * filled}{' ' * (self.width - filled)}| "
                f"{format_bytes(self.done)}/{format_bytes(self.total)} {format_bytes(rate)}/s {self.note}")
        self.stream.write(line[:160].ljust(80))
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self._draw(time.monotonic())
            self.stream.write("\n")
            self.stream.flush()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
