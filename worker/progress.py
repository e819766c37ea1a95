"""Progress of a transfer on the terminal: a bar on a TTY, plain lines otherwise."""

from __future__ import annotations

import time
from typing import TextIO

from worker.units import format_size


class ProgressDisplay:
    """Shows bytes done, rate and ETA.

    Parameters:
      stream: Where to write (usually stderr).
      interactive: Redraw one line with ``\\r`` (a terminal) or print a line every ``every``
        seconds (logs, pipes). Defaults to ``stream.isatty()``.
      every: Seconds between plain lines (default 5).
    """

    def __init__(self, stream: TextIO, interactive: bool | None = None, every: float = 5.0):
        self.stream = stream
        self.interactive = stream.isatty() if interactive is None else interactive
        self.every = every
        self._last_line = 0.0
        self._samples: list[tuple[float, int]] = []
        self._drawn = False

    def note(self, text: str) -> None:
        """Print a line of its own (a step change)."""
        self._clear()
        print(text, file=self.stream, flush=True)

    def update(self, done: int, total: int | None) -> None:
        now = time.monotonic()
        self._samples = [s for s in self._samples if now - s[0] < 10.0] + [(now, done)]
        line = self._format(done, total)
        if self.interactive:
            self.stream.write("\r" + line.ljust(78)[:120])
            self.stream.flush()
            self._drawn = True
        elif now - self._last_line >= self.every:
            self._last_line = now
            print(line, file=self.stream, flush=True)

    def close(self) -> None:
        self._clear()

    def _clear(self) -> None:
        if self._drawn:
            self.stream.write("\r" + " " * 120 + "\r")
            self.stream.flush()
            self._drawn = False

    def _rate(self) -> float:
        (t0, b0), (t1, b1) = self._samples[0], self._samples[-1]
        return (b1 - b0) / (t1 - t0) if t1 > t0 else 0.0

    def _format(self, done: int, total: int | None) -> str:
        rate = self._rate()
        if not total:
            return f"{format_size(done)} at {format_size(rate)}/s"
        fraction = min(done / total, 1.0)
        bar = "#" * int(fraction * 30)
        eta = (total - done) / rate if rate > 0 else None
        eta_text = time.strftime("%H:%M:%S", time.gmtime(eta)) if eta is not None else "--:--:--"
        return (
            f"[{bar:<30}] {fraction:6.1%} {format_size(done)} / {format_size(total)} "
            f"{format_size(rate)}/s ETA {eta_text}"
        )
