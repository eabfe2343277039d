"""Query benchmark: FAISS index build time, search latency, recall@10 against exact search, resident memory.

Synthetic unit vectors drawn around cluster centres (real CLIP embeddings cluster too), with queries drawn
from the same distribution, as a text query lands near the images it describes. Each size is measured for
the index type the collection would choose automatically (or ``--type``), plus exact search for reference.

    python bench/query.py --sizes 100000,1000000            # the issue's figures (the 1M run takes minutes)
    python bench/query.py --sizes 20000 --queries 100       # a quick check

Prints one block per size; nothing is written to disk except a temporary index file for the memory check.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from mmretrieval.collection.index import VectorIndex, choose_config


def synthetic(count: int, dim: int, seed: int, centres: int = 2000, spread: float = 1.0) -> np.ndarray:
    """Unit vectors around ``centres`` random directions (noise ``spread`` times their norm), in chunks."""
    rng = np.random.default_rng(seed)
    anchors = np.random.default_rng(12345).normal(size=(centres, dim)).astype(np.float32)
    out = np.empty((count, dim), dtype=np.float32)
    for start in range(0, count, 100_000):
        stop = min(start + 100_000, count)
        chunk = anchors[rng.integers(0, centres, stop - start)] + spread * rng.normal(size=(stop - start, dim))
        out[start:stop] = chunk / np.linalg.norm(chunk, axis=1, keepdims=True)
    return out


def exact_top_k(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Brute-force top-k ids (positions) by inner product, chunked over the database."""
    best_scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
    best_ids = np.zeros((len(queries), k), dtype=np.int64)
    for start in range(0, len(vectors), 200_000):
        scores = queries @ vectors[start:start + 200_000].T
        ids = np.arange(start, start + scores.shape[1])[None, :].repeat(len(queries), 0)
        scores, ids = np.concatenate([best_scores, scores], 1), np.concatenate([best_ids, ids], 1)
        order = np.argsort(-scores, axis=1)[:, :k]
        best_scores, best_ids = np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)
    return best_ids


def latencies_ms(index: VectorIndex, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """One query per call, as a user's search is; returns (latencies in ms, found ids)."""
    found, timings = [], []
    for query in queries:
        started = time.perf_counter()
        _, ids = index.search(query[None, :], k)
        timings.append((time.perf_counter() - started) * 1000)
        found.append(ids[0])
    return np.array(timings), np.stack(found)


_RSS_PROBE = """
import sys, faiss
def rss_kib():
    return int(next(l for l in open('/proc/self/status') if l.startswith('VmRSS')).split()[1])
before = rss_kib()
index = faiss.read_index(sys.argv[1])
print(rss_kib() - before)
"""


def resident_mib(index: VectorIndex) -> float:
    """Resident memory a fresh process gains by loading the saved index (what `mmr serve` would hold)."""
    import faiss

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.faiss"
        faiss.write_index(index.faiss_index, str(path))
        output = subprocess.run([sys.executable, "-c", _RSS_PROBE, str(path)], capture_output=True, text=True,
                                check=True).stdout
    return int(output.strip().splitlines()[-1]) / 1024


def run_size(count: int, args: argparse.Namespace) -> None:
    vectors = synthetic(count, args.dim, seed=0)
    queries = synthetic(args.queries, args.dim, seed=1)
    ids = np.arange(count, dtype=np.int64)
    truth = exact_top_k(vectors, queries, args.k)
    print(f"\n== {count:,} x {args.dim} vectors, {args.queries} queries, k={args.k}")
    types = [args.type or choose_config(count).type] + (["flat"] if args.exact else [])
    for index_type in dict.fromkeys(types):
        config = choose_config(count, index_type, nprobe=args.nprobe, ef_search=args.ef_search)
        started = time.perf_counter()
        index = VectorIndex.build(config, ids, vectors, args.dim)
        build_s = time.perf_counter() - started
        latencies_ms(index, queries[:5], args.k)  # warm up
        timings, found = latencies_ms(index, queries, args.k)
        recall = np.mean([len(set(f.tolist()) & set(t.tolist())) / args.k for f, t in zip(found, truth)])
        params = " ".join(f"{key}={value}" for key, value in config.params().items())
        print(f"{index_type:5s} {params:22s} build {build_s:7.1f} s   p50 {np.percentile(timings, 50):7.2f} ms   "
              f"p95 {np.percentile(timings, 95):7.2f} ms   recall@{args.k} {recall:.3f}   "
              f"resident {resident_mib(index):7.0f} MiB", flush=True)
        del index


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100000,1000000", help="comma-separated collection sizes")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--type", choices=("flat", "ivf", "hnsw"), help="index type (default: the automatic choice)")
    parser.add_argument("--nprobe", type=int, default=None, help="ivf probes (default: the automatic choice)")
    parser.add_argument("--ef-search", type=int, default=None, help="hnsw search breadth (default: the automatic choice)")
    parser.add_argument("--exact", action="store_true", help="also measure exact (flat) search for comparison")
    args = parser.parse_args()
    print(f"faiss threads: {os.cpu_count()} cores; numpy brute force is the recall reference")
    for size in (int(s) for s in args.sizes.split(",")):
        run_size(size, args)


if __name__ == "__main__":
    main()
