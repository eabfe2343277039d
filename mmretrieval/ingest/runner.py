"""The ingestion driver: plan, then decode -> embed -> write, one batch at a time.

Planning compares what the reader finds with the catalog by (path, size, mtime): unchanged files are skipped
(except those that failed for a transient reason, such as a timeout), new and changed ones are marked
``pending`` (which also assigns their ids, before any decoding), and a re-run after a crash simply finds the
``pending`` rows the crash left. With ``--prune``, the rows of vanished files that hold a vector go only once the
new rows are committed, so that a moved file reuses its vector by content hash; a run killed before that prunes
them on the next run.
"""

from __future__ import annotations

import collections
import contextvars
import logging
import os
import queue
import threading
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Protocol, Sequence, TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from ..collection.catalog import Catalog, FileState, encode_path
from ..errors import CollectionError
from .batches import (Decoded, DecodeTask, EmbeddedBatch, Failed, IngestConfig, IngestSummary, SourceFile, Skipped,
                      chunked, skip_counts)
from .pool import DecodePool, reserve_files_for_batches
from .reader import LIST_SUFFIXES, FileDecoder, PathStream, discover
from .writer import CatalogWriter

if TYPE_CHECKING:
    import torch

    from ..models.encoder import DualEncoder
    from .routing import Pixels

logger = logging.getLogger(__name__)

Progress = Callable[[int, int], None]  # (done, total)
# Failures that say more about the moment than the file (a busy machine, a flaky disk): retried every run.
TRANSIENT_REASONS = frozenset({"decode_timeout", "decoder_crashed", "unreadable"})
PLAN_CHUNK = 10_000  # files looked up and marked pending per catalog transaction


def run_ingest(catalog: Catalog, encoder: DualEncoder | Callable[[], DualEncoder], sources: Sequence[str],
               config: IngestConfig, progress: Progress | None = None) -> IngestSummary:
    """Bring the catalog up to date with ``sources``.

    Args:
        catalog: the collection's catalog (its model identity already checked against ``encoder``).
        encoder: the model that embeds new images, or a callable that loads it: called only when something
            needs embedding, so a run over unchanged files never loads a model.
        sources: folders, image files, and ``.txt``/``.csv`` list files.
        config: batch size and workers (those left None chosen for the model's device once it is loaded),
            per-file timeout, prune.
        progress: called with ``(done, total)`` after each committed batch.

    Returns:
        Counts of embedded, unchanged, duplicate, failed (by reason) and pruned files.

    Raises:
        CollectionError: a source that does not exist or an unreadable list file; with ``config.prune``, a
            source folder that is missing or unreadable (nothing is deleted then).
    """
    scope = prune_scope(sources) if config.prune else None  # refuses before anything changes
    if config.batch_size is not None and config.workers is not None:  # so does this, when the sizes are known
        reserve_files_for_batches(config.workers, config.batch_size, buffer=2 * config.batch_size)
    unchanged, skipped = plan(catalog, discover(sources), walked_folders(sources))
    # vanished rows with no vector to lend (pending, failed, skipped) go first: nothing decodes a file that is gone
    pruned = prune_vanished(catalog, scope, skipped, not_ok_only=True)
    total = catalog.pending_count()
    counts: collections.Counter[str] = collections.Counter()
    if progress:
        progress(0, total)
    if total:
        from ..models.encoder import DualEncoder  # torch: only now that something needs the model

        loaded = encoder if isinstance(encoder, DualEncoder) else encoder()
        config = config.on_device(loaded.device.type)  # (the decoding pool makes room for its files as it starts)
        tasks = (DecodeTask(image_id, path) for image_id, path in catalog.iter_pending())  # paged, not all paths
        counts.update(_embed_tasks(catalog, loaded, tasks, total, config, progress))
    pruned += prune_vanished(catalog, scope, skipped)  # the rest, now that moved files have reused their vectors
    failed = {key.removeprefix("failed:"): count for key, count in sorted(counts.items())
              if key.startswith("failed:")}
    return IngestSummary(embedded=counts["embedded"], unchanged=unchanged, duplicates=counts["duplicates"],
                         failed=failed, pruned=pruned, skipped=skip_counts(skipped))


