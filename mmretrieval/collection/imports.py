"""Importing precomputed embeddings into a collection, without re-embedding anything.

Layouts read:

- clip-retrieval's output folder, ``img_emb/img_emb_N.npy`` (``(rows, dim)`` float16/32/64) next to
  ``metadata/metadata_N.parquet`` (an ``image_path`` column and an optional ``caption`` column), shard ``N``
  matched by number;
- this project's own layout: another collection's folder (``catalog.sqlite`` + ``segments/``), one shard per
  segment, its live rows only (:mod:`.import_segments`). Its model must be this collection's model (same key),
  which is a stronger check than the dimension.

Nothing of a shard lands unless all of it passes: the embedding file opens (a truncated ``.npy`` does not),
its dimension is the collection model's, the parquet has as many rows as the ``.npy`` and no path is empty
(checked before the shard's transaction begins), and every value is finite and no vector is zero (checked
block by block while SQLite inserts the rows and another thread writes the checked blocks: one pass over the
vectors; a bad block rolls the transaction back). Vectors that are not unit length are renormalised (and
counted). A bad shard raises :class:`~mmretrieval.errors.CollectionError` naming the file and the fault;
shards before it stay committed. Each shard lands in one catalog transaction, together with a record of the
shard (source folder, shard name, file sizes and mtimes, the range of ids it added), so a run killed at any
moment (SIGKILL included) leaves each shard either fully in or not in at all, and a re-run skips recorded
shards outright and any path the collection already knows.

Paths: absolute paths are kept; relative ones are resolved against ``root`` (default: the import folder, and
then, when none of the first shard's first 100 relative paths names a file there, the import is refused before
anything lands: clip-retrieval writes them relative to where it ran);
URIs (``scheme://...``) are kept verbatim. Imported rows have status ``ok`` and no file stats (size and mtime
0): the files may not exist on this machine, and ``mmr similar PATH`` works from the stored vector.

Memory: two shards' paths and captions (Python objects, and as one JSON text: the one landing and the next,
read ahead) plus up to six blocks of :data:`~.import_vectors.BLOCK_ROWS` vectors in flight between the threads
(two checked ahead of the append, two waiting to be hashed, one being written, and the next shard's first);
the ``.npy`` is memory-mapped and read once (twice for a shard with paths the collection already has).
Measured with 500,000-row shards of 512-d float16, torch and open_clip included: 552 MiB peak RssAnon at 1 M,
616-628 MiB at 10 M (``bench/scale.py --import-only``).
"""

from __future__ import annotations

import gc
import logging
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

from ..errors import CollectionError
from .catalog import is_collection, is_uri
from .exports import pyarrow_modules
from .import_sources import (PATH_COLUMN, CheckedShard, Shard, ShardFiles, catalog_key, collection_model,
                             exported_model, find_any, import_source)

if TYPE_CHECKING:
    from .collection import Collection

__all__ = ["ImportSummary", "collection_model", "exported_model", "import_embeddings", "import_source"]

logger = logging.getLogger(__name__)

Progress = Callable[[int, int], None]  # (rows done, rows total)
ROOT_SAMPLE = 100  # relative paths looked for, without --root, before the first shard lands


@dataclass(frozen=True)
class ImportSummary:
    """What one import did."""

    source: str  # the imported folder
    rows_added: int = 0
    rows_known: int = 0  # rows skipped: the collection already had their path
    shards_added: int = 0
    shards_skipped: int = 0  # imported by an earlier run (same files)
    renormalised: int = 0
    elapsed_s: float = 0.0  # wall time of checking and landing the shards (opening the collection not included)
    index_s: float = 0.0  # wall time of bringing the index up to date afterwards
    cpu_s: float = 0.0  # CPU time (all threads) of checking and landing: core-seconds, whatever else ran
    index_cpu_s: float = 0.0  # CPU time of the index update


