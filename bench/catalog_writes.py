"""How long the catalog takes to commit embedded batches (``Catalog.write_results``: the writer thread's share of
an ingest), per row, for new files with no labels: what a GPU ingest's writer must keep up with (at 10,000
images/s it has 100 us a row). Also the look-up the ingest's main thread makes before each batch is committed
(``Catalog.vectors_of_rows``: the vectors the commit replaces, runner._Uncommitted), for new rows (a first ingest)
and for rows that hold vectors (files changed since, embedded again).

    python bench/catalog_writes.py --rows 10240 --batch 256
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

from mmretrieval.collection.catalog import Catalog, VectorWrite


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_240)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--dim", type=int, default=512)
    args = parser.parse_args()
    vector = np.ones(args.dim, np.float32) / np.sqrt(args.dim)
    with tempfile.TemporaryDirectory() as folder:
        catalog = Catalog(os.path.join(folder, "catalog.sqlite"))
        catalog.mark_pending([(f"/photos/{i}.jpg".encode(), 1000, 1_700_000_000 * 10**9 + i, None)
                              for i in range(args.rows)])
        ids = sorted(image_id for image_id, *_ in catalog.iter_pending())
        batches = [ids[start:start + args.batch] for start in range(0, len(ids), args.batch)]
        looked_new = sum(_timed(catalog.vectors_of_rows, batch) for batch in batches)
        started = time.perf_counter()
        for batch in batches:
            catalog.write_results([VectorWrite(i, f"hash{i}", 640, 480, "JPEG", vector) for i in batch], [])
        took = time.perf_counter() - started
        looked_stored = sum(_timed(catalog.vectors_of_rows, batch) for batch in batches)
        catalog.close()
    print(f"{args.rows:,} rows in batches of {args.batch}: {took:.3f} s, {took / args.rows * 1e6:.1f} us a row")
    print(f"replaced-vector look-up: {looked_new / args.rows * 1e6:.1f} us a row for new rows, "
          f"{looked_stored / args.rows * 1e6:.1f} us a row for rows holding vectors")


def _timed(function, *arguments) -> float:
    started = time.perf_counter()
    function(*arguments)
    return time.perf_counter() - started


if __name__ == "__main__":
    main()
