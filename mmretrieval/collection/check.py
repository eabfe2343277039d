"""``mmr check``: read a whole collection back and say what is damaged, as ``git fsck`` does.

What a reader otherwise meets only when a query reaches it, or never:

* the catalog's own pages (SQLite's ``PRAGMA quick_check``);
* segment files deleted or cut short (:func:`.repair.lost_vectors`);
* a sealed segment whose files no longer match the sha256 the manifest lists;
* the rows of every segment, the active one included, which has no checksum until it is sealed (a collection
  under a million rows never seals one): a stored vector is a unit vector, so a row whose length is off (or not a
  number) is damaged; and the ``.ids`` file must name, at each row the catalog points at, the image the catalog
  says;
* the saved index file against its manifest's checksum (derived data: a search rebuilds it).

:func:`forget_damaged` sets the images whose vectors are damaged back to pending, so that the next ``mmr ingest``
embeds them again from their files, as the writer's own repair does for lost ones.

Memory: a block of rows at a time (``_BLOCK`` rows, 64 MiB of 512-d float32 vectors), plus 8 bytes per damaged
image, whatever the collection's size. Time: one read of every segment file (a sealed one's twice: its checksum,
then its rows), about 10 GB at 10 M 512-d float16 vectors, and one of the catalog.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np
import numpy.typing as npt

from ..atomic import file_sha256
from .index_manifest import read_manifest
from .repair import lost_vectors
from .segment_files import RESTORE, SegmentInfo, missing_manifest, segment_path

if TYPE_CHECKING:
    from .catalog import Catalog

logger = logging.getLogger(__name__)

NORM_TOLERANCE = 0.01  # a unit vector stored as float16 is within 0.002 of length 1 (512-d); damage is far off
_BLOCK = 32_768  # rows read at once
REEMBED = "`mmr check --repair` sets them to be embedded again"


@dataclass(frozen=True)
class Problem:
    """One piece of damage: ``where`` (a file of the collection), what is wrong, and how many images' vectors it
    takes (0: none, or the catalog itself is damaged and cannot say)."""

    where: str
    problem: str
    images: int = 0


@dataclass(frozen=True)
class CheckReport:
    """What :func:`check_catalog` read and found; ``damaged_ids`` are the images whose vectors are damaged."""

    vectors: int  # rows read back
    segments: int
    problems: tuple[Problem, ...]
    damaged_ids: npt.NDArray[np.int64]


def check_catalog(catalog: "Catalog", directory: Path, progress: Callable[[int, int], None] | None = None
                  ) -> CheckReport:
    """Read the catalog, every segment and the saved index of the collection in ``directory`` (see the module);
    ``progress(done, total)`` counts rows."""
    pages = catalog.quick_check()
    if pages != ["ok"]:  # nothing it says can be trusted to check the rest against
        shown = "; ".join(pages[:3]) + (f"; and {len(pages) - 3} more" if len(pages) > 3 else "")
        return CheckReport(0, 0, (Problem(str(catalog.path), f"damaged: {shown}; {RESTORE}"),), _NO_IDS)
    problems: list[Problem] = []
    damaged: list[npt.NDArray[np.int64]] = []
    store = catalog.segments
    entries: list[SegmentInfo] = store.segments() if store.exists else []
    if not store.exists and catalog.vector_count():
        problems.append(Problem(str(store.directory), missing_manifest(store.directory)))
    lost, where = lost_vectors(catalog)
    if lost:
        problems.append(Problem(str(store.directory), f"{', '.join(where)}: files deleted or cut short, so the "
                                f"vectors of {len(lost)} images are lost; {REEMBED}", len(lost)))
        damaged.append(np.array(lost, np.int64))
    total, done = catalog.vector_count() - len(lost), 0
    if progress:
        progress(0, total)
    for entry in entries:
        if entry.sealed and not _matches_checksums(store.directory, entry):
            problems.append(Problem(str(segment_path(store.directory, entry.number, "vec")),
                                    f"segment {entry.number:06d} does not match the sha256 its manifest lists "
                                    f"(modified or corrupt; its damaged rows, if any show, are listed apart); "
                                    f"{RESTORE}"))
        for ids, found, read in _damaged_rows(catalog, entry.number, set(lost)):
            problems += found
            damaged.append(ids)
            done += read
            if progress:
                progress(done, total)
    problems += _index(directory)
    ids = np.unique(np.concatenate(damaged)) if damaged else _NO_IDS
    return CheckReport(done, len(entries), tuple(problems), ids)


def forget_damaged(catalog: "Catalog", report: CheckReport) -> int:
    """Set the images whose vectors ``report`` found damaged back to pending (their vectors dropped, labels kept),
    for the next ingest to embed again; returns how many. Only for the collection's writer, holding its lock."""
    if len(report.damaged_ids):
        catalog.forget_vectors(report.damaged_ids.tolist())
        logger.warning("%d images are set to be embedded again from their files by the next `mmr ingest` (an "
                       "imported one whose file is not on this machine then fails as missing)",
                       len(report.damaged_ids))
    return len(report.damaged_ids)