def import_embeddings(collection: "Collection", directory: str | os.PathLike, *, root: str | os.PathLike | None = None,
                      progress: Progress | None = None, update_index: bool = True) -> ImportSummary:
    """Import a clip-retrieval output folder (or another collection's folder) shard by shard, then update the index.

    Args:
        collection: an open, writable collection; its model's dimension is the one every shard must have.
        directory: the folder holding ``img_emb/`` and ``metadata/``, or another collection of the same model.
        root: where relative ``image_path`` values are resolved (default: ``directory``).
        progress: ``(rows done, rows total)`` at the start, as each block of a shard is written, and after
            each shard.
        update_index: False leaves the index for a later ``mmr index`` (several imports in a row: build once).

    Returns:
        Rows added, rows skipped as already known, shards added and skipped, vectors renormalised.

    Raises:
        CollectionError: a missing folder, a bad shard (nothing of it lands; earlier shards stay), or another
            process writing to the collection.
    """
    from .import_writer import ShardLanding, ensure_schema, shard_seen

    started, started_cpu = time.perf_counter(), time.process_time()
    source = import_source(directory)
    base = Path(os.path.abspath(root)) if root is not None else source
    shards = find_any(source, collection)
    _warn_of_what_stays_behind(source, shards)
    total = sum(shard.rows() for shard in shards)
    done = 0
    counts = dict(rows_added=0, rows_known=0, shards_added=0, shards_skipped=0, renormalised=0)
    busy = collection.busy_message("import")
    with (collection.writing(busy, update_index), _no_cycle_collection(),
          collection.catalog.checkpoints_aside() as checkpoint,
          ThreadPoolExecutor(1, thread_name_prefix="mmr-import-check") as checker,
          ShardLanding(collection) as landing):
        # (the writer lock cleans what a killed writer left, and catches the index up on the way out)
        ensure_schema(collection.catalog)
        fingerprints = [shard.fingerprint() for shard in shards]
        new = [not shard_seen(collection.catalog, str(source), shard.name, fingerprint)
               for shard, fingerprint in zip(shards, fingerprints)]
        checks = _CheckedAhead(checker, [shard for shard, fresh in zip(shards, new) if fresh],
                               collection.identity.embed_dim, base)
        unchecked_root = root is None and not is_collection(source)
        if progress is not None and total:
            progress(0, total)
        for shard, fingerprint, fresh in zip(shards, fingerprints, new):
            if not fresh:
                counts["shards_skipped"] += 1
            else:
                checked = next(checks)  # a bad shard raises here or in land, after the shards before it landed
                if unchecked_root:  # the first shard with relative paths shows whether the default root is right
                    unchecked_root = not _check_default_root(shard, source)
                added, known, renormalised = landing.land(checked, str(source), fingerprint, checks.ready,
                                                          _within(progress, done, shard.rows(), total))
                counts["rows_added"] += added
                counts["rows_known"] += known
                counts["shards_added"] += 1
                counts["renormalised"] += renormalised
                checkpoint()
            done += shard.rows()
            if progress is not None:
                progress(done, total)
        landed_s, landed_cpu = time.perf_counter() - started, time.process_time() - started_cpu
    return ImportSummary(source=str(source), elapsed_s=round(landed_s, 3),
                         index_s=round(time.perf_counter() - started - landed_s, 3), cpu_s=round(landed_cpu, 3),
                         index_cpu_s=round(time.process_time() - started_cpu - landed_cpu, 3), **counts)


def _within(progress: Progress | None, done: int, rows: int, total: int) -> Callable[[int], None]:
    """A shard's block-by-block reports as ``progress`` reports: all but its last block, which the report after
    the shard's commit says (a caller may take ``done == total`` for the end of the import)."""
    def written(rows_written: int) -> None:
        if progress is not None and rows_written < rows:
            progress(done + rows_written, total)
    return written


