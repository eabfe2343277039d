"""Ceiling of the decoding pool itself: results/s when decoding costs nothing, and the pool's start-up time.

The ingestion pool must deliver decoded images faster than the GPU can embed them; this measures its own
overhead (task dispatch, pipes, shared-memory slots, copying each 3x224x224 uint8 image once) with a no-op
decoder, through both ways out of the pool: ``batches`` (what ingestion uses: the consumer gets the shared
memory the workers wrote, no copy) and ``run`` (one record at a time, each with its own copy of its pixels).

    python bench/decode_pool.py --workers 1 2 4 --results 20000
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from mmretrieval.images.preprocess import ImagePreparer
from mmretrieval.ingest.batches import Decoded, DecodeTask
from mmretrieval.ingest.pool import DecodePool

_PIXELS = np.zeros((3, 224, 224), dtype=np.uint8)


def no_op_decode(task: DecodeTask, preparer: ImagePreparer) -> Decoded:
    """A decoder that does no work: what is left is the pool's own cost."""
    return Decoded(task.image_id, f"{task.image_id:032x}", 640, 480, "JPEG", _PIXELS)


def measure(pool: DecodePool, results: int, batch_size: int | None) -> tuple[float, float]:
    """(seconds to the first result, results/s after it)."""
    tasks = (DecodeTask(i, "unused") for i in range(results))
    started, first, count = time.perf_counter(), None, 0
    stream = pool.batches(tasks, batch_size) if batch_size else pool.run(tasks)
    for item in stream:
        count += len(item.decoded) + len(item.failed) if batch_size else 1
        first = first if first is not None else (time.perf_counter() - started, count)
    return first[0], (count - first[1]) / (time.perf_counter() - started - first[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", nargs="+", type=int, default=[1, 2, 4])
    parser.add_argument("--results", type=int, default=20000)
    parser.add_argument("--batch-size", type=int, default=256, help="for the batches() figure")
    args = parser.parse_args()
    preparer = ImagePreparer(json.dumps({"size": 224}))
    for workers in args.workers:
        for name, batch_size in (("batches", args.batch_size), ("run", None)):
            first, rate = measure(DecodePool(preparer, workers, decode=no_op_decode), args.results, batch_size)
            print(f"{workers:>3} workers, {name:<7}: first result after {first:.2f} s, then {rate:,.0f} results/s",
                  flush=True)


if __name__ == "__main__":
    main()
