"""The progress bar that the command line and the server console draw: a ``(done, total)`` callback."""

from __future__ import annotations

import sys

from tqdm import tqdm


class TqdmProgress:
    """A progress callback ``(done, total)`` drawing a tqdm bar on stderr; use as a context manager."""

    def __init__(self, description: str, unit: str = "img"):
        self._description, self._unit = description, unit
        self._bar: tqdm | None = None  # drawn at the first report: work that never starts draws nothing

    def __call__(self, done: int, total: int | None) -> None:
        """Move the bar to ``done`` of ``total`` (None: not known, as while a folder is still being walked)."""
        if self._bar is None:
            self._bar = tqdm(desc=self._description, unit=self._unit, file=sys.stderr, dynamic_ncols=True, leave=True)
        if self._bar.total != total:
            self._bar.total = total
        self._bar.update(done - self._bar.n)

    def __enter__(self) -> "TqdmProgress":
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._bar is not None:
            self._bar.close()
