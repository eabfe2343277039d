"""Decoding worker processes that contain crashes and hangs, and hand pixels over through shared memory.

This module schedules the workers; :mod:`.worker` is the process itself and the parent's handle on it.

Tasks go to each worker in groups of up to :data:`_GROUP`, at most :data:`_DEPTH` groups at a time, and are
decoded in order. Before it starts a task a worker writes the task's number and the time into a small shared
header, so the task a worker is busy with is always known: if the worker dies (a segfault in a decoder), or
takes longer than ``timeout_s`` on one file, that file is failed with ``decoder_crashed`` or
``decode_timeout``, the worker is killed and replaced, and its other tasks go back to the queue (those it had
finished but not yet sent are decoded again). A feeder thread keeps the workers busy while the caller runs the
model, so decoding overlaps with embedding.

Pixels never travel through the pipes. Each group goes out with a *chunk* (:mod:`.chunks`): a block of shared
memory with one row per task of the group. The worker writes each decoded image's model-sized pixels into the
next free row (failures take none, so the rows are the group's decoded images in order) and sends back only the
small records. :meth:`DecodePool.batches` hands the consumer the chunks as they are (the runner copies them
straight to a GPU, or joins them once for a CPU model); :meth:`DecodePool.run` copies each image out and frees
the chunk at once. One message per file with a pickled 3x224x224 array capped the pool at ~3,000 results/s on
2 cores (``bench/decode_pool.py``).

Workers start from a ``forkserver`` (``spawn`` where there is none), never by forking a process that holds
a model, threads or a database connection. Each worker says it is ready before it takes a task; one that
dies before that is a start-up failure (typically a script without an ``if __name__ == '__main__':`` guard,
which the worker re-runs on import), not a bad file, and no file is failed for it.
"""

from __future__ import annotations

import collections
import logging
import os
import queue
import signal
import sys
import threading
import time
from multiprocessing import process as mp_process
from multiprocessing.connection import wait
from typing import Iterable, Iterator

from ..images.preprocess import ImagePreparer
from ..errors import CollectionError
from .batches import Decoded, DecodeTask, Failed
from .chunks import Batcher, Chunk, Chunks, DecodedBatch, EachResult, remove_leftovers_once
from .open_files import reserve_open_files
from .reader import decode_file
from .worker import READY, DecodeFn, Worker, start_context

logger = logging.getLogger(__name__)

_GROUP = 16  # most tasks sent to a worker in one message (one chunk), and so most results in one message back
_DEPTH = 2  # groups a worker holds: the one it decodes and the next, queued in its pipe
_DONE = object()
_MAX_STARTUP_CRASHES = 3  # workers dying before they are ready: a start-up problem, not a bad file
_STARTUP_LIMIT_S = 120.0  # a worker not ready after this long counts as a start-up failure
_IDLE_S = 0.005  # the feeder's pause when no worker has anything in flight
_PUT_RETRY_S = 0.1  # how long the feeder waits for room before it looks again (see Handoff)


class Handoff:
    """A producer thread's results for the consumer: a bounded queue whose ``put`` never waits for good.

    ``Queue.put`` without a timeout waits for a notify from ``get``; an exception that a signal handler raises in
    the consumer's ``get`` (Ctrl-C's KeyboardInterrupt, SIGTERM's Terminated) can take an item without notifying,
    and the feeder then waited forever while the consumer, unwinding, drained an empty queue (an `mmr ingest`
    hung after SIGTERM in CI). So ``put`` waits :data:`_PUT_RETRY_S` at a time, looking again for room, and gives
    up once the consumer has stopped (``stop``)."""

    def __init__(self, maxsize: int, stop: threading.Event):
        self.queue: queue.Queue = queue.Queue(maxsize=maxsize)
        self._stop = stop

    def put(self, item: object) -> None:
        while True:
            try:
                self.queue.put(item, timeout=_PUT_RETRY_S)
                return
            except queue.Full:
                if self._stop.is_set():
                    return

    def get(self, timeout: float | None = None) -> object:
        return self.queue.get(timeout=timeout)

    def get_nowait(self) -> object:
        return self.queue.get_nowait()