def _embed_tasks(catalog: Catalog, encoder: DualEncoder, tasks: Iterable[DecodeTask], total: int,
                 config: IngestConfig, progress: Progress | None) -> collections.Counter[str]:
    """Decode, embed and commit ``tasks`` batch by batch; returns counts (embedded, duplicates, failed:REASON).

    Commits run on a writer thread, so the model embeds the next batch while SQLite commits the last one; the
    batches still waiting for it lend their vectors by content hash (:class:`_Uncommitted`).
    """
    counts: collections.Counter[str] = collections.Counter()
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
    as a duplicate whatever the batch size). Holds ``batches`` batches of vectors (2 MB at 4 x 256 x 512)."""

    def __init__(self, catalog: Catalog, batches: int):
        self.catalog = catalog
        self.recent: collections.deque[dict[str, npt.NDArray[np.float32]]] = collections.deque(maxlen=batches)

    def vectors_by_hash(self, hashes: Sequence[str]) -> dict[str, npt.NDArray[np.float32]]:
        known = self.catalog.vectors_by_hash(hashes)
        for vectors in self.recent:
            known.update((h, vectors[h]) for h in hashes if h not in known and h in vectors)
        return known

    def add(self, batch: EmbeddedBatch) -> None:
        self.recent.append(dict(zip((item.content_hash for item in batch.decoded), batch.embeddings)))


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


def prune_vanished(catalog: Catalog, scope: PruneScope | None, skipped: Sequence[Skipped],
                   not_ok_only: bool = False) -> int:
    """Delete the rows of vanished files within ``scope`` (None: nothing), except under the folders that this
    run's walk could not list (``skipped``); ``not_ok_only``: only rows that are not ``ok``. Returns how many."""
    if scope is None:
        return 0
    unreadable = [encode_path(s.path) + os.sep.encode() for s in skipped if s.reason == "unreadable"]
    return catalog.prune_missing(scope.folders, scope.entries(), keep_under=unreadable, not_ok_only=not_ok_only)


@dataclass(frozen=True)
class PruneScope:
    """What a ``--prune`` may delete: rows under these folders, or with these exact paths (catalog keys)."""

    folders: tuple[bytes, ...]  # absolute folder paths ending in a separator
    paths: tuple[bytes, ...]  # single files given
    lists: tuple[str, ...] = ()  # list files given: their entries count as files given

    def entries(self) -> Iterator[bytes]:
        """The files given and the entries of the list files, read as a stream (a 10 M-line list is not held)."""
        yield from self.paths
        for list_file in self.lists:
            yield from (encode_path(item.path) for item in discover([list_file]))


def prune_scope(sources: Sequence[str | PathStream]) -> PruneScope:
    """The rows a prune of ``sources`` may touch; only the sources given, never the rest of the collection.

    Raises:
        CollectionError: a source that is missing or unreadable: its files may only be on a drive that is not
            mounted, so nothing is pruned (the message names it).
    """
    folders: list[bytes] = []
    paths: list[bytes] = []
    lists: list[str] = []
    for source in sources:
        if isinstance(source, PathStream):
            raise CollectionError(f"--prune cannot take its files from {source}, which is read once; save the list "
                                  "to a .txt file and pass that")
        path = os.path.abspath(source)
        if not os.path.lexists(path):
            raise CollectionError(f"--prune refused: source {source} is missing (an unmounted drive?); nothing was "
                                  "deleted. Reconnect it, or leave out --prune")
        if os.path.isdir(path):
            try:
                with os.scandir(path) as entries:
                    next(entries, None)
            except OSError as exc:
                raise CollectionError(f"--prune refused: source folder {source} is unreadable ({exc.strerror}); "
                                      "nothing was deleted. Fix its permissions, or leave out --prune") from exc
            folders.append(encode_path(path).rstrip(os.sep.encode()) + os.sep.encode())
        elif os.path.splitext(path)[1].lower() in LIST_SUFFIXES:
            lists.append(path)
        else:
            paths.append(encode_path(path))
    return PruneScope(tuple(folders), tuple(paths), tuple(lists))


