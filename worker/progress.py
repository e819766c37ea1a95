"""Progress of a transfer on the terminal: a bar on a TTY, plain lines otherwise."""

from __future__ import annotations

import time
from typing import TextIO

from worker.logs import OUTPUT_LOCK
from worker.units import format_size

#: Seconds of samples the rate is measured over.
RATE_WINDOW = 10.0
_DAY = 86400


def format_eta(seconds: float | None) -> str:
    """Return a time left as ``HH:MM:SS``, ``1d 03:04:05`` from a day on, ``>99d`` past
    99 days, and ``--:--`` when unknown (``None``, negative or not finite)."""
    if seconds is None or not 0 <= seconds < float("inf"):
        return "--:--"
    whole = round(seconds)
    days, rest = divmod(whole, _DAY)
    if days > 99:
        return ">99d"
    clock = f"{rest // 3600:02d}:{rest // 60 % 60:02d}:{rest % 60:02d}"
    return f"{days}d {clock}" if days else clock


class ProgressDisplay:
    """Shows bytes done, rate and ETA.

    Parameters:
      stream: Where to write (usually stderr).
      interactive: Redraw one line with ``\\r`` (a terminal) or print a line every ``every``
        seconds (logs, pipes). Defaults to ``stream.isatty()``.
      every: Seconds between plain lines (default 5).

    The rate is measured over the last :data:`RATE_WINDOW` seconds. A count that goes
    back (a resumed transfer starting over) or a total that changes starts a new window,
    so the rate is never negative.
    """

    def __init__(self, stream: TextIO, interactive: bool | None = None, every: float = 5.0):
        self.stream = stream
        self.interactive = stream.isatty() if interactive is None else interactive
        self.every = every
        self._last_line = 0.0
        self._samples: list[tuple[float, int]] = []
        self._total: int | None = None
        self._drawn = False

    def note(self, text: str) -> None:
        """Print a line of its own (a step change)."""
        with OUTPUT_LOCK:
            self._clear()
            print(text, file=self.stream, flush=True)

    def update(self, done: int, total: int | None) -> None:
        now = time.monotonic()
        if total != self._total or (self._samples and done < self._samples[-1][1]):
            self._samples = []
        self._total = total
        self._samples = [s for s in self._samples if now - s[0] < RATE_WINDOW] + [(now, done)]
        line = self._format(done, total)
        with OUTPUT_LOCK:  # a log line written meanwhile would be split by this one
            if self.interactive:
                self.stream.write("\r" + line.ljust(78)[:120])
                self.stream.flush()
                self._drawn = True
            elif now - self._last_line >= self.every:
                self._last_line = now
                print(line, file=self.stream, flush=True)

    def close(self) -> None:
        with OUTPUT_LOCK:
            self._clear()

    def _clear(self) -> None:
        if self._drawn:
            self.stream.write("\r" + " " * 120 + "\r")
            self.stream.flush()
            self._drawn = False

    def _rate(self) -> float | None:
        """Bytes per second over the window; None until two samples tell."""
        (t0, b0), (t1, b1) = self._samples[0], self._samples[-1]
        return (b1 - b0) / (t1 - t0) if t1 > t0 else None

    def _format(self, done: int, total: int | None) -> str:
        rate = self._rate()
        rate_text = f"{format_size(rate)}/s" if rate is not None else "-- B/s"
        if not total:
            return f"{format_size(done)} at {rate_text}"
        fraction = min(max(done / total, 0.0), 1.0)
        bar = "#" * int(fraction * 30)
        if done >= total:
            eta_text = "committing"
        else:
            eta_text = "ETA " + format_eta((total - done) / rate if rate else None)
        return (
            f"[{bar:<30}] {fraction:6.1%} {format_size(done)} / {format_size(total)} "
            f"{rate_text} {eta_text}"
        )
