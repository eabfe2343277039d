"""A collection's writer lock held by another process, for tests of what a second writer is told: holding it in
the test's own thread is not that (the lock knows its holder is this thread, and refuses at once)."""

from __future__ import annotations

import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

_HOLD = ("import fcntl, sys, time\n"
         "handle = open(sys.argv[1], 'a')\n"
         "fcntl.flock(handle, fcntl.LOCK_EX)\n"
         "print('held', flush=True)\n"
         "time.sleep(120)\n")


@contextmanager
def held_by_another_process(lock: Path) -> Iterator[subprocess.Popen]:
    """Hold ``lock`` (flock, as a writer does) in a child process for the ``with`` block."""
    child = subprocess.Popen([sys.executable, "-c", _HOLD, str(lock)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline() == "held\n"
        yield child
    finally:
        child.kill()
        child.wait()
