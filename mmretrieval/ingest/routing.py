"""The decode stage of a GPU ingest: JPEGs decode on the model's device, everything else in the CPU pool, at once.

Reader threads read, hash and probe the files (:func:`~.device_decode.probe`) a group ahead of the device, so
the disk, the hashing and the JPEG headers overlap with decoding; what the device cannot take goes on a queue
that the CPU pool, on its own thread, works through meanwhile. Each batch that comes out carries its records
and pixels together (a device tensor, or one array from the CPU side), so a file that fails anywhere never
moves another file's pixels.

The two decoders share the JPEGs too (``share_jpegs``): before each group goes to the device, the CPU side
takes as many of its JPEGs as its workers have room for, the largest first (Pillow's draft mode decodes a big
JPEG at 1/2-1/8 scale, while nvJPEG decodes every pixel). So the split follows the rates the two sides reach
on this machine, measured by how fast the CPU side empties, rather than a fixed share. Room counts only workers
that are up: an idle pool gets one JPEG, to start a worker. A run shorter than a worker's start-up (~0.5 s from a
light main module) still ends waiting for that worker and its one file, but not for a full share of JPEGs.
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

from ..images.decode import DEFAULT_MAX_PIXELS
from .batches import Decoded, DecodeTask, Failed, chunked
from .device_decode import DeviceJpegDecoder, Probed, probe
from .pool import DecodePool, Handoff

logger = logging.getLogger(__name__)

Pixels = Sequence[npt.NDArray[np.uint8]] | torch.Tensor  # a batch's decoded images, rows in order
SplitBatch = tuple[Sequence[Decoded], Pixels, Sequence[Failed]]
_END = object()
_CPU_READY = 4  # CPU-side batches waiting for the model before the CPU pool is held back


def split_batches(tasks: Iterable[DecodeTask], decoder: DeviceJpegDecoder, pool: DecodePool, batch_size: int,
                  read_threads: int, share_jpegs: bool = True,
                  max_pixels: int = DEFAULT_MAX_PIXELS) -> Iterator[SplitBatch]:
    """Decode ``tasks``: JPEGs on the device in batches of up to ``batch_size``, the rest in ``pool``.

    Args:
        tasks: the rows to decode (read lazily, a group ahead).
        decoder: the device decoder.
        pool: the CPU pool, for what the device cannot decode (and the reasons of files nobody can).
        batch_size: files per device batch, and most results per CPU batch.
        read_threads: threads reading, hashing and probing files.
        share_jpegs: the CPU pool also takes JPEGs while its workers have room (see the module docstring).
        max_pixels: larger JPEGs go to the pool, which refuses them with its reason.

    Yields:
        (records, their pixels, failures) per batch, device and CPU batches interleaved as they are ready.
    """
    cpu = _CpuSide(pool, batch_size)
    try:
        with ThreadPoolExecutor(read_threads, thread_name_prefix="mmr-read") as readers:
            for probed in probed_groups(readers, tasks, batch_size, max_pixels):
                cpu.submit(item for item in probed if not isinstance(item, Probed))
                jpegs = [item for item in probed if isinstance(item, Probed)]
                if share_jpegs:
                    jpegs, taken = largest_to_cpu(jpegs, cpu.room())
                    cpu.submit(item.task for item in taken)
                decoded, pixels, for_cpu = decoder.decode(jpegs)
                cpu.submit(for_cpu)
                if decoded:
                    yield decoded, pixels, ()
                yield from cpu.ready()
        yield from cpu.rest()
    finally:
        cpu.stop()


def probed_groups(readers: ThreadPoolExecutor, tasks: Iterable[DecodeTask], size: int,
                  max_pixels: int = DEFAULT_MAX_PIXELS) -> Iterator[list[Probed | DecodeTask]]:
    """Probe ``tasks`` on the reader threads, ``size`` at a time, the next group under way while one is used."""
    window: collections.deque[list[Future]] = collections.deque()
    for group in chunked(tasks, size):
        window.append([readers.submit(probe, task, max_pixels) for task in group])
        if len(window) > 1:
            yield [future.result() for future in window.popleft()]
    while window:
        yield [future.result() for future in window.popleft()]


def largest_to_cpu(jpegs: list[Probed], room: int) -> tuple[list[Probed], list[Probed]]:
    """Split ``jpegs`` into (for the device, for the CPU): the CPU gets the ``room`` largest, by pixels."""
    if room <= 0 or not jpegs:
        return jpegs, []
    by_size = sorted(range(len(jpegs)), key=lambda i: jpegs[i].width * jpegs[i].height, reverse=True)
    to_cpu = set(by_size[:room])
    return ([item for i, item in enumerate(jpegs) if i not in to_cpu],
            [item for i, item in enumerate(jpegs) if i in to_cpu])


class _CpuSide:
    """The CPU pool on its own thread, fed from a queue; its batches come back with their pixels copied out."""

    def __init__(self, pool: DecodePool, batch_size: int):
        self.todo: queue.SimpleQueue = queue.SimpleQueue()
        self.stopping = threading.Event()
        self.done = Handoff(_CPU_READY, self.stopping)  # (a plain put could wait for good: see Handoff)
        self.pool = pool
        self.per_worker = pool.tasks_per_busy_worker(batch_size)
        self.submitted = 0  # tasks handed to the CPU side
        self.made_before = pool.results_made  # the pool's count of results before this run
        self.thread = threading.Thread(target=self._run, args=(pool, batch_size), daemon=True, name="mmr-cpu-decode")
        self.thread.start()

    def submit(self, tasks: Iterable[DecodeTask]) -> None:
        for task in tasks:
            self.todo.put(task)
            self.submitted += 1

    def room(self) -> int:
        """How many more tasks the CPU side can take now without any of them waiting for a worker: enough to
        keep each ready worker busy (the group it decodes and the next). Before any worker is up, one task, so
        that an all-JPEG folder starts the pool too; none when the pool decodes inline, on this very thread."""
        if self.pool.workers <= 0:
            return 0
        outstanding = self.submitted - (self.pool.results_made - self.made_before)
        ready = self.pool.ready_workers
        return (ready * self.per_worker if ready else 1) - outstanding

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
