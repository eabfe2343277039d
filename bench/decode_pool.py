"""Ceiling of the decoding pool itself: results/s when decoding costs nothing, and the pool's start-up time.

The ingestion pool must deliver decoded images faster than the GPU can embed them; this measures its own
overhead (task dispatch, pipes, pickling a 3x224x224 uint8 array per result) with a no-op decoder.

    python bench/decode_pool.py --workers 2 4 8 --results 20000
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from mmretrieval.ingest.batches import Decoded, DecodeTask
from mmretrieval.ingest.pool import DecodePool
from mmretrieval.images.preprocess import ImagePreparer

_PIXELS = np.zeros((3, 224, 224), dtype=np.uint8)


def no_op_decode(task: DecodeTask, preparer: ImagePreparer) -> Decoded:
    """A decoder that does no work: what is left is the pool's own cost."""
    return Decoded(task.image_id, f"{task.image_id:032x}", 640, 480, "JPEG", _PIXELS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", nargs="+", type=int, default=[2, 4, 8])
    parser.add_argument("--results", type=int, default=20000)
    args = parser.parse_args()
    preparer = ImagePreparer(json.dumps({"size": 224}))
    for workers in args.workers:
        tasks = [DecodeTask(i, "unused") for i in range(args.results)]
        started, first, count = time.perf_counter(), None, 0
        for _ in DecodePool(preparer, workers, decode=no_op_decode).run(tasks):
            count += 1
            first = first if first is not None else time.perf_counter() - started
        steady = (count - 1) / (time.perf_counter() - started - first)
        print(f"{workers:>3} workers: first result after {first:.2f} s, then {steady:,.0f} results/s", flush=True)


if __name__ == "__main__":
    main()
