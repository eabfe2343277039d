"""Browsing without a query: the images that pass the filters, in the order they were taken.

Dated images come first, newest first (or oldest first), ordered by their absolute capture time and then by
catalog id; the undated ones (no EXIF date and no file time, as imported rows) follow by catalog id, unless a
date range is set, which leaves them out. The walk goes down the capture-time index a page at a time and stops
once ``k`` are found, so listing the newest photos of 10 M reads a few pages, never every row; a folder, label
or place filter is applied to each page (as ids, 8 bytes each: :func:`~.filters.allowed_ids`), and when it
allows few images, their times are read by id instead of walking the index past everything else.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from .filters import Filters, allowed_ids, date_and_camera_sql

if TYPE_CHECKING:
    from .catalog import Catalog

FIRST_PAGE = 1_000  # rows read by the first page of the walk; each next page twice as many, up to LAST_PAGE
LAST_PAGE = 64_000
FEW_IDS = 20_000  # a folder, label or place filter allowing at most this many: their times are read by id
IDS_A_QUERY = 500  # ids bound in one `IN (...)` look-up


def browse_ids(catalog: "Catalog", filters: Filters, k: int, oldest_first: bool = False) -> list[int]:
    """Ids of at most ``k`` embedded images that pass ``filters``, dated ones in capture order, then undated ones."""
    found = date_and_camera_sql(catalog, filters, by_time=True)  # the time index leads, whatever the filters
    if found is None:  # a camera no photo has
        return []
    where, params = found
    others = allowed_ids(catalog, dataclasses.replace(filters, after=None, before=None, camera=None))  # None: all
    if others is not None and len(others) <= FEW_IDS:
        ids = _by_id(catalog, where, params, others, k, oldest_first)
    else:
        ids = _walk(catalog, where, params, others, k, oldest_first)
    if len(ids) < k and filters.after is None and filters.before is None:
        ids += _undated(catalog, where, params, others, k - len(ids))
    return ids


def _walk(catalog: "Catalog", where: list[str], params: list, others: npt.NDArray[np.int64] | None, k: int,
          oldest_first: bool) -> list[int]:
    """Down (or up) the capture-time index, a page at a time from where the last page ended (no OFFSET)."""
    sign, order = (">", "ASC") if oldest_first else ("<", "DESC")
    after = (-math.inf, -1) if oldest_first else (math.inf, 2**63 - 1)  # before the first row of the walk
    sql = ("SELECT p.taken_utc_s, p.image_id FROM photos p JOIN vector_rows v ON v.image_id = p.image_id WHERE "
           + " AND ".join([*where, f"(p.taken_utc_s, p.image_id) {sign} (?, ?)"])
           + f" ORDER BY p.taken_utc_s {order}, p.image_id {order} LIMIT ?")
    ids: list[int] = []
    page = min(k, LAST_PAGE) if others is None else FIRST_PAGE
    while len(ids) < k:
        rows = catalog.select(sql, [*params, *after, page])
        page_ids = np.array([row[1] for row in rows], dtype=np.int64)
        kept = page_ids if others is None else page_ids[_isin_sorted(page_ids, others)]
        ids += kept[:k - len(ids)].tolist()
        if len(rows) < page:
            break
        after, page = rows[-1], min(2 * page, LAST_PAGE)
    return ids


def _by_id(catalog: "Catalog", where: list[str], params: list, others: npt.NDArray[np.int64], k: int,
           oldest_first: bool) -> list[int]:
    """The capture times of the few ids ``others`` allows, read by id and sorted here."""
    times, ids = [], []
    for start in range(0, len(others), IDS_A_QUERY):
        chunk = others[start:start + IDS_A_QUERY].tolist()
        conditions = " AND ".join([*where, "p.taken_utc_s IS NOT NULL",
                                   f"p.image_id IN ({', '.join('?' * len(chunk))})"])
        for taken, image_id in catalog.select(f"SELECT p.taken_utc_s, p.image_id FROM photos p WHERE {conditions}",
                                              [*params, *chunk]):
            times.append(taken)
            ids.append(image_id)
    order = np.lexsort((ids, times)) if oldest_first else np.lexsort((np.negative(ids), np.negative(times)))
    return np.asarray(ids, dtype=np.int64)[order[:k]].tolist()


def _undated(catalog: "Catalog", where: list[str], params: list, others: npt.NDArray[np.int64] | None,
             k: int) -> list[int]:
    """Embedded images with no capture time that pass the camera filter in ``where``, by catalog id."""
    sql = ("SELECT v.image_id FROM vector_rows v LEFT JOIN photos p ON p.image_id = v.image_id WHERE "
           + " AND ".join([*where, "p.taken_utc_s IS NULL", "v.image_id > ?"]) + " ORDER BY v.image_id LIMIT ?")
    ids: list[int] = []
    last, page = -1, min(k, LAST_PAGE) if others is None else FIRST_PAGE
    while len(ids) < k:
        page_ids = catalog.select_ids(sql, [*params, last, page])
        kept = page_ids if others is None else page_ids[_isin_sorted(page_ids, others)]
        ids += kept[:k - len(ids)].tolist()
        if len(page_ids) < page:
            break
        last, page = int(page_ids[-1]), min(2 * page, LAST_PAGE)
    return ids


def _isin_sorted(values: npt.NDArray[np.int64], sorted_ids: npt.NDArray[np.int64]) -> npt.NDArray[np.bool_]:
    """``np.isin(values, sorted_ids)`` by binary search, for a sorted ``sorted_ids`` (no copy, no sort)."""
    if not len(sorted_ids):
        return np.zeros(len(values), dtype=bool)
    at = np.minimum(np.searchsorted(sorted_ids, values), len(sorted_ids) - 1)
    return sorted_ids[at] == values
