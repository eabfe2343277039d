"""How long the photo filters take to resolve to allowed ids on a large catalog (the SQL half of a filtered query),
and how long browsing with filters alone takes to list the newest 24.

Builds a synthetic catalog (rows, vector places and photo metadata; no vector bytes, which the filters never
read), then times :func:`~mmretrieval.collection.filters.allowed_ids` for date, camera and place filters, and
:func:`~mmretrieval.collection.browse.browse_ids` (``mmr search`` with filters and no query) for the same filters,
none, and a path prefix (``/photos/1000``: 112 ids at 1 M rows, 1,112 at 2 M).

    python bench/filters.py --rows 1000000
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import tempfile
import time

from mmretrieval.collection.browse import browse_ids
from mmretrieval.collection.catalog import Catalog
from mmretrieval.collection.filters import Filters, allowed_ids

CAMERAS = [("Apple", "iPhone 15 Pro"), ("Canon", "Canon EOS R5"), ("NIKON CORPORATION", "NIKON Z 6"),
           ("SONY", "ILCE-7M3"), ("Google", "Pixel 8")]
BROWSED = 24  # images a browse lists (the web UI's page)
CASES = {
    "after 2023": Filters.of(after="2023"),
    "June 2024": Filters.of(after="2024-06", before="2024-07"),
    "camera iphone": Filters.of(camera="iphone"),
    "near Paris 10 km": Filters.of(near="48.8566,2.3522,10"),
    "June 2024 + iphone + Paris": Filters.of(after="2024-06", before="2024-07", camera="iphone",
                                             near="48.8566,2.3522,10"),
    "path prefix /photos/1000": Filters.of(path_prefix="/photos/1000"),
}


def build(path: str, rows: int) -> Catalog:
    """Rows over ten years, five cameras, 60% with a GPS position anywhere between 60 S and 70 N; made in SQL
    (a recursive CTE), so a million rows take seconds."""
    catalog = Catalog(path)
    start = int(dt.datetime(2015, 1, 1, tzinfo=dt.timezone.utc).timestamp())
    makes = " ".join(f"WHEN {i} THEN '{make}'" for i, (make, _) in enumerate(CAMERAS))
    models = " ".join(f"WHEN {i} THEN '{model}'" for i, (_, model) in enumerate(CAMERAS))
    with catalog.transaction() as db:
        db.execute(f"""
            WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {rows})
            INSERT INTO images(id, path, size, mtime_ns, status, width, height)
            SELECT i, CAST('/photos/' || i || '.jpg' AS BLOB), 1000, 0, 'ok', 640, 480 FROM n""")
        db.execute("INSERT INTO vector_rows(image_id, generation, segment, row) SELECT id, 1, 0, id - 1 FROM images")
        db.execute(f"""
            INSERT INTO photos(image_id, taken_utc_s, utc_offset_min, taken_source, make, model, latitude, longitude)
            SELECT id, {start} + abs(random()) % {10 * 365 * 86400}, 0, 'exif_original',
                   CASE id % {len(CAMERAS)} {makes} END, CASE id % {len(CAMERAS)} {models} END,
                   CASE WHEN abs(random()) % 10 < 6 THEN -60 + (abs(random()) % 1300000) / 10000.0 END,
                   -180 + (abs(random()) % 3600000) / 10000.0 FROM images""")
        db.execute("UPDATE photos SET taken_local = strftime('%Y-%m-%dT%H:%M:%S', taken_utc_s, 'unixepoch'), "
                   "longitude = CASE WHEN latitude IS NULL THEN NULL ELSE longitude END")
    return catalog


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        catalog = build(os.path.join(folder, "catalog.sqlite"), args.rows)
        print(f"built a {args.rows:,}-row catalog in {time.perf_counter() - started:.1f} s")
        for name, filters in CASES.items():
            times = []
            for _ in range(args.repeats):
                started = time.perf_counter()
                ids = allowed_ids(catalog, filters)
                times.append(time.perf_counter() - started)
            print(f"{name:28} {len(ids):9,} ids  median {statistics.median(times) * 1000:8.1f} ms")
        browsed = {"no filter": Filters(), **CASES}
        for name, filters in browsed.items():
            for oldest_first in (False, True):
                times = []
                for _ in range(args.repeats):
                    started = time.perf_counter()
                    ids = browse_ids(catalog, filters, BROWSED, oldest_first)
                    times.append(time.perf_counter() - started)
                order = "oldest" if oldest_first else "newest"
                print(f"browse {order} {BROWSED}, {name:28} {len(ids):3} ids  median "
                      f"{statistics.median(times) * 1000:8.1f} ms")
        catalog.close()


if __name__ == "__main__":
    main()
