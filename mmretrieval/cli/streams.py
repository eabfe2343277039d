"""stdout and stderr as a script or a cron job may hand them over: closed, full, or a pipe closed early.

Results are the command's product: failing to write them is an error, with its own message. Diagnostics
(progress, hints, warnings) are not: a log file on a full disk must not turn a finished ingest into a failure.
A closed stderr must not send them to stdout either (``print(file=None)`` writes to stdout).
"""

from __future__ import annotations

import errno
import os
import sys
from contextlib import contextmanager
from typing import Any, Iterator


class ResultsNotWritten(Exception):
    """stdout refused the results (closed, a full disk, an I/O error); ``reason`` says why."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class _Results:
    """stdout, whose write errors become :class:`ResultsNotWritten` (a closed pipe stays a BrokenPipeError:
    ``| head`` is not an error)."""

    def __init__(self, stream: Any):
        self._stream = stream
        self.reader_left = False  # a write met a closed pipe: the reader has what it wanted (`| head`)

    def write(self, text: str) -> int:
        if self._stream is None:
            raise ResultsNotWritten(os.strerror(errno.EBADF) + " (stdout is closed)")
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self.reader_left = True
            raise
        except OSError as exc:
            raise ResultsNotWritten(exc.strerror or str(exc)) from exc

    def flush(self) -> None:
        if self._stream is None:
            return
        try:
            self._stream.flush()
        except BrokenPipeError:
            self.reader_left = True
            raise
        except OSError as exc:
            raise ResultsNotWritten(exc.strerror or str(exc)) from exc

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class _Diagnostics:
    """stderr, or nothing when it is closed; a write it refuses is dropped."""

    def __init__(self, stream: Any):
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text) if self._stream is not None else len(text)
        except OSError:
            return len(text)

    def flush(self) -> None:
        try:
            if self._stream is not None:
                self._stream.flush()
        except OSError:
            pass

    def isatty(self) -> bool:
        return self._stream is not None and self._stream.isatty()

    def __getattr__(self, name: str) -> Any:
        if self._stream is None:
            raise AttributeError(name)
        return getattr(self._stream, name)


@contextmanager
def guarded_streams() -> Iterator[None]:
    """For the block: stdout as :class:`_Results`, stderr as :class:`_Diagnostics`; both restored after.

    A closed descriptor 0, 1 or 2 is first pointed at /dev/null (Python's stream for it stays None): otherwise
    the next file opened (the catalog) would get that number, and a C library's message to stderr, or a
    worker process's output, would be written into it.
    """
    _fill_closed_descriptors()
    stdout, stderr = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _Results(stdout), _Diagnostics(stderr)
    try:
        yield
    finally:
        sys.stdout, sys.stderr = stdout, stderr


def reader_left() -> bool:
    """Whether stdout met a closed pipe (``| head`` has read enough), rather than some other pipe breaking (a
    worker process gone, which is a failure)."""
    return bool(getattr(sys.stdout, "reader_left", False))


def _fill_closed_descriptors() -> None:
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)  # the lowest free number: this one, or a lower one filled first
            if null != fd:
                os.dup2(null, fd)
                os.close(null)


def silence_stdout() -> None:
    """After a reader closed the pipe (``| head``): send what is left for stdout, and Python's final flush, to
    /dev/null, so no "Exception ignored ... BrokenPipeError" follows, and stderr stays open for messages.

    Only the process's own stdout is redirected, never a stream an in-process caller put in its place.
    """
    stream = getattr(sys.stdout, "_stream", sys.stdout)
    if stream is None or stream is not sys.__stdout__:
        return
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass
