"""How long the photo filters take to resolve to allowed ids on a large catalog (the SQL half of a filtered query).

Builds a synthetic catalog (rows, vector places and photo metadata; no vector bytes, which the filters never
read), then times :func:`~mmretrieval.collection.filters.allowed_ids` for date, camera and place filters.

    python bench/filters.py --rows 1000000
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import tempfile
import time

import numpy as np

from mmretrieval.collection.catalog import Catalog
from mmretrieval.collection.filters import Filters, allowed_ids

CAMERAS = [("Apple", "iPhone 15 Pro"), ("Canon", "Canon EOS R5"), ("NIKON CORPORATION", "NIKON Z 6"),
           ("SONY", "ILCE-7M3"), ("Google", "Pixel 8")]
CASES = {
    "after 2023": Filters.of(after="2023"),
    "June 2024": Filters.of(after="2024-06", before="2024-07"),
    "camera iphone": Filters.of(camera="iphone"),
    "near Paris 10 km": Filters.of(near="48.8566,2.3522,10"),
    "June 2024 + iphone + Paris": Filters.of(after="2024-06", before="2024-07", camera="iphone",
                                             near="48.8566,2.3522,10"),
}


def build(path: str, rows: int, seed: int = 0) -> Catalog:
    rng = np.random.default_rng(seed)
    catalog = Catalog(path)
    start = dt.datetime(2015, 1, 1).timestamp()
    taken = start + rng.uniform(0, 10 * 365 * 86400, rows)
    cameras = rng.integers(0, len(CAMERAS), rows)
    has_gps = rng.random(rows) < 0.6
    latitudes = rng.uniform(-60, 70, rows)
    longitudes = rng.uniform(-180, 180, rows)
    step = 100_000
    for first in range(0, rows, step):
        block = range(first, min(first + step, rows))
        with catalog.transaction() as db:
            db.executemany("INSERT INTO images(id, path, size, mtime_ns, status, width, height) "
                           "VALUES (?, ?, 1000, ?, 'ok', 640, 480)",
                           [(i + 1, f"/photos/{i:08d}.jpg".encode(), int(taken[i] * 1e9)) for i in block])
            db.executemany("INSERT INTO vector_rows(image_id, generation, segment, row) VALUES (?, 1, 0, ?)",
                           [(i + 1, i) for i in block])
            db.executemany(
                "INSERT INTO photos(image_id, taken_local, taken_utc_s, utc_offset_min, taken_source, make, model, "
                "latitude, longitude) VALUES (?, ?, ?, 0, 'exif_original', ?, ?, ?, ?)",
                [(i + 1, dt.datetime.fromtimestamp(taken[i], dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S"),
                  float(taken[i]), *CAMERAS[cameras[i]],
                  float(latitudes[i]) if has_gps[i] else None, float(longitudes[i]) if has_gps[i] else None)
                 for i in block])
    return catalog


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=3)
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
        catalog.close()


if __name__ == "__main__":
    main()