class DecodePool:
    """Decode tasks in ``workers`` processes; iterate :meth:`run` or :meth:`batches` for the results."""

    def __init__(self, preparer: ImagePreparer, workers: int, timeout_s: float = 60.0, buffer: int = 256,
                 decode: DecodeFn = decode_file, keep_workers: bool = False):
        """
        Args:
            preparer: resizes decoded images for the model (sent once to each worker).
            workers: processes; 0 decodes inline in the caller (no crash or hang isolation).
            timeout_s: seconds one file may take before its worker is killed and the file failed.
            buffer: results held ready for the consumer (back-pressure beyond that).
            decode: the per-file function, a module-level callable (it is pickled by name for the workers).
            keep_workers: keep the worker processes that end a run healthy for the next one (a Ray decode
                task's process runs many small batches; starting a decoder costs ~1 s); :meth:`close` stops
                them, and they leave by themselves when this process exits.
        """
        self.decode = decode
        self.preparer = preparer
        self.workers = workers
        self.timeout_s = timeout_s
        self.buffer = buffer
        self.keep_workers = keep_workers
        self._kept: list[Worker] = []  # idle, ready workers from the last run (keep_workers only)
        # Gauges for a caller sharing work with this pool (the device route), written by the feeder thread only:
        self.ready_workers = 0  # workers up and taking tasks, in the current run
        self.results_made = 0  # results (decoded or failed, timeouts included) made by workers, over all runs

    @staticmethod
    def tasks_per_busy_worker(batch_size: int) -> int:
        """Tasks a busy worker holds in :meth:`batches`: the group it decodes and the next, queued in its pipe."""
        return _DEPTH * _group_rows(batch_size)

    def close(self) -> None:
        """Stop the workers kept from earlier runs."""
        kept, self._kept = self._kept, []
        for worker in kept:
            worker.stop()

    def run(self, tasks: Iterable[DecodeTask | None]) -> Iterator[Decoded | Failed]:
        """Yield one result per task, in completion order. With ``workers == 0`` decodes inline (no isolation).

        ``tasks`` is consumed as the workers need them (a generator over a catalog's pending rows works: it is
        read on the pool's feeder thread), so the pool never holds more than its queues. It may yield None for
        "no task ready yet" (a queue that another stage fills): the pool carries on and asks again.

        Raises:
            CollectionError: worker processes keep dying before they are ready (an unguarded script).
        """
        if self.workers <= 0:
            for task in tasks:
                if task is not None:
                    yield self.decode(task, self.preparer)
            return
        chunks = Chunks(_pixel_shape(self.preparer), 2 * _DEPTH * self.workers, _GROUP)
        for results in self._threaded(tasks, EachResult(chunks), chunks):
            yield from results

    def batches(self, tasks: Iterable[DecodeTask | None], batch_size: int) -> Iterator[DecodedBatch]:
        """Results in batches of at most ``batch_size`` (of exactly that many while tasks keep coming and
        ``batch_size`` is a multiple of 16 or under it), pixels not copied.

        A batch's ``chunks`` are the shared memory the workers decoded into. They stay valid until the
        consumer asks for the batch after this one, when they go back to the workers.

        Raises:
            CollectionError: as :meth:`run`.
        """
        if self.workers <= 0:
            yield from self._inline_batches(tasks, batch_size)
            return
        chunks = Chunks(_pixel_shape(self.preparer), _batch_chunks(self.workers, batch_size, self.buffer),
                        _group_rows(batch_size))
        held: list[Chunk] = []
        for batch, batch_chunks in self._threaded(tasks, Batcher(batch_size), chunks):
            for chunk in held:
                chunks.give_back(chunk)
            held = batch_chunks
            yield batch

    def _queue_size(self) -> int:
        return _queue_size(self.buffer)

    def _inline_batches(self, tasks: Iterable[DecodeTask | None], batch_size: int) -> Iterator[DecodedBatch]:
        batcher = Batcher(batch_size)
        for task in filter(None, tasks):
            for batch, _ in batcher.emit([self.decode(task, self.preparer)], None):
                yield batch
        for batch, _ in batcher.finish():
            yield batch

    def _threaded(self, tasks: Iterable[DecodeTask | None], sink: "EachResult | Batcher", chunks: Chunks) -> Iterator:
        """What ``sink`` makes of the workers' results, in completion order; decoding runs on a feeder thread.

        ``chunks`` sets the group size (its rows) and how many chunks may exist at once (back-pressure from a
        consumer holding on to them); they are closed when the run ends.
        """
        reserve_open_files(chunks.limit, self.workers)
        remove_leftovers_once()
        stop = threading.Event()
        results = Handoff(self._queue_size(), stop)
        feeder = threading.Thread(target=self._feed, args=(iter(tasks), stop, sink, chunks, results), daemon=True,
                                  name="decode-feeder")
        feeder.start()
        try:
            while (item := results.get()) is not _DONE:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            while feeder.is_alive():  # unblock a feeder waiting to put, then let it stop its workers
                try:
                    results.get(timeout=0.1)
                except queue.Empty:
                    pass
                except KeyboardInterrupt:
                    # A second Ctrl-C (a terminal signals the whole group) while stopping: let go, so that the
                    # workers still stop and their shared memory is still freed (it leaked, with a traceback).
                    logger.debug("interrupted again while the decoding workers stop")
            chunks.close()  # the workers are stopped: nobody writes them any more

    def _feed(self, tasks: Iterator[DecodeTask | None], stop: threading.Event, sink: "EachResult | Batcher",
              chunks: Chunks, results: Handoff) -> None:
        # ``pending``: tasks taken from ``tasks`` and not yet sent, first among them those a dead worker held
        pending: collections.deque[DecodeTask] = collections.deque()
        self._startup_crashes = 0
        workers, self._kept = self._kept, []
        for worker in [w for w in workers if not w.process.is_alive()]:  # died while idle: replaced below
            worker.stop()
            workers.remove(worker)
        failed = exhausted = False
        try:  # starting workers can fail too (in a worker re-running an unguarded script): surface that as well
            while (pending or not exhausted or any(w.groups for w in workers)) and not stop.is_set():
                exhausted = exhausted or _fill(tasks, pending, self.workers * _DEPTH * chunks.rows)
                if pending and len(workers) < self.workers:  # no task, no worker: they start as work comes
                    workers += [Worker(start_context(), self.preparer, self.decode)
                                for _ in range(min(self.workers - len(workers), len(pending)))]
                self._dispatch(workers, pending, sink, chunks, results)
                if any(w.groups for w in workers):
                    self._collect(workers, pending, sink, chunks, results)
                else:  # waiting for the caller's next task, or for the consumer to give chunks back
                    stop.wait(_IDLE_S)
                self.ready_workers = sum(w.ready for w in workers)
            for item in sink.finish():
                results.put(item)
            results.put(_DONE)
        except BaseException as exc:  # surface pool bugs in the consumer instead of hanging it
            failed = True
            results.put(exc)
        finally:
            for worker in workers:
                if self.keep_workers and not failed and worker.ready and not worker.groups:
                    self._kept.append(worker)
                else:
                    worker.stop(kill=bool(worker.groups))

    @staticmethod
    def _dispatch(workers: list[Worker], pending: collections.deque, sink: "EachResult | Batcher", chunks: Chunks,
                  results: Handoff) -> None:
        """Send each worker with room a group of pending tasks, each group with a free chunk."""
        for worker in workers:
            # share out what is there: a short run must not sit in one worker's queue
            size = min(chunks.rows, -(-len(pending) // len(workers)))
            if size <= 0 or len(worker.groups) >= _DEPTH:
                continue
            chunk = chunks.take() if chunks.shape else None
            if chunk is None and chunks.shape:
                if not any(w.groups for w in workers):  # the consumer holds every chunk: hand it the batch
                    for item in sink.finish():  # being filled, so that it gives back the one before
                        results.put(item)
                return
            worker.send([pending.popleft() for _ in range(size)], chunk, chunks.shape)

    def _collect(self, workers: list[Worker], pending: collections.deque, sink: "EachResult | Batcher",
                 chunks: Chunks, results: Handoff) -> None:
        busy = {w.conn: w for w in workers if w.groups}
        replace = lambda worker, reason, message: self._replace(  # noqa: E731
            workers, worker, pending, sink, chunks, results, reason, message)
        for conn in wait(list(busy), timeout=0.5):
            worker = busy[conn]
            try:
                message = worker.receive()
            except (EOFError, OSError):
                replace(worker, "decoder_crashed", _died(worker))
                continue
            if message == READY:
                worker.ready = True
                continue
            self.results_made += len(message[0])
            for item in sink.emit(*message):
                results.put(item)
        now = time.monotonic()
        for worker in list(workers):
            if not worker.groups or worker.conn.poll():
                continue
            since = worker.busy_since()
            if not worker.process.is_alive():
                replace(worker, "decoder_crashed", _died(worker))
            elif worker.ready and since is not None and now - since > self.timeout_s:
                replace(worker, "decode_timeout", f"decoding took longer than {self.timeout_s:g} s")
            elif not worker.ready and now - worker.started > _STARTUP_LIMIT_S:
                replace(worker, "decoder_crashed", "the decoder never started")

    def _replace(self, workers: list[Worker], worker: Worker, pending: collections.deque,
                 sink: "EachResult | Batcher", chunks: Chunks, results: Handoff, reason: str, message: str) -> None:
        """Kill ``worker`` and start another; fail the file it was decoding, unless it never got that far."""
        held = worker.tasks
        if not worker.ready:
            self._startup_crashes += 1
            if self._startup_crashes >= _MAX_STARTUP_CRASHES:
                # from None: the broken pipe this was noticed by (when it was) is not news after the message
                raise CollectionError(_startup_failure(self._startup_crashes, message)) from None
        else:
            culprit = worker.culprit()
            logger.warning("%s: %s", culprit.path, message)
            held.remove(culprit)
            self.results_made += 1
            for item in sink.emit([Failed(culprit.image_id, reason, message)], None):
                results.put(item)
        pending.extendleft(reversed(held))  # not these files' fault: they go back to the queue
        for chunk in worker.stop(kill=True):
            chunks.give_back(chunk)
        workers[workers.index(worker)] = Worker(start_context(), self.preparer, self.decode)


def _died(worker: Worker) -> str:
    """How a worker whose pipe closed died: its pipe can close a moment before its exit code is known."""
    worker.process.join(timeout=1.0)
    code = worker.process.exitcode
    if code is None:
        return "the decoder process died"
    if code < 0:
        try:
            return f"the decoder process was killed by {signal.Signals(-code).name}"
        except ValueError:
            pass
    return f"the decoder process died (exit code {code})"


def _startup_failure(crashes: int, message: str) -> str:
    """Why ``crashes`` workers died before they were ready, and the fix: a guard for an unguarded script, which each
    worker re-runs on import; ``workers=0`` for a script read from standard input (``python - <<EOF``), which
    spawned and forkserver workers look for as a file named ``<stdin>``, and die of a FileNotFoundError."""
    died = f"{crashes} decoding processes died while starting ({message})"
    main_path = _unreadable_main_path()
    if main_path is not None:  # a guard cannot help: the workers die before they reach any line of the script
        source = ("came from standard input, which they cannot read again" if main_path == "<stdin>"
                  else f"is not a file they can read ({main_path!r})")
        return (f"{died}: each one re-runs the main script, and this one {source}; pass workers=0 to decode in this "
                "process, or save the script to a file and run that")
    return f"{died}; when ingesting from a script, guard it with `if __name__ == '__main__':`, or pass workers=0"


def _unreadable_main_path() -> str | None:
    """The main script's path as multiprocessing hands it to spawned workers (``spawn.get_preparation_data``),
    where that is not a file they can run; None where they can, or have nothing to run: ``python -m`` (imported
    by name), ``python -c`` and the interactive interpreter (no ``__file__``)."""
    main = sys.modules.get("__main__")
    if main is None or getattr(main, "__spec__", None) is not None:
        return None
    given = getattr(main, "__file__", None)
    if not isinstance(given, str):
        return None
    path = given  # relative to where this process started, as multiprocessing takes it
    if not os.path.isabs(path) and mp_process.ORIGINAL_DIR is not None:
        path = os.path.join(mp_process.ORIGINAL_DIR, path)
    return None if os.path.isfile(path) else given


def _group_rows(batch_size: int) -> int:
    """Tasks in one group (one message, one chunk) when results are packed into batches of ``batch_size``."""
    return min(_GROUP, batch_size)


def _pixel_shape(preparer: ImagePreparer | None) -> tuple[int, ...]:
    """The ``(3, H, W)`` of every prepared image; () without a preparer (pixels then travel in the records)."""
    return preparer.output_shape if preparer is not None else ()


def _fill(tasks: Iterator[DecodeTask | None], pending: collections.deque, size: int) -> bool:
    """Take tasks from ``tasks`` into ``pending`` until it holds ``size``, or ``tasks`` yields None (nothing ready
    yet: ask again later). Returns True once ``tasks`` is exhausted."""
    while len(pending) < size:
        task = next(tasks, _DONE)
        if task is _DONE:
            return True
        if task is None:
            return False
        pending.append(task)
    return False


def _queue_size(buffer: int) -> int:
    return max(1, buffer // _GROUP)


def _batch_chunks(workers: int, batch_size: int, buffer: int) -> int:
    """How many chunks :meth:`DecodePool.batches` may hold at once: the batch the consumer holds, those queued for
    it, the one filling, and the workers' groups in flight."""
    groups_per_batch = -(-batch_size // _group_rows(batch_size))
    return groups_per_batch * (2 + _queue_size(buffer)) + _DEPTH * workers


def reserve_files_for_batches(workers: int, batch_size: int, buffer: int = 256) -> None:
    """Make room for the open files of a :class:`DecodePool` of ``workers`` serving :meth:`~DecodePool.batches`
    of ``batch_size`` (as :meth:`DecodePool.batches` does when it starts): for a caller that must know before it
    changes anything (a first ingest that could not decode would leave a collection behind).

    Raises:
        CollectionError: the hard open-file limit is too low for ``workers`` decoding processes.
    """
    if workers > 0:
        reserve_open_files(_batch_chunks(workers, batch_size, buffer), workers)
