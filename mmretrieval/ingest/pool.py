"""Decoding worker processes that contain crashes and hangs.

Each worker gets its own pipe and at most :data:`_DEPTH` tasks at a time, processed in order, so the task a
worker was busy with is always known: if the worker dies (a segfault in a decoder), or takes longer than
``timeout_s`` on one file, that file is failed with ``decoder_crashed`` or ``decode_timeout``, the worker is
killed and replaced, and its other tasks go back to the queue. A feeder thread keeps draining the pipes
while the caller runs the model, so decoding overlaps with embedding.

Workers start from a ``forkserver`` (``spawn`` where there is none), never by forking a process that holds
a model, threads or a database connection. Each worker says it is ready before it takes a task; one that
dies before that is a start-up failure (typically a script without an ``if __name__ == '__main__':`` guard,
which the worker re-runs on import), not a bad file, and no file is failed for it.
"""

from __future__ import annotations

import collections
import itertools
import logging
import multiprocessing
import queue
import threading
import time
from multiprocessing.connection import Connection, wait
from typing import Callable, Iterable, Iterator, Sequence

from ..images.preprocess import ImagePreparer
from ..errors import CollectionError
from .batches import Decoded, DecodeTask, Failed
from .reader import decode_file

logger = logging.getLogger(__name__)

_DEPTH = 2  # tasks queued per worker: one decoding, one ready to start
_DONE = object()
_MAX_STARTUP_CRASHES = 3  # workers dying before they are ready: a start-up problem, not a bad file
_STARTUP_LIMIT_S = 120.0  # a worker not ready after this long counts as a start-up failure
_READY = "decoder-ready"  # a worker's first message, sent once it is up and before it takes a task


def _context() -> multiprocessing.context.BaseContext:
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["mmretrieval.ingest.reader"])
        return context
    return multiprocessing.get_context("spawn")


DecodeFn = Callable[[DecodeTask, ImagePreparer], "Decoded | Failed"]


def _worker_main(conn: Connection, preparer: ImagePreparer, decode: DecodeFn) -> None:
    try:
        conn.send(_READY)
        while (task := conn.recv()) is not None:
            conn.send(decode(task, preparer))
    except (EOFError, OSError):  # the parent is gone (killed, say): leave quietly, nobody is listening
        return


class _Worker:
    def __init__(self, context: multiprocessing.context.BaseContext, preparer: ImagePreparer, decode: DecodeFn):
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_worker_main, args=(child, preparer, decode), daemon=True)
        self.process.start()
        child.close()
        self.tasks: collections.deque[DecodeTask] = collections.deque()
        self.ready = False  # set by its first message; until then its tasks are waiting, not decoding
        self.started = self.head_started = time.monotonic()

    def send(self, task: DecodeTask) -> None:
        if not self.tasks and self.ready:
            self.head_started = time.monotonic()
        self.tasks.append(task)
        self.conn.send(task)

    def stop(self, kill: bool = False) -> None:
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


