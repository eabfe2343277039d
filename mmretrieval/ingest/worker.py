"""One decoding worker process, and the parent's handle on it (:class:`Worker`); :mod:`.pool` schedules them.

A worker takes groups of numbered tasks through its pipe and writes each decoded image's pixels into the next
free row of the group's shared-memory chunk. Before it starts a task it writes the task's number and the time
into a small shared header, so the parent always knows which file a worker that died or hung was busy with.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import multiprocessing
import signal
import time
from multiprocessing.connection import Connection
from multiprocessing.shared_memory import SharedMemory
from typing import Callable, Iterator

import numpy as np
import numpy.typing as npt

from ..images.decode import quiet_pillow_size_warning
from ..images.preprocess import ImagePreparer
from .batches import NO_PIXELS, Decoded, DecodeTask, Failed
from .chunks import Chunk, new_shared_memory

READY = "decoder-ready"  # a worker's first message, sent once it is up and before it takes a task
_ATTACHED = 256  # chunks a worker keeps mapped (a pool cycles through far fewer)
# The shared header, float64s: the number of the task being decoded, when it started (time.monotonic, one
# clock for every process on the machine), and the number of the last task finished. Numbers start at 0.
_STARTED, _STARTED_AT, _FINISHED = 0, 1, 2


def start_context() -> multiprocessing.context.BaseContext:
    """How workers start: from a forkserver, or spawned where there is none.

    The forkserver imports the decoding code between :mod:`mmretrieval._sigint_ignored` and
    :mod:`mmretrieval._sigint_restored`: Ctrl-C reaches the whole process group, and a forkserver still importing
    printed a KeyboardInterrupt traceback (the parent stops its workers itself). Before that first import, while
    the interpreter itself starts, SIGINT is blocked: :class:`Worker` blocks it around a start (a process started
    by exec inherits the mask), and the first import ignores it and unblocks it (a pending one is then dropped), as
    Python's own resource tracker does. Workers ignore SIGINT from their first line.
    """
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["mmretrieval._sigint_ignored", "mmretrieval.ingest.reader",
                                         "mmretrieval._sigint_restored"])
        return context
    return multiprocessing.get_context("spawn")


DecodeFn = Callable[[DecodeTask, ImagePreparer], "Decoded | Failed"]


@contextlib.contextmanager
def _sigint_blocked() -> Iterator[None]:
    """SIGINT blocked in this thread, and so in any process it starts by exec (a Ctrl-C meanwhile waits)."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _worker_main(conn: Connection, preparer: ImagePreparer, decode: DecodeFn, header_name: str) -> None:
    # Ctrl-C reaches the whole process group; the parent stops its workers itself (through the pipe, or by
    # killing them), and a worker's own KeyboardInterrupt would only print a traceback in the middle of its report
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # blocked while a spawned worker started
    quiet_pillow_size_warning()  # each worker printed Pillow's "decompression bomb DOS attack" for a 108 MP photo
    header_memory = SharedMemory(header_name)  # the parent's resource tracker knows it: one owner, one unlink
    header = np.ndarray((3,), dtype=np.float64, buffer=header_memory.buf)
    attached: dict[str, tuple[SharedMemory, tuple[int, ...]]] = {}
    try:
        conn.send(READY)
        while (message := conn.recv()) is not None:
            chunk_name, shape, group = message
            rows = _attach(attached, chunk_name, shape, len(group)) if chunk_name else None
            results: list[Decoded | Failed] = []
            row = 0
            for number, task in group:
                header[_STARTED_AT] = time.monotonic()
                header[_STARTED] = number
                result = decode(task, preparer)
                if rows is not None and isinstance(result, Decoded):
                    if result.pixels.shape != shape:  # a preparer bug: fail the file, keep rows and records in step
                        result = Failed(task.image_id, "corrupt", f"prepared pixels have shape {result.pixels.shape}, "
                                        f"expected {shape}")
                    else:
                        rows[row] = result.pixels
                        row += 1
                        object.__setattr__(result, "pixels", NO_PIXELS)  # our own fresh record: pixels are in the row
                results.append(result)
                header[_FINISHED] = number
            rows = None
            conn.send(results)
    except (EOFError, OSError):  # the parent is gone (killed, say): leave quietly, nobody is listening
        return


