"""Vector storage and index upkeep on synthetic clustered vectors: what the segment layer and the index
builder cost, without a model.

Prints, for N vectors of DIM (float16 segments): catalog rows/s, segment commit rows/s, streaming read GB/s,
the gather of 200 x rerank candidates (the re-ranking cost per query batch), the build time of the
automatically chosen index (thresholds lowered with --pq-from so the IVF-PQ band can be tried at small N),
its tuned recall@10 and memory, p50/p95 query latency with exact re-ranking, and compaction after 30% of
rows die.

    python bench/storage.py --vectors 200000 --dim 512
    python bench/storage.py --vectors 200000 --dim 512 --pq-from 100000     # the ivfpq band
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from mmretrieval.collection.catalog import Catalog, encode_path
from mmretrieval.collection.compaction import compact, waste
from mmretrieval.collection.index import IndexPolicy
from mmretrieval.collection.segments import SegmentWriter
from mmretrieval.collection.upkeep import IndexKeeper
from mmretrieval.models.specs import ModelIdentity


def clustered(n: int, dim: int, seed: int, centres: int = 1000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    middle = rng.normal(size=(centres, dim)).astype(np.float32)
    vectors = middle[rng.integers(0, centres, n)] + 0.6 * rng.normal(size=(n, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vectors", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--pq-from", type=int, default=2_000_000, help="IndexPolicy.pq_from")
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mmr-bench-") as tmp:
        run(Path(tmp), args)


def run(root: Path, args: argparse.Namespace) -> None:
    n, dim = args.vectors, args.dim
    (root / "col").mkdir()
    catalog = Catalog(root / "col" / "catalog.sqlite")
    started = time.perf_counter()
    catalog.mark_pending((encode_path(f"/photos/{i:09d}.jpg"), 1, 1, None) for i in range(n))
    ids = np.array([i for i, _ in catalog.pending()], np.int64)
    print(f"catalog rows: {n / (time.perf_counter() - started):,.0f} rows/s")
    started = time.perf_counter()
    for part, start in enumerate(range(0, n, 100_000)):
        writer = SegmentWriter(root / "parts", dim, name=f"part-{part:05d}")
        writer.append(ids[start:start + 100_000], clustered(len(ids[start:start + 100_000]), dim, part))
        catalog.commit_segment(writer.seal())
    print(f"segments written + committed (incl. generating vectors): {n / (time.perf_counter() - started):,.0f} rows/s")
    started = time.perf_counter()
    rows = sum(len(block_ids) for block_ids, _ in catalog.iter_vectors())
    seconds = time.perf_counter() - started
    print(f"streaming read: {rows * dim * 4 / seconds / 1e9:.2f} GB/s of float32 ({rows:,} rows in {seconds:.2f} s)")
    rng = np.random.default_rng(1)
    picked = rng.choice(ids, 200 * 40, replace=False)
    started = time.perf_counter()
    catalog.vectors(picked.tolist())
    print(f"gather 200 x 40 random vectors: {(time.perf_counter() - started) * 1e3:.1f} ms")
    identity = ModelIdentity(spec="bench", architecture="bench", embed_dim=dim, weights="synthetic", preprocess="{}")
    keeper = IndexKeeper(root / "col", catalog, identity, IndexPolicy(pq_from=args.pq_from, tuning_queries=args.queries))
    started = time.perf_counter()
    manifest = keeper.rebuild()
    print(f"index {manifest.index_type} {manifest.params}: built + tuned in {time.perf_counter() - started:.1f} s, "
          f"recall@10 {manifest.recall:.3f}, {manifest.memory_bytes / 2**20:.0f} MiB")
    latencies = []
    for query_id in rng.choice(ids, args.queries, replace=False):
        _, query = catalog.vectors([int(query_id)])
        started = time.perf_counter()
        _, found = keeper.index.search(query, keeper.index.candidates(10))
        found_ids, vectors = catalog.vectors(found[0].tolist())
        np.argsort(-(vectors @ query[0]))[:10]
        latencies.append(time.perf_counter() - started)
    print(f"query + exact re-rank: p50 {np.percentile(latencies, 50) * 1e3:.2f} ms, "
          f"p95 {np.percentile(latencies, 95) * 1e3:.2f} ms")
    dead = rng.choice(ids, int(0.3 * n), replace=False)
    with catalog.transaction() as db:
        db.executemany("DELETE FROM images WHERE id = ?", [(int(i),) for i in dead])
    started = time.perf_counter()
    summary = compact(catalog)
    print(f"compaction of 30% dead: {summary.rows_copied / (time.perf_counter() - started):,.0f} live rows/s, "
          f"{summary.bytes_freed / 2**20:.0f} MiB freed, waste now {waste(catalog).ratio:.2f}")
    print(f"peak RSS: {_peak_rss_mib():.0f} MiB")


def _peak_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    main()
