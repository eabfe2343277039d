"""Scale benchmark: synthetic collections of 1 M and 10 M vectors built through ``mmr import``.

For each size: write clustered unit vectors as clip-retrieval shards (float16 ``img_emb_N.npy`` + parquet
``image_path``), a shard at a time and never all in RAM, computing the exact top-10 of held-out queries
blockwise on the way (the ground truth, over the float16-rounded vectors the collection will hold); then
``mmr import`` (vectors/s from the import's own timing of checking and landing shards; the index build that
the writer does on its way out is timed apart, and the command's wall time is printed too), delete the input
shards, and finally a fresh
serving process that opens the collection and runs the queries one at a time, reporting p50/p95 latency,
recall@10 and its anonymous resident memory (RssAnon from /proc/self/status: page cache of memory-mapped files
is not counted). ``mmr check`` (which reads every vector back) is timed with its peak RssAnon, and ``mmr
duplicates`` too when the command exists.

    nice -n 10 python bench/scale.py --sizes 1000000                        # ~minutes on 2 cores
    nice -n 10 python bench/scale.py --sizes 10000000 --work /work/scale --no-duplicates  # ~an hour, ~22 GB
    python bench/scale.py --sizes 20000 --queries 100                       # a quick check
    python bench/scale.py --sizes 10000000 --work /work/scale --serve-only --passes 2  # after mmr index
    python bench/scale.py --sizes 10000000 --import-only       # import vectors/s alone (mmr import --no-index)

Data: ``--centres`` random unit directions; each vector is a centre plus Gaussian noise whose norm is
``--noise`` times the centre's (1.0: as much noise as signal, a hard case where clusters overlap), normalised.
Prints one block per size and appends it as a JSON line to ``WORK/results.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

MODEL = "ViT-B-32"  # random weights: only the identity (512-d) matters, no vector is computed by the model
K = 10
_CHUNK = 50_000  # vectors generated and scored per step


def generate(folder: Path, count: int, dim: int, queries: int, centres: int, noise: float, shard_rows: int,
             seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Write ``count`` vectors as clip-retrieval shards; returns (queries, exact top-K row numbers per query).

    torch, not numpy, draws and scores the vectors: its randn, matmul and topk are 3-5x faster on this machine.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch
    from numpy.lib.format import open_memmap

    generator = torch.Generator().manual_seed(seed)
    anchors = _unit(torch.randn(centres, dim, generator=generator))
    held_out = _draw(generator, anchors, queries, noise)
    best_scores = torch.full((queries, K), -float("inf"))
    best_rows = torch.zeros((queries, K), dtype=torch.int64)
    (folder / "img_emb").mkdir(parents=True, exist_ok=True)
    (folder / "metadata").mkdir(parents=True, exist_ok=True)
    for shard, shard_start in enumerate(range(0, count, shard_rows)):
        rows = min(shard_rows, count - shard_start)
        out = open_memmap(folder / "img_emb" / f"img_emb_{shard}.npy", mode="w+", dtype=np.float16, shape=(rows, dim))
        for start in range(0, rows, _CHUNK):
            block = _draw(generator, anchors, min(_CHUNK, rows - start), noise).half()
            out[start:start + len(block)] = block.numpy()
            stored = _unit(block.float())  # what the collection will hold after renormalising
            scores, top = torch.topk(held_out @ stored.T, min(K, len(stored)), dim=1)
            merged_scores = torch.cat([best_scores, scores], 1)
            merged_rows = torch.cat([best_rows, top + shard_start + start], 1)
            best_scores, order = torch.topk(merged_scores, K, dim=1)
            best_rows = torch.gather(merged_rows, 1, order)
        out.flush()
        del out
        paths = pa.array([f"/synthetic/{row:09d}.jpg" for row in range(shard_start, shard_start + rows)])
        pq.write_table(pa.table({"image_path": paths}), folder / "metadata" / f"metadata_{shard}.parquet")
        print(f"  wrote shard {shard} ({shard_start + rows:,} / {count:,})", file=sys.stderr, flush=True)
    return held_out.numpy(), best_rows.numpy()


def _unit(vectors):  # noqa: ANN001, ANN202 (torch tensors; torch is imported lazily)
    return vectors / vectors.norm(dim=1, keepdim=True)


def _draw(generator, anchors, count: int, noise: float):  # noqa: ANN001, ANN202
    import torch

    dim = anchors.shape[1]
    picked = anchors[torch.randint(0, len(anchors), (count,), generator=generator)]
    return _unit(picked + torch.randn(count, dim, generator=generator) * (noise / dim ** 0.5))


def run_mmr(*args: str, ok: tuple[int, ...] = (0,)) -> tuple[float, subprocess.CompletedProcess, float]:
    """Run ``mmr ARGS``; returns its wall time, its result and the peak of its RssAnon (MiB, sampled every 0.1 s:
    anonymous memory only, not the page cache of the files it maps)."""
    started = time.perf_counter()
    # stderr (the progress bar, with its rate) goes straight to ours, so a long run can be followed in its log
    peak_kib = 0
    with tempfile.TemporaryFile("w+") as out:
        process = subprocess.Popen([sys.executable, "-m", "mmretrieval.cli", *args], stdout=out, text=True)
        while process.poll() is None:
            peak_kib = max(peak_kib, _rss_anon_kib(process.pid))
            time.sleep(0.1)
        elapsed = time.perf_counter() - started
        out.seek(0)
        result = subprocess.CompletedProcess(process.args, process.returncode, out.read())
    if result.returncode not in ok:
        raise SystemExit(f"mmr {' '.join(args)} failed ({result.returncode}); its error is above")
    return elapsed, result, round(peak_kib / 1024)


def _rss_anon_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as status:
            return next((int(line.split()[1]) for line in status if line.startswith("RssAnon")), 0)
    except OSError:  # it has just exited
        return 0


_SERVE = r"""
import json, sys, time
import numpy as np
started = time.perf_counter()
from mmretrieval.collection.collection import Collection