class DecodePool:
    """Decode tasks in ``workers`` processes; iterate :meth:`run` for results in completion order."""

    def __init__(self, preparer: ImagePreparer, workers: int, timeout_s: float = 60.0, buffer: int = 256,
                 decode: DecodeFn = decode_file, keep_workers: bool = False):
        """
        Args:
            preparer: resizes decoded images for the model (sent once to each worker).
            workers: processes; 0 decodes inline in the caller (no crash or hang isolation).
            timeout_s: seconds one file may take before its worker is killed and the file failed.
            buffer: results held ready for the consumer (back-pressure beyond that).
            decode: the per-file function, a module-level callable (it is pickled by name for the workers).
            keep_workers: keep the worker processes that end a :meth:`run` healthy for the next one (a Ray
                decode task's process runs many small batches; starting a decoder costs ~1 s); :meth:`close`
                stops them, and they leave by themselves when this process exits.
        """
        self.decode = decode
        self.preparer = preparer
        self.workers = workers
        self.timeout_s = timeout_s
        self.keep_workers = keep_workers
        self._kept: list[_Worker] = []  # idle, ready workers from the last run (keep_workers only)
        self._results: queue.Queue = queue.Queue(maxsize=buffer)

    def close(self) -> None:
        """Stop the workers kept from earlier runs."""
        kept, self._kept = self._kept, []
        for worker in kept:
            worker.stop()

    def run(self, tasks: Iterable[DecodeTask]) -> Iterator[Decoded | Failed]:
        """Yield one result per task. With ``workers == 0`` decodes inline (no isolation).

        ``tasks`` is consumed as the workers need them (a generator over a catalog's pending rows works: it is
        read on the pool's feeder thread), so the pool never holds more than its queues.

        Raises:
            CollectionError: worker processes keep dying before they are ready (an unguarded script).
        """
        tasks = iter(tasks)
        first = next(tasks, None)
        if first is None:
            return
        tasks = itertools.chain([first], tasks)
        if self.workers <= 0:
            for task in tasks:
                yield self.decode(task, self.preparer)
            return
        stop = threading.Event()
        feeder = threading.Thread(target=self._feed, args=(tasks, stop), daemon=True, name="decode-feeder")
        feeder.start()
        try:
            while (item := self._results.get()) is not _DONE:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            while feeder.is_alive():  # unblock a feeder waiting to put, then let it stop its workers
                try:
                    self._results.get(timeout=0.1)
                except queue.Empty:
                    pass

    def _feed(self, tasks: Iterator[DecodeTask], stop: threading.Event) -> None:
        # ``pending``: tasks taken from ``tasks`` and not yet sent, first among them those a dead worker held
        pending = collections.deque(itertools.islice(tasks, self.workers * _DEPTH))
        self._startup_crashes = 0
        workers, self._kept = self._kept, []
        for worker in [w for w in workers if not w.process.is_alive()]:  # died while idle: replaced below
            worker.stop()
            workers.remove(worker)
        failed = False
        try:  # starting workers can fail too (in a worker re-running an unguarded script): surface that as well
            context = _context()
            workers += [_Worker(context, self.preparer, self.decode)
                        for _ in range(min(self.workers, len(pending)) - len(workers))]
            while (pending or any(w.tasks for w in workers)) and not stop.is_set():
                for worker in workers:
                    while len(worker.tasks) < _DEPTH and (pending or _take(tasks, pending)):
                        worker.send(pending.popleft())
                self._collect(workers, pending, context)
            self._results.put(_DONE)
        except BaseException as exc:  # surface pool bugs in the consumer instead of hanging it
            failed = True
            self._results.put(exc)
        finally:
            for worker in workers:
                if self.keep_workers and not failed and worker.ready and not worker.tasks:
                    self._kept.append(worker)
                else:
                    worker.stop(kill=bool(worker.tasks))

    def _collect(self, workers: list[_Worker], pending: collections.deque,
                 context: multiprocessing.context.BaseContext) -> None:
        busy = {w.conn: w for w in workers if w.tasks}
        for conn in wait(list(busy), timeout=0.5):
            worker = busy[conn]
            try:
                result = conn.recv()
            except (EOFError, OSError):
                self._replace(workers, worker, pending, context, "decoder_crashed",
                              f"the decoder process died (exit code {worker.process.exitcode})")
                continue
            worker.head_started = time.monotonic()
            if result == _READY:
                worker.ready = True
                continue
            worker.tasks.popleft()
            self._results.put(result)
        now = time.monotonic()
        for worker in list(workers):
            if not worker.tasks or worker.conn.poll():
                continue
            if not worker.process.is_alive():
                self._replace(workers, worker, pending, context, "decoder_crashed",
                              f"the decoder process died (exit code {worker.process.exitcode})")
            elif worker.ready and now - worker.head_started > self.timeout_s:
                self._replace(workers, worker, pending, context, "decode_timeout",
                              f"decoding took longer than {self.timeout_s:g} s")
            elif not worker.ready and now - worker.started > _STARTUP_LIMIT_S:
                self._replace(workers, worker, pending, context, "decoder_crashed", "the decoder never started")

    def _replace(self, workers: list[_Worker], worker: _Worker, pending: collections.deque,
                 context: multiprocessing.context.BaseContext, reason: str, message: str) -> None:
        """Kill ``worker`` and start another; fail the file it was decoding, unless it never got that far."""
        if not worker.ready:
            self._startup_crashes += 1
            if self._startup_crashes >= _MAX_STARTUP_CRASHES:
                raise CollectionError(
                    f"{self._startup_crashes} decoding processes died while starting ({message}); when ingesting "
                    "from a script, guard it with `if __name__ == '__main__':`, or pass workers=0")
            pending.extendleft(reversed(worker.tasks))  # not the files' fault: they go back to the queue
        else:
            culprit = worker.tasks.popleft()
            logger.warning("%s: %s", culprit.path, message)
            pending.extendleft(reversed(worker.tasks))
            self._results.put(Failed(culprit.image_id, reason, message))
        worker.tasks.clear()
        worker.stop(kill=True)
        workers[workers.index(worker)] = _Worker(context, self.preparer, self.decode)


def _take(tasks: Iterator[DecodeTask], pending: collections.deque) -> bool:
    """Move the next task of ``tasks`` to ``pending``; False when there are no more."""
    task = next(tasks, None)
    if task is None:
        return False
    pending.append(task)
    return True
