"""The progress bar that the command line and the server console draw: a ``(done, total)`` callback.

On a terminal it is a tqdm bar on stderr. When stderr is not a terminal (a log file, a pipe, a job scheduler) a
bar's carriage returns and cursor moves fill the log, so a plain line is written instead, at most every
:data:`LINE_EVERY_S` seconds and once at the end.

Rates count only the work done after the first report of work done. Callers report when a unit of work is done
(a batch, a chunk), some after loading a model, so what the first such report counts took an unknown time: counted
against the moment of that report it made a one-batch run claim 100,000 img/s. The clock cannot start when the
bar is made instead: the commands make their "index" bar before opening the collection and ingesting, long before
any indexing; and a report of nothing done yet (``(0, total)``: the total known, as before a Ray cluster starts)
draws the bar but starts no clock. A run of one report has no rate, and a line shows none measured over less than
:data:`RATE_MIN_S`.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from tqdm import tqdm

LINE_EVERY_S = 30.0  # seconds between progress lines when stderr is not a terminal
RATE_MIN_S = 1.0  # a line's rate needs this many seconds measured: less is the timing of a batch or two, not a rate


class TqdmProgress:
    """A progress callback ``(done, total)`` drawing a tqdm bar on stderr; use as a context manager."""

    def __init__(self, description: str, unit: str = "img", stream: TextIO | None = None):
        self._description, self._unit = description, unit
        self._stream = stream or sys.stderr
        self._bar: tqdm | _Lines | None = None  # made at the first report: work that never starts draws nothing
        self.last: tuple[int, int | None] | None = None  # the last report: where interrupted work stopped

    def __call__(self, done: int, total: int | None) -> None:
        """Move the bar to ``done`` of ``total`` (None: not known, as while a folder is still being walked)."""
        nothing_yet = self.last is None or self.last[0] == 0
        self.last = (done, total)
        if self._bar is None:  # ``initial``: the work before this report took an unknown time (see the module)
            self._bar = (tqdm(desc=self._description, unit=self._unit, file=self._stream, dynamic_ncols=True,
                              leave=True, initial=done) if _is_terminal(self._stream)
                         else _Lines(self._description, self._unit, self._stream, initial=done))
        elif nothing_yet and done > 0:  # the first work done: the clock starts here, as for a bar made now
            _restart(self._bar, done, total)
        if self._bar.total != total:
            self._bar.total = total
        self._bar.update(done - self._bar.n)

    def finish(self) -> None:
        """Close the bar now, when the work it counts is done but the command goes on (an import's index update):
        its closing line's rate is then that work's alone. A later report would start a new bar."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> "TqdmProgress":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.finish()


def _restart(bar: "tqdm | _Lines", done: int, total: int | None) -> None:
    """Start ``bar``'s clock now, with ``done`` counted but not in its rate (tqdm's ``initial``)."""
    if isinstance(bar, _Lines):
        bar.n = bar.initial = done
        bar.started = time.monotonic()
        return
    bar.reset(total)
    bar.n = bar.last_print_n = bar.initial = done
    bar.refresh()


class _Lines:
    """tqdm's ``total``/``n``/``update``/``close``, written as ``description: done/total unit (percent)`` lines,
    with the rate since the bar was made (``, rate unit/s``) once :data:`RATE_MIN_S` were measured.

    ``initial``, as tqdm's, is what was done when the bar was made: it is counted, but not in the rate."""

    def __init__(self, description: str, unit: str, stream: TextIO, initial: int = 0):
        self.description, self.unit, self.stream = description, unit, stream
        self.total: int | None = None
        self.n = self.initial = initial
        self.started = self._written = time.monotonic()
        self._shown: int | None = None

    def update(self, count: int) -> None:
        self.n += count
        if time.monotonic() - self._written >= LINE_EVERY_S:
            self._write()

    def close(self) -> None:
        if self._shown != self.n:
            self._write()

    def _write(self) -> None:
        self._written = time.monotonic()
        self._shown = self.n
        of = f"/{self.total}" if self.total else ""
        percent = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        elapsed = self._written - self.started
        measured = self.n - self.initial
        rate = f", {measured / elapsed:.1f} {self.unit}/s" if elapsed >= RATE_MIN_S and measured > 0 else ""
        print(f"{self.description}: {self.n}{of} {self.unit}{percent}{rate}", file=self.stream, flush=True)


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # closed, or not a real file
        return False
