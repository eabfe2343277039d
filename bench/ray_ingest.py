"""Ingestion through Ray against the single-machine path, on the same folder, in one run.

    python bench/ray_ingest.py                                   # builtin:shapes, 400 JPEGs, this machine
    python bench/ray_ingest.py --model ViT-B-32 --images 400     # a CLIP-sized model (random weights)
    python bench/ray_ingest.py --model ViT-B-32 --images 20000 --workers 16   # GPU node: 16 decode tasks, 1 GPU actor

Prints images/s of ``Collection.ingest`` (single machine, default workers) and of ``Collection.ingest(ray=…)``
with 1 and 2 decode workers (``--workers`` to choose others) on a local Ray with all this machine's cores
(and GPUs, which Ray finds itself: one model actor per GPU), and each Ray rate as a ratio of the
single-machine rate (the mean of one run before and one after the Ray runs, since a shared machine's load
drifts). Each run ingests into a fresh collection; the wall rate of a Ray run includes starting its model
actors (the model loads once per actor) but not starting Ray itself, which is printed apart. The steady rate
counts from the first commit to the last: the pipeline's throughput once it runs, without fixed start-up costs.

It also prints the per-image costs that size a cluster: CPU milliseconds to read, decode and prepare one
image (``decode_rows`` in this process), and milliseconds of the model per image (``Embedder`` in this
process, batch as given), for ``docs/scaling.md``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from ingest import make_jpegs  # noqa: E402  (the same photo-like JPEGs as bench/ingest.py)


class Clock:
    """A progress callback that notes when each commit landed: wall rate, and the steady rate after the first."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.commits: list[tuple[float, int]] = []

    def __call__(self, done: int, total: int) -> None:
        if done:
            self.commits.append((time.perf_counter(), done))

    def rates(self, summary, folder: Path) -> tuple[float, float]:
        """(images/s over the whole call, images/s from the first commit to the last)."""
        expected = len(list(folder.iterdir()))
        if summary.embedded != expected:
            raise SystemExit(f"embedded {summary.embedded} of {expected} images: {summary}")
        (first, first_done), (last, last_done) = self.commits[0], self.commits[-1]
        steady = (last_done - first_done) / (last - first) if last > first else float("nan")
        return expected / (time.perf_counter() - self.started), steady


def single_machine(model, folder: Path, target: Path, batch_size: int | None) -> tuple[float, float]:
    from mmretrieval.collection.collection import Collection

    with Collection.open(target, model=model, create=True) as collection:
        clock = Clock()
        summary = collection.ingest([folder], batch_size=batch_size, progress=clock)
        return clock.rates(summary, folder)


def through_ray(model, folder: Path, target: Path, batch_size: int | None, workers: int) -> tuple[float, float]:
    from mmretrieval.collection.collection import Collection
    from mmretrieval.ingest.ray_runner import RayIngestConfig

    with Collection.open(target, model=model, create=True) as collection:
        clock = Clock()
        # Results of 64 rows, so that commits are frequent enough to time the steady state on a few hundred images.
        summary = collection.ingest([folder], batch_size=batch_size, progress=clock,
                                    ray=RayIngestConfig(decode_tasks=workers, segment_rows=64))
        return clock.rates(summary, folder)


def per_image_costs(encoder, folder: Path, batch_size: int) -> tuple[float, float, float]:
    """(decode CPU ms, model CPU ms (all threads), model wall ms) per image, measured in this process.

    CPU time, unlike wall time, barely moves when other processes share the machine."""
    import numpy as np

    from mmretrieval.ingest.ray_stages import Embedder, decode_rows

    paths = sorted(folder.iterdir())[:max(batch_size, 64)]
    batch = {"image_id": np.arange(len(paths), dtype=np.int64),
             "path": np.array([os.fsencode(p) for p in paths], dtype=object),
             "size": np.zeros(len(paths), np.int64), "mtime_ns": np.zeros(len(paths), np.int64)}
    started = time.process_time()
    decoded = decode_rows(batch, encoder.preparer)
    decode_ms = 1000 * (time.process_time() - started) / len(paths)
    embedder = Embedder(encoder.identity.to_json(), encoder.device.type)
    embedder({name: column[:2] for name, column in decoded.items()})  # warm-up
    started, started_cpu = time.perf_counter(), time.process_time()
    embedder(decoded)
    if encoder.device.type == "cuda":
        import torch

        torch.cuda.synchronize()
    model_ms = 1000 * (time.perf_counter() - started) / len(paths)
    return decode_ms, 1000 * (time.process_time() - started_cpu) / len(paths), model_ms


def main() -> None:
    import ray
    import torch

    from mmretrieval.models.encoder import load_encoder

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="builtin:shapes", help="model spec (an architecture alone = random weights)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="Ray decode workers to try")
    parser.add_argument("--batch-size", type=int, help="default: each path's default for the device")
    parser.add_argument("--costs-only", action="store_true", help="print the per-image costs and stop")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="mmr-bench-ray-") as tmp:
        spec = args.model  # an architecture alone draws the same (seeded) weights in every actor
        encoder = load_encoder(spec, device=args.device)
        folder = Path(tmp) / "images"
        make_jpegs(folder, args.images, args.width, args.height)
        cores = len(os.sched_getaffinity(0))
        print(f"{args.model} on {encoder.device}, {args.images} JPEGs {args.width}x{args.height}, {cores} cores, "
              f"torch threads {torch.get_num_threads()}", flush=True)
        decode_ms, model_cpu_ms, model_ms = per_image_costs(encoder, folder, args.batch_size or 32)
        print(f"per image: decode {decode_ms:.2f} CPU ms (read, hash, decode, resize); model {model_cpu_ms:.2f} "
              f"CPU ms, {model_ms:.2f} ms wall on {encoder.device}", flush=True)
        if args.costs_only:
            return
        baseline = single_machine(encoder, folder, Path(tmp) / "single", args.batch_size)
        print(f"single machine        {baseline[0]:8.1f} images/s, steady {baseline[1]:8.1f}", flush=True)
        started = time.perf_counter()
        ray.init(address="local", include_dashboard=False, log_to_driver=False, configure_logging=False)
        print(f"(local Ray started in {time.perf_counter() - started:.1f} s: "
              f"{ray.cluster_resources().get('CPU', 0):g} CPUs, {ray.cluster_resources().get('GPU', 0):g} GPUs)",
              flush=True)
        try:
            rates = {workers: through_ray(spec, folder, Path(tmp) / f"ray{workers}", args.batch_size, workers)
                     for workers in args.workers}
        finally:
            ray.shutdown()
        again = single_machine(encoder, folder, Path(tmp) / "single-again", args.batch_size)
        print(f"single machine again  {again[0]:8.1f} images/s, steady {again[1]:8.1f} (after the Ray runs; the "
              "ratios use the mean of both)", flush=True)
        wall, steady = (baseline[0] + again[0]) / 2, (baseline[1] + again[1]) / 2
        for workers, (rate, steady_rate) in rates.items():
            print(f"Ray, {workers} decode worker{'s' if workers > 1 else ' '}  {rate:8.1f} images/s, steady "
                  f"{steady_rate:8.1f}   ratio to single machine {rate / wall:.2f}, steady {steady_rate / steady:.2f}",
                  flush=True)


if __name__ == "__main__":
    main()
