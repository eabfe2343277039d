"""A collection's writer lock held by another process or another thread, for tests of what a second writer is
told: holding it in the test's own thread is neither (the lock knows its holder is this thread, and refuses at
once)."""

from __future__ import annotations

import subprocess
import sys
import threading
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Callable, Iterator

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


@contextmanager
def held_by_another_thread(hold: Callable[[], AbstractContextManager]) -> Iterator[None]:
    """Enter ``hold()`` (``collection.writing``, ``exclusive_lock(...)``) in another thread of this process for the
    ``with`` block."""
    holding, release = threading.Event(), threading.Event()

    def holder() -> None:
        with hold():
            holding.set()
            release.wait(60)

    thread = threading.Thread(target=holder)
    thread.start()
    try:
        assert holding.wait(60)
        yield
    finally:
        release.set()
        thread.join()
