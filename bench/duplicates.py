"""Near-duplicate detection: precision and recall at several thresholds on a generated set, and the time.

    python bench/duplicates.py                              # builtin:shapes, 150 originals x 5 files
    python bench/duplicates.py --model DIR --originals 400  # another model (to set its family's default)

The set (mmretrieval.training.copies): distinct generated scenes, each with four copies (resized 50-80%,
JPEG quality 35-70, cropped 5-10%, PNG<->JPEG), shuffled under neutral names. They are ingested into a fresh
collection with the model, then ``Collection.duplicates`` runs at each threshold. Precision and recall are
pairwise: a pair of files is predicted when both are in one group, true when both come from one original.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="builtin:shapes")
    parser.add_argument("--originals", type=int, default=150)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--thresholds", default="0.85,0.88,0.90,0.92,0.93,0.94,0.95,0.96,0.97,0.98")
    args = parser.parse_args()

    from mmretrieval.collection.collection import Collection
    from mmretrieval.collection.duplicates import default_threshold
    from mmretrieval.training.copies import pair_scores, write_near_duplicate_set

    with tempfile.TemporaryDirectory() as tmp:
        truth = write_near_duplicate_set(Path(tmp) / "images", args.originals)
        started = time.perf_counter()
        with Collection.open(Path(tmp) / "col", model=args.model, create=True, device=args.device) as collection:
            collection.ingest([Path(tmp) / "images"])
            print(f"{len(truth)} files ({args.originals} originals x 5) ingested in "
                  f"{time.perf_counter() - started:.1f} s with {args.model}")
            default = default_threshold(collection.identity)
            print(f"default threshold for this model family: {default}")
            print("threshold  precision  recall  groups  seconds")
            for threshold in sorted({float(t) for t in args.thresholds.split(",")} | {default}):
                started = time.perf_counter()
                groups = collection.duplicates(threshold)
                seconds = time.perf_counter() - started
                precision, recall = pair_scores([g.paths for g in groups], truth)
                mark = "  <- default" if threshold == default else ""
                print(f"{threshold:9.3f}  {precision:9.3f}  {recall:6.3f}  {len(groups):6d}  {seconds:7.2f}{mark}")


if __name__ == "__main__":  # ingestion decodes in worker processes, which import this script
    main()
