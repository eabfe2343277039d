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

Memory: a block of rows at a time (``_BLOCK`` rows: their float16 copy and their float32 vectors, about 96 MiB at
512-d; the lengths are summed without a third copy), plus about 100 bytes per lost or damaged image, whatever the
collection's size (131-137 MiB peak RssAnon at 1 M rows, three runs; 148-169 MiB before the lengths skipped it). Time: one read of every segment file (a sealed one's
twice: its checksum, then its rows), about 10 GB at 10 M 512-d float16 vectors, and one of the catalog.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import numpy.typing as npt

from ..atomic import file_sha256
from ..errors import CollectionError
from ..wording import counted
from .catalog import Catalog, is_uri
from .index_manifest import MANIFEST_NAME as INDEX_MANIFEST, read_manifest
from .repair import lost_vectors
from .sealed import not_unit, row_lengths
from .segment_files import MANIFEST_NAME, RESTORE, SEGMENT_GONE, SegmentInfo, missing_manifest, segment_path

logger = logging.getLogger(__name__)

_BLOCK = 32_768  # rows read at once: memory stays near 100 MiB at 512-d, and a block is still one big read
REEMBED = "`mmr check --repair` sets those whose files are here to be embedded again"
CHECK_ATTEMPTS = 3  # a reader's check starts again when a compaction's files go away under it, this many times


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
    complete: bool = True  # False: the catalog or the segments' manifest is damaged, and the rest was not read
    reset: int = 0  # of the damaged images, those a repair set to be embedded again (their file is here)


def check_catalog(catalog: Catalog, directory: Path, progress: Callable[[int, int], None] | None = None,
                  forgotten: Sequence[int] = ()) -> CheckReport:
    """Read the catalog, every segment and the saved index of the collection in ``directory`` (see the module);
    ``progress(done, total)`` counts rows. ``forgotten``: ids whose lost vectors the writer running this check set
    pending on its way in (reported, as they would have been found)."""
    pages = catalog.quick_check()
    if pages != ["ok"]:  # nothing it says can be trusted to check the rest against
        shown = "; ".join(pages[:3]) + (f"; and {len(pages) - 3} more" if len(pages) > 3 else "")
        return CheckReport(0, 0, (Problem(str(catalog.path), f"damaged: {shown}; {RESTORE}"),), _NO_IDS, False)
    store = catalog.segments
    try:
        entries: list[SegmentInfo] = store.segments() if store.exists else []
        lost, where = lost_vectors(catalog)
    except CollectionError as exc:  # the manifest unreadable, or not its own checksum's
        problems = (Problem(str(store.directory / MANIFEST_NAME), str(exc)), *_index(directory))
        return CheckReport(0, 0, problems, _NO_IDS, False)
    problems = _lost(store.directory, lost, where, forgotten)
    if not store.exists and catalog.vector_count():
        problems.append(Problem(str(store.directory), missing_manifest(store.directory)))
    damaged = [np.array([*lost, *forgotten], np.int64)]
    total, done, skipped = catalog.vector_count() - len(lost), 0, set(lost)
    if progress:
        progress(0, total)
    for entry in entries:
        if entry.sealed and not _matches_checksums(store.directory, entry):
            problems.append(Problem(str(segment_path(store.directory, entry.number, "vec")),
                                    f"segment {entry.number:06d} does not match the sha256 its manifest lists "
                                    "(modified or corrupt; its damaged rows, if any show, are listed apart): "
                                    f"{RESTORE}; or, once `mmr check --repair` and `mmr ingest` have embedded "
                                    "those rows again, `mmr compact` rewrites it with new checksums"))
        for ids, found, read in _damaged_rows(catalog, entry.number, skipped):
            problems += found
            damaged.append(ids)
            done += read
            if progress:
                progress(done, total)
    problems += _index(directory)
    return CheckReport(done, len(entries), tuple(problems), np.unique(np.concatenate(damaged)))


