"""The ingestion driver: plan (:mod:`.planning`), then decode -> embed -> write, one batch at a time.

A re-run after a crash simply finds the ``pending`` rows the crash left. With ``--prune``, the rows of vanished
files that hold a vector go only once the new rows are committed, so that a moved file reuses its vector by
content hash; a run killed before that prunes them on the next run.
"""

from __future__ import annotations

import collections
import contextvars
import logging
import queue
import threading
from typing import Callable, Iterable, Iterator, Protocol, Sequence, TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from ..collection.catalog import Catalog
from .batches import Decoded, DecodeTask, EmbeddedBatch, Failed, IngestConfig, IngestSummary, skip_counts
from .planning import plan_sources, prune_scope, prune_vanished, unmounted_folders
from .pool import DecodePool, reserve_files_for_batches
from .reader import FileDecoder
from .writer import CatalogWriter

if TYPE_CHECKING:
    import torch

    from ..models.encoder import DualEncoder
    from .routing import Pixels

logger = logging.getLogger(__name__)
NON_FINITE = ("the model gave this image a vector with NaN or infinite values (its weights, or a number format too "
              "narrow for them: try --precision fp32)")

Progress = Callable[[int, int], None]  # (done, total)


def run_ingest(catalog: Catalog, encoder: DualEncoder | Callable[[], DualEncoder], sources: Sequence[str],
               config: IngestConfig, progress: Progress | None = None,
               hashed: Progress | None = None) -> IngestSummary:
    """Bring the catalog up to date with ``sources``.

    Args:
        catalog: the collection's catalog (its model identity already checked against ``encoder``).
        encoder: the model that embeds new images, or a callable that loads it: called only when something
            needs embedding, so a run over unchanged files never loads a model.
        sources: folders, image files, and ``.txt``/``.csv`` list files.
        config: batch size and workers (those left None chosen for the model's device once it is loaded),
            per-file timeout, prune.
        progress: called with ``(done, total)`` after each committed batch.
        hashed: called with ``(files hashed, None)`` while planning reads files (touched ones, copies, imported
            rows' files: see :func:`.planning.plan`).

    Returns:
        Counts of embedded, unchanged, duplicate, failed (by reason) and pruned files.

    Raises:
        CollectionError: a source that does not exist or an unreadable list file; with ``config.prune``, a
            source folder that is missing or unreadable (nothing is deleted then).
    """
    scope = prune_scope(sources, catalog, config.forget_mounts) if config.prune else None  # refuses first
    if config.batch_size is not None and config.workers is not None:  # so does this, when the sizes are known
        reserve_files_for_batches(config.workers, config.batch_size, buffer=2 * config.batch_size)
    planned = plan_sources(catalog, sources, config.checksum, hashed, pruning=scope is not None,
                           max_pixels=config.max_pixels)
    skipped = planned.skipped
    # vanished rows with no vector to lend (pending, failed, skipped) go first: nothing decodes a file that is gone
    pruned = prune_vanished(catalog, scope, skipped, not_ok_only=True)
    total = catalog.pending_count()
    counts: collections.Counter[str] = collections.Counter()
    if total:
        from ..models.encoder import DualEncoder  # torch: only now that something needs the model

        loaded = encoder if isinstance(encoder, DualEncoder) else encoder()
        config = config.on_device(loaded.device.type)  # (the decoding pool makes room for its files as it starts)
        tasks = (DecodeTask(image_id, path) for image_id, path in catalog.iter_pending())  # paged, not all paths
        counts.update(_embed_tasks(catalog, loaded, tasks, total, config, progress))
    elif progress:
        progress(0, 0)
    pruned += prune_vanished(catalog, scope, skipped)  # the rest, now that moved files have reused their vectors
    failed = {key.removeprefix("failed:"): count for key, count in sorted(counts.items())
              if key.startswith("failed:")}
    return IngestSummary(embedded=counts["embedded"], unchanged=planned.unchanged,
                         duplicates=planned.copies - planned.moved + counts["duplicates"], moved=planned.moved,
                         failed=failed, pruned=pruned,
                         skipped=skip_counts(skipped, planned.aliases), adopted=planned.adopted,
                         unmounted=unmounted_folders(scope))


