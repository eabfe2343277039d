"""Compaction: reclaim the space of deleted and replaced vectors by rewriting live rows into new segments.

A segment's *waste* is the share of its rows no catalog row points at (tombstones: pruned files, re-embedded
files, failed re-decodes, rows a killed writer appended but never committed). :func:`compact` rewrites the
live rows of every segment wasting more than a ratio into new sealed segments, then switches.

Crash safety (SIGKILL at any point loses and duplicates nothing):

1. new segments are written and sealed in ``segments/staging/`` (a crash leaves only that folder);
2. they are linked in and listed in the manifest beside the old ones (nothing points at them yet);
3. one SQLite transaction moves every live row's place to the new segments;
4. the old segments are unlisted (manifest write), then their files deleted.

Whatever step a crash interrupts, the catalog points at complete, listed segments; what nothing points at is
removed by :func:`collect_garbage`, which every writer runs on entry, holding the collection's lock.

Memory: one block of rows (65,536 x dim float32, 128 MiB at 512-d) and one segment's ids (8 bytes a row, at
most 8 MiB) whatever the collection's size; disk: the live rows of the rewritten segments, until the old ones
are deleted. A 10 M x 512 float16 collection compacted in full needs up to 10 GB of extra disk.

:func:`vacuum_catalog` gives the catalog's free pages back to the disk (removed label sets, pruned rows: SQLite
keeps their pages for reuse). It rewrites the catalog in one SQLite transaction (``VACUUM``), so a kill leaves it
as it was, and readers go on reading their snapshot meanwhile. Memory: SQLite's page cache; disk: a copy of the
catalog's live pages in the temporary folder and as much again in its WAL, until the next checkpoint.
"""

from __future__ import annotations

import logging
import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import CollectionError
from .catalog import Catalog
from .segments import SEGMENT_ROWS, SealedSegment, SegmentWriter

logger = logging.getLogger(__name__)

AUTO_WASTE_RATIO = 0.3  # writers compact on their way out once this share of all stored rows is dead
VACUUM_FREE_RATIO = 0.1  # `mmr compact` rewrites the catalog once this share of its pages is free
STAGING_DIRNAME = "staging"
_BLOCK = 65_536
_UPDATE_CHUNK = 10_000

Progress = Callable[[int, int], None]  # (rows copied, rows to copy)


@dataclass(frozen=True)
class CompactionSummary:
    """What :func:`compact` did."""

    segments_rewritten: int  # old segments replaced
    segments_written: int  # new segments
    rows_copied: int  # live rows moved
    rows_reclaimed: int  # dead rows whose space was freed
    bytes_freed: int  # disk freed (old files minus new ones)
    catalog_bytes_freed: int = 0  # what the catalog shrank by (:func:`vacuum_catalog`; ``mmr compact`` only)


@dataclass(frozen=True)
class CatalogSpace:
    """The catalog file's pages: all of them and those free for reuse (what a VACUUM gives back)."""

    total_bytes: int
    free_bytes: int

    @property
    def free_ratio(self) -> float:
        return 0.0 if not self.total_bytes else self.free_bytes / self.total_bytes


@dataclass(frozen=True)
class Waste:
    """Stored versus live rows of a collection's segments."""

    stored: int  # rows in all segment files
    live: int  # rows a catalog row points at

    @property
    def ratio(self) -> float:
        return 0.0 if not self.stored else 1.0 - self.live / self.stored


def waste(catalog: Catalog) -> Waste:
    """Stored and live rows (cheap: one GROUP BY and the manifest)."""
    if not catalog.segments.exists:
        return Waste(0, 0)
    return Waste(catalog.segments.total_rows(), sum(catalog.rows_per_segment().values()))


def collect_garbage(catalog: Catalog) -> list[int]:
    """Remove what interrupted writes left: staging files, unreferenced segments, orphan files, torn tails.

    Only for the collection's writer, holding its lock. Returns the segment numbers dropped.
    """
    store = catalog.segments
    if not store.exists:
        return []
    shutil.rmtree(store.directory / STAGING_DIRNAME, ignore_errors=True)
    referenced = catalog.segment_extents()
    unused_rows = sum(store.intact_rows(s) for s in store.segments() if s.number not in referenced)
    dropped = store.collect_garbage(referenced)
    if dropped and unused_rows:  # a warning, so that the `mmr compact` after a killed one says where the space went
        # (not for segments whose files hold no row: one whose vectors were lost, after forget_lost_vectors). Which
        # cause it was cannot be told from the files: a segment whose every row was pruned since looks the same.
        logger.warning("removed %d segment(s) that nothing points at any more (%d rows, %.1f MiB): their rows were "
                       "pruned or replaced since, or a write was interrupted", len(dropped), unused_rows,
                       unused_rows * store.dim * np.dtype(store.dtype).itemsize / 2**20)
    return dropped


