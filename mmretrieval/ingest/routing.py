"""The decode stage of a GPU ingest: JPEGs decode on the model's device, everything else in the CPU pool, at once.

Reader threads read, hash and probe the files (:func:`~.device_decode.probe`) a group ahead of the device, so
the disk, the hashing and the JPEG headers overlap with decoding; what the device cannot take goes on a queue
that the CPU pool, on its own thread, works through meanwhile. Each batch that comes out carries its records
and pixels together (a device tensor, or one array from the CPU side), so a file that fails anywhere never
moves another file's pixels.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Iterable, Iterator, Sequence

import numpy as np
import numpy.typing as npt
import torch

from .batches import Decoded, DecodeTask, Failed, chunked
from .device_decode import DeviceJpegDecoder, Probed, probe
from .pool import DecodePool

logger = logging.getLogger(__name__)

Pixels = Sequence[npt.NDArray[np.uint8]] | torch.Tensor  # a batch's decoded images, rows in order
SplitBatch = tuple[Sequence[Decoded], Pixels, Sequence[Failed]]
_END = object()
_CPU_READY = 4  # CPU-side batches waiting for the model before the CPU pool is held back


def split_batches(tasks: Iterable[DecodeTask], decoder: DeviceJpegDecoder, pool: DecodePool, batch_size: int,
                  read_threads: int) -> Iterator[SplitBatch]:
    """Decode ``tasks``: JPEGs on the device in batches of up to ``batch_size``, the rest in ``pool``.

    Args:
        tasks: the rows to decode (read lazily, a group ahead).
        decoder: the device decoder.
        pool: the CPU pool, for what the device cannot decode (and the reasons of files nobody can).
        batch_size: files per device batch, and most results per CPU batch.
        read_threads: threads reading, hashing and probing files.

    Yields:
        (records, their pixels, failures) per batch, device and CPU batches interleaved as they are ready.
    """
    cpu = _CpuSide(pool, batch_size)
    try:
        with ThreadPoolExecutor(read_threads, thread_name_prefix="mmr-read") as readers:
            for probed in probed_groups(readers, tasks, batch_size):
                cpu.submit(item for item in probed if not isinstance(item, Probed))
                decoded, pixels, for_cpu = decoder.decode([item for item in probed if isinstance(item, Probed)])
                cpu.submit(for_cpu)
                if decoded:
                    yield decoded, pixels, ()
                yield from cpu.ready()
        yield from cpu.rest()
    finally:
        cpu.stop()


def probed_groups(readers: ThreadPoolExecutor, tasks: Iterable[DecodeTask],
                   size: int) -> Iterator[list[Probed | DecodeTask]]:
    """Probe ``tasks`` on the reader threads, ``size`` at a time, the next group under way while one is used."""
    window: collections.deque[list[Future]] = collections.deque()
    for group in chunked(tasks, size):
        window.append([readers.submit(probe, task) for task in group])
        if len(window) > 1:
            yield [future.result() for future in window.popleft()]
    while window:
        yield [future.result() for future in window.popleft()]


class _CpuSide:
    """The CPU pool on its own thread, fed from a queue; its batches come back with their pixels copied out."""

    def __init__(self, pool: DecodePool, batch_size: int):
        self.todo: queue.SimpleQueue = queue.SimpleQueue()
        self.done: queue.Queue = queue.Queue(maxsize=_CPU_READY)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(pool, batch_size), daemon=True, name="mmr-cpu-decode")
        self.thread.start()

    def submit(self, tasks: Iterable[DecodeTask]) -> None:
        for task in tasks:
            self.todo.put(task)

    def ready(self) -> Iterator[SplitBatch]:
        """The batches the CPU side has finished so far (does not wait)."""
        while True:
            try:
                item = self.done.get_nowait()
            except queue.Empty:
                return
            yield self._checked(item)

    def rest(self) -> Iterator[SplitBatch]:
        """Every remaining batch, waiting for the CPU side to finish."""
        self.todo.put(_END)
        while (item := self.done.get()) is not _END:
            yield self._checked(item)

    def stop(self) -> None:
        """End the thread (and so the pool's run) without waiting for its remaining work."""
        self.stopping.set()
        self.todo.put(_END)
        while self.thread.is_alive():
            try:
                self.done.get(timeout=0.1)
            except queue.Empty:
                pass

    @staticmethod
    def _checked(item: SplitBatch | BaseException) -> SplitBatch:
        if isinstance(item, BaseException):
            raise item
        return item

    def _tasks(self) -> Iterator[DecodeTask | None]:
        while not self.stopping.is_set():
            try:
                task = self.todo.get_nowait()
            except queue.Empty:
                yield None  # nothing submitted yet: the pool carries on and asks again
                continue
            if task is _END:
                return
            yield task

    def _run(self, pool: DecodePool, batch_size: int) -> None:
        try:
            for batch in pool.batches(self._tasks(), batch_size):
                pixels = [np.concatenate(batch.chunks)] if batch.chunks else []  # its chunks are reused next
                self.done.put((batch.decoded, pixels, batch.failed))
            self.done.put(_END)
        except BaseException as exc:  # the pool's own errors (an unguarded script, say) reach the consumer
            self.done.put(exc)