def _embed_tasks(catalog: Catalog, encoder: DualEncoder, tasks: Iterable[DecodeTask], total: int,
                 config: IngestConfig, progress: Progress | None) -> collections.Counter[str]:
    """Decode, embed and commit ``tasks`` batch by batch; returns counts (embedded, duplicates, failed:REASON).

    Commits run on a writer thread, so the model embeds the next batch while SQLite commits the last one; the
    batches still waiting for it lend their vectors by content hash (:class:`_Uncommitted`).
    """
    counts: collections.Counter[str] = collections.Counter()
    if progress:  # once the model is loaded: a bar's rate is the embedding's, not the model load's
        progress(0, total)
    writer = _WriterThread(CatalogWriter(catalog), total, progress)
    known = _Uncommitted(catalog, batches=writer.depth + 2)
    try:
        for decoded, pixels, failed in decoded_batches(encoder, tasks, config):
            batch = embed_batch(encoder, known, decoded, pixels, failed)
            known.add(batch)
            writer.submit(batch)
            counts.update(f"failed:{item.reason}" for item in batch.failed)
            counts["embedded"] += len(batch.decoded) - batch.duplicates
            counts["duplicates"] += batch.duplicates
    except BaseException:
        writer.close()  # what was embedded is committed; the first error is the one to report
        raise
    writer.close()
    writer.check()
    return counts


class _Uncommitted:
    """The catalog's vectors by content hash, and those of the last ``batches`` embedded batches, which the writer
    thread may not have committed yet: the same bytes met again a batch later are not embedded again (and count
    as a duplicate whatever the batch size). A batch's rows keep, beside their new vectors, the ones their commit
    replaces: two names swapped (or a renumbering) hand each other their bytes, and the second file finds the
    first one's old vector here once the writer has committed the first. Holds ``batches`` batches of up to
    twice their vectors (4 MB at 4 x 256 x 512)."""

    def __init__(self, catalog: Catalog, batches: int):
        self.catalog = catalog
        self.recent: collections.deque[dict[str, npt.NDArray[np.float32]]] = collections.deque(maxlen=batches)

    def vectors_by_hash(self, hashes: Sequence[str]) -> dict[str, npt.NDArray[np.float32]]:
        known = self.catalog.vectors_by_hash(hashes)
        for vectors in self.recent:
            known.update((h, vectors[h]) for h in hashes if h not in known and h in vectors)
        return known

    def add(self, batch: EmbeddedBatch) -> None:
        """Remember ``batch``'s vectors, and those of its rows' bytes before: call it before the batch is committed."""
        vectors = self.catalog.vectors_of_rows([item.image_id for item in batch.decoded])
        vectors.update(zip((item.content_hash for item in batch.decoded), batch.embeddings))
        self.recent.append(vectors)


class _WriterThread:
    """Commits :class:`EmbeddedBatch` records in order on its own thread, at most ``depth`` waiting.

    ``progress`` is called on that thread after each commit, in the caller's context (Gradio's progress bar
    reads the event it belongs to from context variables).
    """

    def __init__(self, writer: CatalogWriter, total: int, progress: Progress | None, depth: int = 2):
        self.depth = depth
        self.writer = writer
        self.total = total
        self.progress = progress
        self.committed = 0  # files whose results are committed
        self.error: BaseException | None = None
        self.queue: queue.Queue[EmbeddedBatch | None] = queue.Queue(maxsize=depth)
        self.thread = threading.Thread(target=contextvars.copy_context().run, args=(self._run,), daemon=True,
                                       name="mmr-writer")
        self.thread.start()

    def submit(self, batch: EmbeddedBatch) -> None:
        self.check()
        self.queue.put(batch)

    def close(self) -> None:
        """Commit what was submitted and stop the thread."""
        self.queue.put(None)
        self.thread.join()

    def check(self) -> None:
        """Raise the error a commit ran into, if one did."""
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        while (batch := self.queue.get()) is not None:
            if self.error is not None:
                continue  # keep taking batches, so that the caller never blocks, but write no more
            try:
                self.writer.write(batch)
                self.committed += len(batch.decoded) + len(batch.failed)
                if self.progress:
                    self.progress(self.committed, self.total)
            except BaseException as exc:  # reported to the caller by check()
                self.error = exc


