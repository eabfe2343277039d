"""The photo filters (--after, --before, --camera, --near) and the photo fields of JSON results."""

from __future__ import annotations

import argparse
import math
from typing import TYPE_CHECKING, Any

from .common import Once

if TYPE_CHECKING:
    from ..collection.collection import Collection
    from ..collection.records import Hit


def add_photo_filter_options(parser: argparse.ArgumentParser) -> None:
    """``--after``, ``--before``, ``--camera`` and ``--near``, the same on search, similar and label."""
    group = parser.add_argument_group(
        "photo filters", "DATE is 2024, 2024-06, 2024-06-01 or an ISO datetime (2024-06-01T14:30, with +02:00 "
        "to mean an absolute time); --after is inclusive, --before exclusive, so June 2024 is "
        "--after 2024-06 --before 2024-07. Capture time is EXIF DateTimeOriginal, else the file's mtime.")
    group.add_argument("--after", metavar="DATE", action=Once, help="only photos taken at or after DATE")
    group.add_argument("--before", metavar="DATE", action=Once, help="only photos taken before DATE")
    group.add_argument("--camera", metavar="TEXT", action=Once, help="only photos whose camera make/model contains TEXT "
                       "(case-insensitive, e.g. iphone)")
    group.add_argument("--near", metavar="LAT,LON,KM", action=Once, help="only photos with a GPS position within KM "
                       "kilometres of LAT,LON (decimal degrees, e.g. 48.8584,2.2945,5; "
                       "write --near=-33.86,151.21,10 when LAT is negative)")


def photo_filters(args: argparse.Namespace) -> dict[str, Any]:
    """The filter keyword arguments of :meth:`Collection.search` from parsed options."""
    return {"after": args.after, "before": args.before, "camera": args.camera, "near": args.near}


def hit_rows(collection: "Collection", hits: "list[Hit]", gps: bool) -> list[dict[str, Any]]:
    """JSON rows of hits: score (None where there is none: browsing), path, id, labels, caption, capture time and
    camera (and GPS with ``gps``)."""
    photos = collection.photos([hit.id for hit in hits])
    rows = []
    for hit in hits:
        photo = photos.get(hit.id)
        score = None if math.isnan(hit.score) else round(hit.score, 6)
        row = {"score": score, "path": hit.path, "id": hit.id, "labels": list(hit.labels), "caption": hit.caption,
               "taken_at": photo.taken_at if photo else None, "taken_source": photo.taken_source if photo else None,
               "camera": photo.camera if photo else None}
        if gps:
            row.update(latitude=photo.latitude if photo else None, longitude=photo.longitude if photo else None)
        rows.append(row)
    return rows