def _warn_of_what_stays_behind(source: Path, shards: Sequence[Shard]) -> None:
    """Say what an import does not carry, where the source has it: labels and capture times (an ``mmr export``'s
    columns, or another collection's sets and photo rows). A later ``mmr ingest`` of the images' folder reads
    their dates and keeps the imported vectors (:mod:`~mmretrieval.ingest.imported`)."""
    if is_collection(source):
        from .catalog import CATALOG_NAME, Catalog

        catalog = Catalog(source / CATALOG_NAME, writable=False)
        try:
            kept = [what for what, sql in (("labels", "SELECT EXISTS(SELECT 1 FROM labels)"),
                                           ("capture times", "SELECT EXISTS(SELECT 1 FROM photos)"))
                    if catalog.select(sql)[0][0]]
        finally:
            catalog.close()
    else:
        files = next((shard for shard in shards if isinstance(shard, ShardFiles)), None)
        if files is None:
            return
        _, pq = pyarrow_modules("reading")
        columns = {"labels": "labels", "taken_local": "capture times"}
        try:
            with open(files.metadata, "rb") as handle:
                parquet = pq.ParquetFile(handle)
                present = [column for column in columns if column in parquet.schema_arrow.names]
                first = next(parquet.iter_batches(batch_size=1000, columns=present), None) if present else None
        except (OSError, ValueError):  # pyarrow's ArrowInvalid is a ValueError: the shard's own check names the file
            return
        kept = [columns[column] for column in present  # (an export of imported rows has the columns, empty)
                if first is not None and any(value for value in first.column(column).to_pylist())]
    advice = {"labels": "label the collection again (mmr label)",
              "capture times": "`mmr ingest` the images' folder to read their dates"}
    if kept:
        logger.warning("%s holds %s, which an import leaves behind (it carries vectors, paths and captions): %s",
                       source, " and ".join(kept), ", and ".join(advice[what] for what in kept))


def _check_default_root(shard: Shard, source: Path) -> bool:
    """Refuse to land relative paths against the default root (the import folder) when none of the first ones
    names a file there: clip-retrieval writes them relative to the folder `clip inference` ran in, and once landed
    a re-run skips the shard, so wrong paths would stay. The first :data:`ROOT_SAMPLE` relative values of the
    first 1,000 rows are read again from the parquet file (``../photos/x.jpg`` included, which resolves outside
    the folder). Returns whether there were relative values to check: until a shard has some, each next shard
    is checked (a first shard of absolute paths let a later one's relative paths land unchecked).

    Raises:
        CollectionError: none of them exists.
    """
    if not isinstance(shard, ShardFiles):
        return False
    _, pq = pyarrow_modules("reading")
    with open(shard.metadata, "rb") as handle:
        first = next(pq.ParquetFile(handle).iter_batches(batch_size=ROOT_SAMPLE * 10, columns=[PATH_COLUMN]), None)
    values = [] if first is None else first.column(0).to_pylist()
    relative = [name for name in (os.fsdecode(v) if isinstance(v, bytes) else v for v in values)
                if name and not os.path.isabs(os.path.expanduser(name)) and not is_uri(name)][:ROOT_SAMPLE]
    if not relative:
        return False
    if not any(os.path.lexists(catalog_key(name, source)) for name in relative):
        raise CollectionError(
            f"none of the first {len(relative)} relative image_path values of {shard.metadata.name} names a file "
            f"under {source} (e.g. {relative[0]!r}); nothing was imported: pass --root with the folder they are "
            f"relative to (where clip-retrieval ran), or --root {source} to import them as they are")
    return True


@contextmanager
def _no_cycle_collection() -> Iterator[None]:
    """Python's cycle collector off (if it was on) while shards land: each shard's paths are a million
    short-lived objects, which reference counting frees, and whose allocation would otherwise set off
    collections that walk the whole heap (torch and open_clip's objects included) again and again: 4% of a
    10 M import's CPU time (80 CPU-s with it, 77 without)."""
    was_on = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_on:
            gc.enable()


class _CheckedAhead:
    """The shards checked in order, each next one checked on ``checker`` while the caller lands this one.

    Reading the next shard's paths (pyarrow) overlaps landing this one; at most two shards' paths are held at
    once.
    """

    def __init__(self, checker: ThreadPoolExecutor, shards: Sequence[Shard], dim: int, root: Path):
        self._check: Callable[[Shard], Future[CheckedShard]] = lambda shard: checker.submit(shard.check, dim, root)
        self._rest = iter(shards)
        self._ahead = self._start_next()

    def __next__(self) -> CheckedShard:
        current = self._ahead
        if current is None:
            raise StopIteration
        self._ahead = self._start_next()
        return current.result()  # a bad shard raises here

    def ready(self) -> CheckedShard | None:
        """The shard :meth:`__next__` will return, if its check has already passed (None if it is still running,
        failed, or there is none)."""
        ahead = self._ahead
        return ahead.result() if ahead is not None and ahead.done() and ahead.exception() is None else None

    def _start_next(self) -> Future[CheckedShard] | None:
        shard = next(self._rest, None)
        return self._check(shard) if shard is not None else None