def decoded_batches(encoder: DualEncoder, tasks: Iterable[DecodeTask],
                     config: IngestConfig) -> Iterator[tuple[Sequence[Decoded], Pixels, Sequence[Failed]]]:
    """(records, their pixels, failures) per batch: from the CPU pool, or split between it and the device."""
    pool = DecodePool(encoder.preparer, config.workers, config.timeout_s, buffer=2 * config.batch_size,
                      decode=FileDecoder(config.max_pixels))
    if not _decode_on_device(encoder, config):
        for batch in pool.batches(tasks, config.batch_size):
            yield batch.decoded, batch.chunks, batch.failed
        return
    from .device_decode import DeviceJpegDecoder
    from .routing import split_batches

    decoder = DeviceJpegDecoder(encoder.preparer.preprocess, encoder.device)
    yield from split_batches(tasks, decoder, pool, config.batch_size, config.read_threads, config.share_jpegs,
                             config.max_pixels)


def _decode_on_device(encoder: DualEncoder, config: IngestConfig) -> bool:
    from .device_decode import DeviceJpegDecoder

    supported = DeviceJpegDecoder.supports(encoder.preparer.preprocess)
    if config.device_decode is None:
        return encoder.device.type == "cuda" and supported
    if config.device_decode and not supported:
        logger.warning("JPEGs are decoded on the CPU: the device decoder does not reproduce this model's "
                       "preprocessing (%s)", encoder.preparer.preprocess)
    return config.device_decode and supported


class KnownVectors(Protocol):
    """Where :func:`embed_batch` looks up the vectors of contents seen before: the catalog, or a stand-in."""

    def vectors_by_hash(self, hashes: Sequence[str]) -> dict[str, npt.NDArray[np.float32]]: ...


class NothingKnown:
    """A catalog with no stored vectors, for :func:`embed_batch` where there is none to ask (a Ray embed actor,
    files embedded outside any collection): the model still runs once per distinct content in a batch."""

    def vectors_by_hash(self, hashes: object) -> dict[str, npt.NDArray[np.float32]]:
        return {}


def embed_batch(encoder: DualEncoder, catalog: KnownVectors, decoded: Sequence[Decoded], pixels: Pixels,
                failed: Sequence[Failed]) -> EmbeddedBatch:
    """Embed decoded images, running the model once per distinct content not already in the catalog.

    Args:
        decoded: the images, in the order of the rows of ``pixels``.
        pixels: their prepared uint8 pixels: arrays whose rows taken in order match ``decoded`` (the decoding
            pool's chunks, used as they are), or one tensor (from the device decoder, already on the device).
        failed: passed through to the writer.
    """
    hashes = [item.content_hash for item in decoded]
    known = catalog.vectors_by_hash(hashes)
    first_row: dict[str, int] = {}
    for row, content_hash in enumerate(hashes):
        if content_hash not in known:
            first_row.setdefault(content_hash, row)
    if first_row:
        rows = list(first_row.values())
        made = encoder.encode_prepared(_model_input(pixels, rows, len(hashes), encoder.device))
        known.update((content_hash, vector) for content_hash, vector in zip(first_row, made)
                     if np.isfinite(vector).all())  # a NaN stored would answer every query with NaN
    kept = [item for item in decoded if item.content_hash in known]
    failed = [*failed, *(Failed(item.image_id, "model_output", NON_FINITE) for item in decoded
                         if item.content_hash not in known)]
    dim = encoder.dim
    embeddings = np.stack([known[item.content_hash] for item in kept]) if kept else np.zeros((0, dim), np.float32)
    embedded_now = sum(content_hash in known for content_hash in first_row)
    return EmbeddedBatch(tuple(kept), embeddings.astype(np.float32), tuple(failed),
                         duplicates=len(kept) - embedded_now)


def _model_input(pixels: Pixels, rows: list[int], count: int, device: torch.device) -> torch.Tensor:
    """The chosen ``rows`` of the chunks in ``pixels`` as one uint8 tensor, on ``device`` when that saves a copy.

    When every row is wanted (no duplicate in the batch), chunks go to a GPU one by one and are joined there,
    so the host never copies them; on the CPU they are joined once.
    """
    import torch

    if isinstance(pixels, torch.Tensor):
        return pixels if len(rows) == count else pixels[rows]
    if len(rows) == count and device.type == "cuda":
        return torch.cat([torch.from_numpy(chunk).to(device, non_blocking=True) for chunk in pixels])
    joined = pixels[0] if len(pixels) == 1 else np.concatenate(pixels)
    return torch.from_numpy(joined if len(rows) == count else joined[rows])