_NO_IDS = np.zeros(0, np.int64)


def _matches_checksums(directory: Path, entry: SegmentInfo) -> bool:
    vec, ids = (segment_path(directory, entry.number, suffix) for suffix in ("vec", "ids"))
    if not (vec.is_file() and ids.is_file()):
        return True  # lost_vectors told of it
    return file_sha256(vec) == entry.sha256 and file_sha256(ids) == entry.ids_sha256


def _damaged_rows(catalog: "Catalog", number: int, lost: set[int]
                  ) -> Iterator[tuple[npt.NDArray[np.int64], list[Problem], int]]:
    """For each block of the rows the catalog points at in segment ``number`` (those ``lost`` left out): the
    damaged images' ids, the problems, and the rows read."""
    store = catalog.segments
    ids_path, vec_path = (segment_path(store.directory, number, suffix) for suffix in ("ids", "vec"))
    after = -1
    while places := catalog.places_in_segment(number, after, _BLOCK):
        after = places[-1][1]
        table = np.array([place for place in places if place[0] not in lost], np.int64).reshape(-1, 2)
        expected, rows = table[:, 0], table[:, 1]
        if not len(rows):
            continue
        named = np.fromfile(ids_path, dtype="<i8", count=int(rows[-1]) - int(rows[0]) + 1,
                            offset=8 * int(rows[0]))[rows - rows[0]]
        lengths = np.linalg.norm(store.gather(np.full(len(rows), number), rows), axis=1)
        wrong_id = named != expected
        wrong_length = ~(np.abs(lengths - 1) <= NORM_TOLERANCE)  # NaN fails too
        problems = []
        if wrong_id.any():
            problems.append(Problem(str(ids_path), f"rows that name another image than the catalog says: "
                                    f"{int(wrong_id.sum())} (first: row {int(rows[wrong_id][0])}); {REEMBED}",
                                    int(wrong_id.sum())))
        if wrong_length.any():
            first = int(np.flatnonzero(wrong_length)[0])
            problems.append(Problem(str(vec_path), f"damaged vectors (not of length 1): {int(wrong_length.sum())} "
                                    f"(first: row {int(rows[first])}, length {lengths[first]:.4g}); {REEMBED}",
                                    int(wrong_length.sum())))
        yield expected[wrong_id | wrong_length], problems, len(rows)


def _index(directory: Path) -> Iterator[Problem]:
    manifest = read_manifest(directory)
    if manifest is None or not manifest.file:
        return
    path = directory / manifest.file
    if not path.is_file():
        yield Problem(str(path), "the saved index file is missing; a search rebuilds it (`mmr index` does it now)")
    elif file_sha256(path) != manifest.sha256:
        yield Problem(str(path), "the saved index does not match its checksum; a search rebuilds it from the "
                      "vectors (`mmr index` does it now)")