def _attach(attached: dict, name: str, shape: tuple[int, ...], rows: int) -> npt.NDArray[np.uint8]:
    if name not in attached:
        if len(attached) >= _ATTACHED:
            oldest = next(iter(attached))
            attached.pop(oldest)[0].close()
        attached[name] = (SharedMemory(name), shape)
    return np.ndarray((rows, *shape), dtype=np.uint8, buffer=attached[name][0].buf)


@dataclasses.dataclass
class _Sent:
    """A group a worker holds: its tasks (numbered) and the chunk its pixels go to."""

    tasks: list[tuple[int, DecodeTask]]
    chunk: Chunk | None


class Worker:
    """The parent's handle on one worker process: its pipe, its shared header and the groups it holds."""

    def __init__(self, context: multiprocessing.context.BaseContext, preparer: ImagePreparer, decode: DecodeFn):
        self.conn, child = context.Pipe()
        self.header_memory = new_shared_memory(64)
        self.header = np.ndarray((3,), dtype=np.float64, buffer=self.header_memory.buf)
        self.header[:] = -1
        self.process = context.Process(target=_worker_main, daemon=True,
                                       args=(child, preparer, decode, self.header_memory.name))
        try:
            with _sigint_blocked():  # until a new forkserver's (or spawned worker's) first line ignores it
                self.process.start()
        except BaseException:  # the forkserver died (Ctrl-C in its start-up), say: free what this start made
            self._free_header()
            self.conn.close()
            raise
        finally:
            child.close()
        self.groups: collections.deque[_Sent] = collections.deque()  # sent and not answered, in order
        self.numbered = 0  # tasks numbered so far
        self.ready = False  # set by its first message; until then its tasks are waiting, not decoding
        self.started = time.monotonic()

    @property
    def tasks(self) -> list[DecodeTask]:
        """Tasks sent and not answered, in order."""
        return [task for sent in self.groups for _, task in sent.tasks]

    def send(self, tasks: list[DecodeTask], chunk: Chunk | None, shape: tuple[int, ...]) -> None:
        group = [(self.numbered + i, task) for i, task in enumerate(tasks)]
        self.numbered += len(group)
        self.groups.append(_Sent(group, chunk))
        self.conn.send((chunk.name if chunk else None, shape, group))

    def receive(self) -> tuple[list[Decoded | Failed], Chunk | None] | str:
        """The next message: ``READY``, or a group's results in task order and the chunk holding the pixels
        of its decoded ones (rows in order)."""
        message = self.conn.recv()
        if message == READY:
            return message
        sent = self.groups.popleft()
        return message, sent.chunk

    def busy_since(self) -> float | None:
        """When the worker started the task it is decoding now (``time.monotonic``); None between tasks."""
        started, started_at, finished = self.header
        return float(started_at) if started > finished else None

    def culprit(self) -> DecodeTask:
        """The task the worker was decoding, by its header; the oldest unanswered one if it was between tasks."""
        started = int(self.header[_STARTED]) if self.header[_STARTED] > self.header[_FINISHED] else None
        numbered = [item for sent in self.groups for item in sent.tasks]
        return next((task for number, task in numbered if number == started), numbered[0][1])

    def stop(self, kill: bool = False) -> list[Chunk]:
        """Stop the process; returns the chunks of the groups it still held (free again: nobody writes them)."""
        if kill:
            self.process.kill()
        else:
            try:
                self.conn.send(None)
            except OSError:
                pass
        self.process.join(timeout=5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.conn.close()
        self._free_header()
        chunks = [sent.chunk for sent in self.groups if sent.chunk is not None]
        self.groups.clear()
        return chunks

    def _free_header(self) -> None:
        if self.header_memory is not None:
            self.header = None  # the view must go before the mapping can close
            self.header_memory.close()
            self.header_memory.unlink()
            self.header_memory = None
