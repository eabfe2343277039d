"""Ingestion benchmark: decode-only, model-only and end-to-end images/s over the same JPEG folder, in one run.

    python bench/ingest.py --model ViT-B-32 --device cpu --images 400          # CPU here (random weights)
    python bench/ingest.py --model ViT-B-32 --device cuda --images 20000       # on a GPU machine

- decode-only: the ingestion's decoding pool (same worker count) over every file: read, hash, decode with
  JPEG draft mode, resize and crop to the model's input.
- model-only: the image tower on the pre-decoded uint8 tensors from the decode pass, batch by batch
  (host-to-device copy included, first batch excluded as warm-up).
- end-to-end: ``Collection.ingest`` into a fresh collection (plan, decode, embed, commit, index save).

The ratio end-to-end / min(decode, model) says how well the pipeline overlaps its stages (1.0 is perfect).
On CPU both stages compete for the same cores, so the script also prints the shared-core ceiling
``cores / (workers / decode_rate + torch_threads / model_rate)`` and the ratio against it.
JPEGs are generated in a temporary folder (640x480 by default, like typical web photos) and deleted after.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from mmretrieval.models.encoder import DualEncoder

# torch and the collection are imported inside the functions: the decoding workers import this script
# (as multiprocessing does with a main module) and should start as light as under `mmr ingest`.


def make_jpegs(folder: Path, count: int, width: int, height: int) -> list[Path]:
    """``count`` distinct photo-sized JPEGs (scenes of shapes, resized), so no two files share bytes."""
    from mmretrieval.training.scenes import generate

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        path = folder / f"img{index:06d}.jpg"
        generate(7, index, size=256).image.resize((width, height)).save(path, "JPEG", quality=90)
        paths.append(path)
    return paths


def decode_only(encoder: "DualEncoder", paths: list[Path], workers: int) -> tuple[float, list[np.ndarray]]:
    from mmretrieval.ingest.batches import Decoded, DecodeTask
    from mmretrieval.ingest.pool import DecodePool

    tasks = [DecodeTask(i, str(p)) for i, p in enumerate(paths)]
    started = time.perf_counter()
    results = list(DecodePool(encoder.preparer, workers).run(tasks))
    seconds = time.perf_counter() - started
    pixels = [r.pixels for r in sorted(results, key=lambda r: r.image_id) if isinstance(r, Decoded)]
    if len(pixels) != len(paths):
        raise SystemExit(f"{len(paths) - len(pixels)} benchmark images failed to decode")
    return len(paths) / seconds, pixels


def model_only(encoder: "DualEncoder", pixels: list[np.ndarray], batch_size: int) -> float:
    import torch

    batches = [torch.from_numpy(np.stack(pixels[s:s + batch_size])) for s in range(0, len(pixels), batch_size)]
    encoder.encode_prepared(batches[0])  # warm-up: kernels, allocator
    pin = encoder.device.type == "cuda"
    started = time.perf_counter()
    for batch in batches[1:]:
        encoder.encode_prepared(batch.pin_memory() if pin else batch)
    if encoder.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    return sum(len(b) for b in batches[1:]) / seconds


def end_to_end(encoder: "DualEncoder", folder: Path, collection_dir: Path, batch_size: int, workers: int) -> float:
    from mmretrieval.collection.collection import Collection

    started = time.perf_counter()
    with Collection.open(collection_dir, model=encoder, create=True) as collection:
        summary = collection.ingest([folder], batch_size=batch_size, workers=workers)
    seconds = time.perf_counter() - started
    if summary.embedded != len(list(folder.iterdir())):
        raise SystemExit(f"end-to-end embedded {summary.embedded} images; expected all: {summary}")
    return summary.embedded / seconds


def main() -> None:
    import torch

    from mmretrieval.models.encoder import load_encoder
    from mmretrieval.ingest.batches import IngestConfig

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ViT-B-32", help="model spec (an architecture alone = random weights)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--workers", type=int, help="decoding processes (default: the ingestion default)")
    parser.add_argument("--batch-size", type=int, help="default: the ingestion default for the device")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    args = parser.parse_args()

    encoder = load_encoder(args.model, device=args.device)
    config = IngestConfig.for_device(encoder.device.type, args.batch_size, args.workers)
    with tempfile.TemporaryDirectory(prefix="mmr-bench-") as tmp:
        folder = Path(tmp) / "images"
        make_jpegs(folder, args.images, args.width, args.height)
        print(f"{args.model} on {encoder.device}, {args.images} JPEGs {args.width}x{args.height}, "
              f"batch {config.batch_size}, {config.workers} decode workers, torch threads "
              f"{torch.get_num_threads()}, cores {os.cpu_count()}", flush=True)
        decode_rate, pixels = decode_only(encoder, sorted(folder.iterdir()), config.workers)
        print(f"decode-only   {decode_rate:9.1f} images/s", flush=True)
        model_rate = model_only(encoder, pixels, config.batch_size)
        print(f"model-only    {model_rate:9.1f} images/s", flush=True)
        e2e_rate = end_to_end(encoder, folder, Path(tmp) / "collection", config.batch_size, config.workers)
        print(f"end-to-end    {e2e_rate:9.1f} images/s", flush=True)
        print(f"end-to-end / min(decode, model) = {e2e_rate / min(decode_rate, model_rate):.2f}")
        if encoder.device.type == "cpu":
            # Decoding and the model share the cores: each image costs workers/decode + threads/model core-seconds.
            cores = os.cpu_count() or 1
            ceiling = cores / (config.workers / decode_rate + torch.get_num_threads() / model_rate)
            print(f"shared-core ceiling {ceiling:.1f} images/s; "
                  f"end-to-end / min(decode, model, ceiling) = {e2e_rate / min(decode_rate, model_rate, ceiling):.2f}")


if __name__ == "__main__":
    main()