def walked_folders(sources: Sequence[str | PathStream]) -> list[bytes]:
    """Catalog keys (no trailing separator) of the ``sources`` that are folders: what the walk reads."""
    return [encode_path(source) for source in sources if isinstance(source, str) and os.path.isdir(source)]


def plan(catalog: Catalog, found: Iterable[SourceFile | Skipped],
         walked: Sequence[bytes] = ()) -> tuple[int, list[Skipped]]:
    """Mark new and changed files ``pending`` and record skips; returns (unchanged count, skips).

    Streams: :data:`PLAN_CHUNK` files at a time are looked up in the catalog and marked (one transaction each),
    so planning 10 M files holds one chunk, not every path. A run killed mid-plan leaves some rows ``pending``,
    which the next run embeds like any other.

    Args:
        found: what the reader found (:func:`~.reader.discover`).
        walked: catalog keys of the folders ``found`` walked (:func:`walked_folders`): their skipped rows that
            the walk no longer skips are cleared (see :func:`stale_skips`).
    """
    unchanged = marked = 0
    skipped: dict[bytes, Skipped] = {}
    for chunk in chunked(found, PLAN_CHUNK):
        files: dict[bytes, SourceFile] = {}
        for item in chunk:
            key = encode_path(item.path)
            if isinstance(item, Skipped):
                skipped[key] = item
            else:
                files[key] = item  # a path listed twice keeps its last entry
        known = catalog.file_states_of(list(files))
        to_mark = []
        for key, item in files.items():
            state = known.get(key)
            if state and _settled(state) and (state.size, state.mtime_ns) == (item.size, item.mtime_ns):
                unchanged += 1
                if item.caption is not None:
                    catalog.set_caption(key, item.caption)
            else:
                to_mark.append((key, item.size, item.mtime_ns, item.caption))
        if to_mark:
            catalog.mark_pending(to_mark)
            marked += len(to_mark)
    cleared = stale_skips(catalog, walked, skipped)
    if skipped or cleared:
        catalog.mark_skipped([(key, s.reason, s.message) for key, s in skipped.items()], cleared)
    logger.info("planned: %d to embed, %d unchanged, %d skipped, %d skips cleared", marked, unchanged, len(skipped),
                len(cleared))
    return unchanged, list(skipped.values())


def stale_skips(catalog: Catalog, walked: Sequence[bytes], skipped: dict[bytes, Skipped]) -> list[bytes]:
    """Skipped rows under the ``walked`` folders whose cause is gone: this walk did not skip them (``skipped``:
    what it did skip) and each is now a folder that lists (one that was unreadable), where the walk goes (not
    under a folder it could not list, no hidden name below the folder walked, no link out of it). A skipped path
    that no longer exists is left to ``--prune``, like any vanished file."""
    sep = os.sep.encode()
    unreadable = tuple(key + sep for key, s in skipped.items() if s.reason == "unreadable")
    stale: list[bytes] = []
    for root in walked:
        real_root = os.path.realpath(root)
        stale += [path for path in catalog.skipped_under(root)
                  if path not in skipped and not path.startswith(unreadable) and _lists_inside(path, root, real_root)]
    return stale


def _lists_inside(path: bytes, root: bytes, real_root: bytes) -> bool:
    """Whether ``path`` is a folder that lists now, reached from ``root`` by the walk's rules."""
    if any(name.startswith(b".") for name in path[len(root):].split(os.sep.encode())):
        return False
    if os.path.commonpath([os.path.realpath(path), real_root]) != real_root:
        return False
    try:
        with os.scandir(path) as entries:
            next(entries, None)
    except OSError:  # gone, not a folder, or still unreadable
        return False
    return True


def _settled(state: FileState) -> bool:
    """Embedded, or failed for a reason that the same bytes would fail for again."""
    return state.status == "ok" or (state.status == "failed" and state.reason not in TRANSIENT_REASONS)


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
        known.update(zip(first_row, encoder.encode_prepared(_model_input(pixels, rows, len(hashes), encoder.device))))
    dim = encoder.dim
    embeddings = np.stack([known[h] for h in hashes]) if hashes else np.zeros((0, dim), np.float32)
    return EmbeddedBatch(tuple(decoded), embeddings.astype(np.float32), tuple(failed),
                         duplicates=len(hashes) - len(first_row))


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