def rss_anon_mib():
    for line in open('/proc/self/status'):
        if line.startswith('RssAnon'):
            return int(line.split()[1]) / 1024

collection = Collection.open(sys.argv[1])
opened_s = time.perf_counter() - started
queries = np.load(sys.argv[2])
truth = np.load(sys.argv[3])
search = collection.nearest  # the query path of search/similar, from a vector
for query in queries[:20]:  # warm-up: first touches of the maps and the index
    search(query, 10)
figures = {"open_s": opened_s}
for run in range(int(sys.argv[4])):
    latencies, hits = [], 0
    for query, expected in zip(queries, truth):
        t = time.perf_counter()
        found = search(query, 10)
        latencies.append((time.perf_counter() - t) * 1000)
        rows = {int(hit.path.rsplit('/', 1)[1][:9]) for hit in found}
        hits += len(rows & set(expected.tolist()))
    suffix = f"_pass{run + 1}" if run else ""  # later passes: the pages the first one touched are cached
    figures.update({"p50_ms" + suffix: float(np.percentile(latencies, 50)),
                    "p95_ms" + suffix: float(np.percentile(latencies, 95))})
figures.update({"recall_at_10": hits / (10 * len(queries)), "rss_anon_mib": rss_anon_mib(),
                "info": collection.info().to_dict()})
