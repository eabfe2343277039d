"""Ingestion through Ray against the single-machine path, on the same folder, in one run.

    python bench/ray_ingest.py                                   # builtin:shapes, 400 JPEGs, this machine
    python bench/ray_ingest.py --model ViT-B-32 --images 400     # a CLIP-sized model (random weights)
    python bench/ray_ingest.py --model ViT-B-32 --images 20000 --workers 16   # GPU node: 16 decode tasks, 1 GPU actor

Prints images/s of ``Collection.ingest`` (single machine, default workers) and of ``Collection.ingest(ray=…)``
with 1 and 2 decode workers (``--workers`` to choose others) on a local Ray with all this machine's cores
(and GPUs, which Ray finds itself: one model actor per GPU), and each Ray rate as a ratio of the
single-machine rate (the mean of one run before and one after the Ray runs, since a shared machine's load
drifts). Each run ingests into a fresh collection; the Ray timings include starting the model
actors (the model loads once per actor) but not starting Ray itself, which is printed apart.

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


def single_machine(model, folder: Path, target: Path, batch_size: int | None) -> float:
    from mmretrieval.collection.collection import Collection

    with Collection.open(target, model=model, create=True) as collection:
        started = time.perf_counter()
        summary = collection.ingest([folder], batch_size=batch_size)
        seconds = time.perf_counter() - started
    return _rate(summary, folder, seconds)


def through_ray(model, folder: Path, target: Path, batch_size: int | None, workers: int) -> float:
    from mmretrieval.collection.collection import Collection
    from mmretrieval.ingest.ray_runner import RayIngestConfig

    with Collection.open(target, model=model, create=True) as collection:
        started = time.perf_counter()
        summary = collection.ingest([folder], batch_size=batch_size, ray=RayIngestConfig(decode_tasks=workers))
        seconds = time.perf_counter() - started
    return _rate(summary, folder, seconds)


def _rate(summary, folder: Path, seconds: float) -> float:
    expected = len(list(folder.iterdir()))
    if summary.embedded != expected:
        raise SystemExit(f"embedded {summary.embedded} of {expected} images: {summary}")
    return expected / seconds


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


def fixed_weights(spec: str, directory: Path) -> str:
    """``spec``, or for an architecture alone (random weights) a saved copy of one draw of them: every Ray
    actor must load the same weights."""
    import open_clip

    from mmretrieval.models.specs import save_model_dir

    config = open_clip.get_model_config(spec) if ":" not in spec and "/" not in spec else None
    if config is None:
        return spec
    model = open_clip.create_model(spec, pretrained=None)
    return str(save_model_dir(model, config, directory))


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
        spec = fixed_weights(args.model, Path(tmp) / "model")
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
        print(f"single machine        {baseline:8.1f} images/s", flush=True)
        started = time.perf_counter()
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
        print(f"(local Ray started in {time.perf_counter() - started:.1f} s: "
              f"{ray.cluster_resources().get('CPU', 0):g} CPUs, {ray.cluster_resources().get('GPU', 0):g} GPUs)",
              flush=True)
        try:
            rates = {workers: through_ray(spec, folder, Path(tmp) / f"ray{workers}", args.batch_size, workers)
                     for workers in args.workers}
        finally:
            ray.shutdown()
        again = single_machine(encoder, folder, Path(tmp) / "single-again", args.batch_size)
        print(f"single machine again  {again:8.1f} images/s (after the Ray runs; the ratios use the mean)", flush=True)
        baseline = (baseline + again) / 2
        for workers, rate in rates.items():
            print(f"Ray, {workers} decode worker{'s' if workers > 1 else ' '}  {rate:8.1f} images/s   "
                  f"ratio to single machine {rate / baseline:.2f}", flush=True)


if __name__ == "__main__":
    main()
