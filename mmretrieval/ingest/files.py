"""Embedding image files outside any collection, streamed: what ``mmr classify`` runs on.

The ingestion stages without the catalog: :func:`.reader.discover` walks folders, files and list files as the
decoding pool asks for work, each file is decoded in a worker process (a file that crashes the decoder, or
takes longer than ``timeout_s``, fails alone), and the model embeds whole batches, identical files once.
Batches come in the order files finish decoding; each vector names its file. Memory: the batches in flight and
the paths of the files in flight, whatever the number of files (10 M paths are never held at once).
"""

from __future__ import annotations

import collections
import itertools
import os
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np
import numpy.typing as npt

from ..images.decode import DEFAULT_MAX_PIXELS
from ..models.encoder import DualEncoder
from .batches import DecodeTask, Failed, IngestConfig, Skipped
from .reader import PathStream, discover, source_list
from .runner import NothingKnown, decoded_batches, embed_batch


@dataclass(frozen=True)
class FileFailure:
    """A file that was not embedded, and why."""

    path: str
    reason: str  # a stable code: missing, not_an_image, decode_timeout, decoder_crashed, …
    message: str


@dataclass(frozen=True)
class EmbeddedFiles:
    """One batch of :func:`embed_files`: the files embedded, their vectors, and the files that failed since the
    last batch."""

    paths: tuple[str, ...]  # absolute, one per row of ``vectors``
    vectors: npt.NDArray[np.float32] = field(repr=False)  # (len(paths), dim) unit vectors
    failed: tuple[FileFailure, ...] = ()


def embed_files(encoder: DualEncoder, sources: str | bytes | os.PathLike | Sequence[str | bytes | os.PathLike], *,
                batch_size: int | None = None, workers: int | None = None, timeout_s: float = 60.0,
                max_pixels: int = DEFAULT_MAX_PIXELS) -> Iterator[EmbeddedFiles]:
    """Embed the images ``sources`` name (folders, image files, ``.txt``/``.csv`` lists), batch by batch.

    A source that does not exist, or a file that cannot be decoded, is reported in ``failed``; it never stops
    the others.

    Args:
        encoder: the model.
        sources: what to embed (one path alone is one source; `~` is expanded).
        batch_size: images per model call (default 256 on CUDA, 32 on CPU).
        workers: decoding processes (default: cores - 1 on CPU; 0 decodes in this process, without isolation).
        timeout_s: a file taking longer than this to decode is failed.
        max_pixels: an image with more pixels is failed (``decompression_bomb``).

    Raises:
        CollectionError: an empty source, or a list file without a path column.
        SettingError: a batch size, worker count, timeout or pixel limit out of range.
    """
    config = IngestConfig.for_device(encoder.device.type, batch_size, workers, timeout_s=timeout_s,
                                     max_pixels=max_pixels)
    listed = source_list(sources)  # here, not on the pool's feeder thread: a bad source is the caller's error
    in_flight: dict[int, str] = {}  # task id -> path, from the pool's feeder thread until the result comes
    skipped: collections.deque[Skipped] = collections.deque()
    ids = itertools.count()

    def tasks() -> Iterator[DecodeTask]:  # read on the pool's feeder thread, as workers need tasks
        for source in listed:
            if not isinstance(source, PathStream) and not os.path.lexists(source):
                skipped.append(Skipped(os.path.abspath(source), "missing", f"{source} does not exist"))
                continue
            for found in discover([source]):
                if isinstance(found, Skipped):
                    skipped.append(found)
                    continue
                task = DecodeTask(next(ids), found.path)
                in_flight[task.image_id] = task.path
                yield task

    def failures(failed: Sequence[Failed]) -> tuple[FileFailure, ...]:
        reported = [FileFailure(s.path, s.reason, s.message) for s in _drain(skipped)]
        return tuple(reported + [FileFailure(in_flight.pop(f.image_id), f.reason, f.message) for f in failed])

    for decoded, pixels, failed in decoded_batches(encoder, tasks(), config):
        batch = embed_batch(encoder, NothingKnown(), decoded, pixels, ())
        yield EmbeddedFiles(tuple(in_flight.pop(d.image_id) for d in decoded), batch.embeddings, failures(failed))
    if skipped:  # found after the last batch, or no file to decode at all
        yield EmbeddedFiles((), np.zeros((0, encoder.dim), np.float32), failures(()))


def _drain(items: collections.deque[Skipped]) -> list[Skipped]:
    taken = []
    while items:
        taken.append(items.popleft())
    return taken