print(json.dumps(figures, default=str))
"""


def run_size(work: Path, count: int, args: argparse.Namespace) -> dict:
    """Generate (unless a complete earlier generation is there), import, index, serve one size."""
    base = work / f"n{count}"
    emb, col = base / "emb", base / "col"
    done_marker = base / "generated.json"
    if args.serve_only:
        return {"vectors": count, "dim": args.dim, **serve(base, args.passes)}
    if not done_marker.is_file():
        if base.exists():
            shutil.rmtree(base)
        started = time.perf_counter()
        queries, truth = generate(emb, count, args.dim, args.queries, args.centres, args.noise, args.shard_rows)
        np.save(base / "queries.npy", queries)
        np.save(base / "truth.npy", truth)
        done_marker.write_text(json.dumps({"generate_s": round(time.perf_counter() - started, 1)}))
    if args.generate_only:
        return json.loads(done_marker.read_text())
    generate_s = json.loads(done_marker.read_text())["generate_s"]
    if col.exists():
        shutil.rmtree(col)
    _create_collection(col)
    import_s, result, import_rss_mib = run_mmr("import", str(emb), "--collection", str(col), "--json",
                                            *(["--no-index"] if args.import_only else []))
    summary = json.loads(result.stdout)
    if not args.keep_inputs:
        shutil.rmtree(emb)
        done_marker.unlink()
    figures = {"vectors": count, "dim": args.dim, "generate_s": round(generate_s, 1),
               "import_wall_s": round(import_s, 1), "import_s": summary["elapsed_s"],
               "import_vectors_per_s": round(summary["rows_added"] / max(summary["elapsed_s"], 1e-3)),
               "import_cpu_s": summary["cpu_s"], "import_peak_rss_anon_mib": import_rss_mib,
               "index_build_s": summary["index_s"],
               "index_build_cpu_s": summary["index_cpu_s"]}
    if args.import_only:
        return figures
    figures.update(serve(base, args.passes))
    check_s, result, check_rss_mib = run_mmr("check", "--collection", str(col))  # exit 1 would stop here: damage
    figures.update({"check_s": round(check_s, 1), "check_vectors_per_s": round(count / max(check_s, 1e-3)),
                    "check_peak_rss_anon_mib": check_rss_mib})
    figures["duplicates_s"] = None if args.no_duplicates else _time_duplicates(col)
    figures["disk_bytes"] = sum(p.stat().st_size for p in col.rglob("*") if p.is_file())
    return figures


def serve(base: Path, passes: int) -> dict:
    """A fresh process opens ``base/col`` and runs the held-out queries ``passes`` times: latency, recall, RssAnon."""
    probe = subprocess.run([sys.executable, "-c", _SERVE, str(base / "col"), str(base / "queries.npy"),
                            str(base / "truth.npy"), str(passes)], capture_output=True, text=True)
    if probe.returncode != 0:
        raise SystemExit(f"serving probe failed: {probe.stderr[-2000:]}")
    return json.loads(probe.stdout.strip().splitlines()[-1])


def _create_collection(col: Path) -> None:
    """An empty collection of the benchmark's model (not timed: loading the model is not the import's work)."""
    from mmretrieval.collection.collection import Collection
    from mmretrieval.models.encoder import load_encoder

    Collection.open(col, model=load_encoder(MODEL, device="cpu"), create=True).close()


def _time_duplicates(col: Path) -> float | None:
    from mmretrieval.cli import build_parser

    commands = build_parser()._subparsers._group_actions[0].choices  # noqa: SLF001 (argparse has no public API)
    if "duplicates" not in commands:
        return None
    elapsed, _, _ = run_mmr("duplicates", "--collection", str(col), ok=(0, 1))  # 1: no groups (random vectors have none)
    return round(elapsed, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000000", help="comma-separated collection sizes")
    parser.add_argument("--dim", type=int, default=512, help="vector dimension (ViT-B-32 makes 512)")
    parser.add_argument("--queries", type=int, default=1000, help="held-out queries")
    parser.add_argument("--centres", type=int, default=4000, help="cluster centres")
    parser.add_argument("--noise", type=float, default=1.0, help="noise norm relative to the centre's (1 = hard)")
    parser.add_argument("--shard-rows", type=int, default=500_000, help="rows per clip-retrieval shard")
    parser.add_argument("--work", default="/tmp/mmr-scale", help="working folder (inputs, collections, results)")
    parser.add_argument("--keep-inputs", action="store_true", help="keep the input shards after importing")
    parser.add_argument("--no-duplicates", action="store_true",
                        help="do not time mmr duplicates (at 10 M it is a k-NN search of every vector: hours)")
    parser.add_argument("--serve-only", action="store_true",
                        help="only run the serving probe on the collection an earlier run built (after mmr index)")
    parser.add_argument("--passes", type=int, default=1,
                        help="times the queries are run; passes after the first report p50/p95_passN (cached pages)")
    parser.add_argument("--import-only", action="store_true",
                        help="import with --no-index and stop there: the import figures without the index build")
    parser.add_argument("--generate-only", action="store_true",
                        help="only write the inputs and ground truth (a later run without it reuses them)")
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    for count in (int(size) for size in args.sizes.split(",")):
        figures = run_size(work, count, args)
        if args.generate_only:
            print(f"== {count:,} x {args.dim} generated: {figures}")
            continue
        info = figures.pop("info", {})
        figures["index"] = {key: info.get(key) for key in ("index_type", "index_params", "index_vectors")}
        with open(work / "results.jsonl", "a") as results:
            results.write(json.dumps(figures) + "\n")
        print(f"== {count:,} x {args.dim}")
        for key, value in figures.items():
            print(f"  {key:22s} {value}")
        sys.stdout.flush()


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
