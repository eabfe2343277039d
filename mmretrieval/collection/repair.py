"""Vectors lost to damage: a segment file deleted or cut short outside the program (a bad restore, a full disk
during a copy, a slip in a shell).

The catalog still names every image, its file and its content hash; only the vector rows past what the files hold
are gone. A writer runs :func:`forget_lost_vectors` on entry, under the collection's lock: those rows are dropped
from the catalog and their images set ``pending``, so that the ingest then embeds them again from their files
(an imported row whose file is not on this machine then fails as ``missing``: its vector is lost for good).
Readers only name the damage (:data:`~.segment_files.DAMAGED`), since they never write.

Cost: a ``stat`` of each segment's two files, and an indexed look-up per segment; where damage shows, the same
again :data:`RECHECK_S` later, and only what both looks found is forgotten (a network share that answered
``ENOENT`` for a moment would otherwise cost a re-embedding, and imported vectors for good).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from ..wording import counted

if TYPE_CHECKING:
    from .catalog import Catalog

logger = logging.getLogger(__name__)

RECHECK_S = 1.0  # between the two looks that must both find a segment file short or gone
_pause = time.sleep  # (a test's seam: patching time.sleep would reach every thread of the process)


def forget_lost_vectors(catalog: "Catalog") -> list[int]:
    """Set ``pending`` the images whose vectors are past what their segment's files hold, dropping those vector
    rows; returns their ids. The writer's :func:`~.compaction.collect_garbage`, which runs next, then drops
    a segment nothing points at any more and cuts an active one's files to the rows both hold.

    Only for the collection's writer, holding its lock.
    """
    lost, damaged = lost_vectors(catalog)
    if not lost:
        return []
    _pause(RECHECK_S)  # a network share may answer ENOENT for a moment: only damage seen twice is forgotten
    again, damaged = lost_vectors(catalog)
    lost = sorted(set(lost) & set(again))
    if not lost:
        logger.info("segment files that looked damaged are whole again; nothing forgotten")
        return []
    catalog.forget_vectors(lost)
    logger.warning("%d images had lost their vectors (%s: a file deleted or cut short); they are marked to be "
                   "embedded again from their files, by this ingest or the next", len(lost), "; ".join(damaged))
    return lost


def lost_vectors(catalog: "Catalog") -> tuple[list[int], list[str]]:
    """The ids whose vectors are past what their segment's files hold, or in a segment the manifest does not list
    (an older manifest restored), and a phrase for each damaged segment.

    Safe beside a writer (``mmr info`` and ``mmr check`` read so): the catalog is read first, then the files, and only
    places the first read saw are counted, since a writer writes a row before its catalog commit names it.
    """
    store = catalog.segments
    if not store.exists:  # the manifest gone: a backup's job (segment_files.missing_manifest), nothing to forget
        return [], []
    extents = catalog.segment_extents()
    listed = {entry.number: entry for entry in store.segments()}
    lost: list[int] = []
    damaged: list[str] = []
    for number, needed in extents.items():
        entry = listed.get(number)
        intact = store.intact_rows(entry) if entry is not None else 0
        if intact < needed and (ids := catalog.ids_placed_from(number, intact, through=needed - 1)):
            lost += ids
            damaged.append(f"segment {number:06d} holds {counted(intact, 'whole row')}" if entry is not None else
                           f"segment {number:06d} is not in the segments' manifest")
    return lost, damaged