def compact(catalog: Catalog, min_waste_ratio: float = 0.0, progress: Progress | None = None) -> CompactionSummary:
    """Rewrite the live rows of every segment wasting more than ``min_waste_ratio`` of its rows.

    Only for the collection's writer, holding its lock.
    """
    store = catalog.segments
    if not store.exists:
        return CompactionSummary(0, 0, 0, 0, 0)
    live = catalog.rows_per_segment()
    victims = [s.number for s in store.segments()
               if store.rows_in(s.number) and 1 - live.get(s.number, 0) / store.rows_in(s.number) > min_waste_ratio]
    if not victims:
        return CompactionSummary(0, 0, 0, 0, 0)
    stored = sum(store.rows_in(n) for n in victims)
    old_bytes = sum(store.rows_in(n) for n in victims) * store.dim * np.dtype(store.dtype).itemsize
    to_copy = sum(live.get(n, 0) for n in victims)
    staging = store.directory / STAGING_DIRNAME
    shutil.rmtree(staging, ignore_errors=True)
    sealed = _write_live_rows(catalog, victims, staging, to_copy, progress)
    numbers = [store.add_sealed(segment) for segment in sealed]  # listed beside the old ones
    with catalog.transaction() as db:  # the switch: every live row at once
        for number in numbers:
            ids = np.fromfile(store.directory / f"{number:06d}.ids", dtype="<i8")
            for start in range(0, len(ids), _UPDATE_CHUNK):
                db.executemany("UPDATE vector_rows SET segment = ?, row = ? WHERE image_id = ?",
                               [(number, start + i, int(image_id))
                                for i, image_id in enumerate(ids[start:start + _UPDATE_CHUNK].tolist())])
    store.drop(victims)
    shutil.rmtree(staging, ignore_errors=True)
    new_bytes = sum(s.size for s in sealed)
    logger.info("compacted %d segments into %d: %d live rows kept, %d dead rows reclaimed",
                len(victims), len(numbers), to_copy, stored - to_copy)
    return CompactionSummary(len(victims), len(numbers), to_copy, stored - to_copy, old_bytes - new_bytes)


def _write_live_rows(catalog: Catalog, victims: list[int], staging: Path, to_copy: int,
                     progress: Progress | None) -> list[SealedSegment]:
    store = catalog.segments
    sealed = []
    writer = None
    copied = 0
    for number in victims:
        after = -1
        while True:
            places = catalog.places_in_segment(number, after, _BLOCK)
            if not places:
                break
            table = np.array(places, dtype=np.int64)
            vectors = store.gather(np.full(len(table), number), table[:, 1], stored_dtype=True)  # bytes as they are
            position = 0
            while position < len(table):
                if writer is None or writer.count >= SEGMENT_ROWS:
                    if writer is not None:
                        sealed.append(writer.seal())
                    writer = SegmentWriter(staging, store.dim, store.dtype, name=f"part-{len(sealed):06d}")
                end = position + SEGMENT_ROWS - writer.count
                writer.append(table[position:end, 0], vectors[position:end], check_lengths=False)
                position = end
            after = int(table[-1, 1])
            copied += len(table)
            if progress:
                progress(copied, to_copy)
    if writer is not None:
        sealed.append(writer.seal())
    return sealed


def catalog_space(catalog: Catalog) -> CatalogSpace:
    """The catalog's pages, all and free (three pragmas: cheap at any size)."""
    (page_size,), = catalog.select("PRAGMA page_size")
    (pages,), = catalog.select("PRAGMA page_count")
    (free,), = catalog.select("PRAGMA freelist_count")
    return CatalogSpace(pages * page_size, free * page_size)


def vacuum_catalog(catalog: Catalog, min_free_ratio: float = VACUUM_FREE_RATIO) -> int:
    """Give the catalog's free pages back to the disk when more than ``min_free_ratio`` of it is free; returns
    the bytes the catalog shrank by (0: not worth it). Only for the collection's writer, holding its lock.

    Raises:
        CollectionError: too little disk for the rewrite (the catalog is left as it was).
    """
    space = catalog_space(catalog)
    if not space.free_bytes or space.free_ratio < min_free_ratio:
        return 0
    live = space.total_bytes - space.free_bytes
    available = shutil.disk_usage(catalog.path.parent).free
    if available < live:  # its WAL receives every live page
        raise CollectionError(f"the catalog holds {space.free_bytes / 2**20:.1f} MiB of free pages, but giving them "
                              f"back needs {live / 2**20:.1f} MiB of disk beside it ({available / 2**20:.1f} MiB "
                              "free); the catalog is left as it was")
    try:
        catalog.vacuum()
    except sqlite3.OperationalError as exc:  # the temporary copy did not fit, most likely: the catalog is as it was
        raise CollectionError(f"cannot give the catalog's free pages back ({exc}; SQLite's temporary copy goes to "
                              "$SQLITE_TMPDIR or else /var/tmp, /usr/tmp, /tmp); the catalog is left as it was") from exc
    freed = space.total_bytes - catalog_space(catalog).total_bytes
    if catalog.checkpoint_without_waiting():  # a reader on the old snapshot: the file shrinks at a later checkpoint
        logger.warning("the catalog is rewritten, %.1f MiB smaller, but a reader still reads the old one: the file "
                       "shrinks once it has moved on (at the next writer's checkpoint)", freed / 2**20)
    else:
        logger.info("catalog rewritten: %.1f MiB given back to the disk", freed / 2**20)
    return freed