def check_beside_writers(catalog: Catalog, directory: Path, progress: Callable[[int, int], None] | None = None
                         ) -> CheckReport:
    """:func:`check_catalog` for a reader, which holds no lock: a compaction may move rows to new segments and the
    next writer delete the old files between the catalog's answer and the read of those files, so the check starts
    again then (up to :data:`CHECK_ATTEMPTS` times). A file lost for good is found before any read
    (:func:`.repair.lost_vectors`), so a restart hides no damage.

    Args:
        catalog: the collection's catalog, opened for reading.
        directory: the collection's folder (its saved index is checked too).
        progress: ``(rows done, rows in all)``; it starts from 0 again with the check.

    Returns:
        The report of the attempt that read everything.

    Raises:
        CollectionError: files went away under every attempt.
    """
    attempt = 1
    while True:
        try:
            return check_catalog(catalog, directory, progress)
        except SEGMENT_GONE as exc:  # .ids read by numpy, .vec by the store
            if attempt == CHECK_ATTEMPTS:
                raise CollectionError(f"{exc.filename} went away during the check, {attempt} times: other processes "
                                      "keep rewriting the collection (compactions); run the check once they are "
                                      "done") from exc
            logger.warning("%s went away during the check (a compaction, then a writer's clean-up): checking again "
                           "from the start", exc.filename)
            attempt += 1


def forget_damaged(catalog: Catalog, report: CheckReport) -> int:
    """Set the images whose vectors ``report`` found damaged back to pending (their vectors dropped, labels kept),
    for the next ingest to embed again; returns how many. Images whose file is not on this machine (imported
    ones) keep their vectors, damaged as they are: dropped, they would be lost for good. Only for the
    collection's writer, holding its lock."""
    rows = catalog.rows(report.damaged_ids.tolist())
    here = [image_id for image_id, row in rows.items() if not is_uri(row.path) and os.path.exists(row.path)]
    if here:
        catalog.forget_vectors(here)
        logger.warning("%s set to be embedded again from %s by the next `mmr ingest`",
                       counted(len(here), "image is", "images are"), "its file" if len(here) == 1 else "their files")
    if len(rows) > len(here):
        away = len(rows) - len(here)
        logger.warning("%s with damaged vectors: no file here (deleted, moved, or imported from another machine), so "
                       "the vectors are left as they are; `mmr ingest --prune` on their folders drops those whose "
                       "files were deleted, and only a backup has the rest", counted(away, "image"))
    return len(here)


def _lost(directory: Path, lost: list[int], where: list[str], forgotten: Sequence[int]) -> list[Problem]:
    """The problems of vectors lost with their files (and of those the running writer forgot on its way in)."""
    problems = []
    if lost:
        problems.append(Problem(str(directory), f"{'; '.join(where)}: the vectors of {counted(len(lost), 'image')} "
                                "are lost (a file deleted or cut short, or an older manifest restored); "
                                f"{REEMBED}", len(lost)))
    if forgotten:
        problems.append(Problem(str(directory), f"the vectors of {counted(len(forgotten), 'image')} were lost (a "
                                "file deleted or cut short, or an older manifest restored); they are set to be "
                                "embedded again", len(forgotten)))
    return problems


_NO_IDS = np.zeros(0, np.int64)


def _matches_checksums(directory: Path, entry: SegmentInfo) -> bool:
    vec, ids = (segment_path(directory, entry.number, suffix) for suffix in ("vec", "ids"))
    if not (vec.is_file() and ids.is_file()):
        return True  # lost_vectors told of it
    return file_sha256(vec) == entry.sha256 and file_sha256(ids) == entry.ids_sha256


def _damaged_rows(catalog: Catalog, number: int, lost: set[int]
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
        vectors = store.gather(np.full(len(rows), number), rows)
        lengths = row_lengths(vectors)
        del vectors
        wrong_id = named != expected
        wrong_length = not_unit(lengths)
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
    if manifest is None and (directory / INDEX_MANIFEST).is_file():
        yield Problem(str(directory / INDEX_MANIFEST), "the saved index's manifest is unreadable; a search rebuilds "
                      "the index (`mmr index` does it now)")
    if manifest is None or not manifest.file:
        return
    path = directory / manifest.file
    if not path.is_file():
        yield Problem(str(path), "the saved index file is missing; a search rebuilds it (`mmr index` does it now)")
    elif file_sha256(path) != manifest.sha256:
        yield Problem(str(path), "the saved index does not match its checksum; a search rebuilds it from the "
                      "vectors (`mmr index` does it now)")
