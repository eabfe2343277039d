"""Ingestion benchmark: decode-only (CPU pool and device), model-only and end-to-end images/s over the same JPEG
folder, in one run; optionally clip-retrieval's `clip inference` on the same folder in the same call.

    python bench/ingest.py --model ViT-B-32 --device cpu --images 400                  # CPU here (random weights)
    python bench/ingest.py --model ViT-B-32 --device cuda --images 20000 --set mixed   # on a GPU machine
    python bench/ingest.py ... --compare-clip-retrieval     # needs .crkit/ (../shared/device/crkit.sh)

- image sets: ``uniform`` (every JPEG --width x --height), ``mixed`` (0.2-1 megapixel, aspect ratios from 3:4
  to 16:9, one in eight turned by an EXIF orientation, one in ten greyscale), ``camera`` (12 megapixels,
  4000x3000, as phone cameras write). Generated in parallel in a temporary folder and deleted after.
- decode-only (CPU): the ingestion's decoding pool (same worker count) over every file: read, hash, decode
  with JPEG draft mode, resize and crop to the model's input.
- decode-only (device): reader threads read, hash and probe the files; batches decode, orient, resize and
  crop on the model's device (nvJPEG on CUDA). Printed when the end-to-end run decodes on the device.
- model-only: the image tower on uint8 batches of the model's input size (host-to-device copy included,
  first batch excluded as warm-up).
- end-to-end: ``Collection.ingest`` into a fresh collection (plan, decode, embed, commit, index save).
  When it decodes on the device, also ``end_to_end_unshared``: the same with the CPU pool decoding only what
  the device cannot (``share_jpegs=False``), to see what sharing the JPEGs with the CPU pool is worth here.

The ratio end-to-end / min(decode, model) says how well the pipeline overlaps its stages (1.0 is perfect).
On CPU both stages compete for the same cores, so the script also prints the shared-core ceiling
``cores / (workers / decode_rate + torch_threads / model_rate)`` and the ratio against it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mmretrieval.models.encoder import DualEncoder

# torch and the collection are imported inside the functions: the decoding workers import this script
# (as multiprocessing does with a main module) and should start as light as under `mmr ingest`.

_MIXED_SIDES = [(500, 375), (640, 480), (800, 600), (1024, 768), (1152, 864), (768, 1024), (960, 540),
                (1280, 720), (600, 800), (720, 720)]


def _jpeg_size(image_set: str, index: int, width: int, height: int) -> tuple[tuple[int, int], int, bool]:
    """(size, EXIF orientation, greyscale) of image ``index`` of a set."""
    if image_set == "uniform":
        return (width, height), 1, False
    if image_set == "camera":
        return (4000, 3000), (6 if index % 8 == 3 else 1), False
    rng = random.Random(index)
    return rng.choice(_MIXED_SIDES), (6 if index % 8 == 3 else 1), index % 10 == 7


def _write_jpeg(job: tuple[str, str, int, int, int]) -> None:
    from PIL import Image

    from mmretrieval.training.scenes import generate

    folder, image_set, index, width, height = job
    size, orientation, grey = _jpeg_size(image_set, index, width, height)
    image = generate(7, index, size=256).image.resize(size, Image.Resampling.BILINEAR)
    image = image.convert("L") if grey else image
    exif = Image.Exif()
    if orientation != 1:
        exif[0x0112] = orientation
    image.save(Path(folder) / f"img{index:06d}.jpg", "JPEG", quality=90, exif=exif.tobytes())


def make_jpegs(folder: Path, count: int, image_set: str = "uniform", width: int = 640, height: int = 480,
               processes: int | None = None) -> list[Path]:
    """``count`` distinct JPEGs of a set (scenes of shapes, resized), so no two files share bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    jobs = [(str(folder), image_set, index, width, height) for index in range(count)]
    with ProcessPoolExecutor(processes or os.cpu_count()) as pool:
        list(pool.map(_write_jpeg, jobs, chunksize=64))
    return sorted(folder.iterdir())


def decode_only_cpu(encoder: "DualEncoder", paths: list[Path], workers: int, batch_size: int) -> float:
    from mmretrieval.ingest.batches import DecodeTask
    from mmretrieval.ingest.pool import DecodePool

    tasks = [DecodeTask(i, str(p)) for i, p in enumerate(paths)]
    started, decoded = time.perf_counter(), 0
    for batch in DecodePool(encoder.preparer, workers).batches(tasks, batch_size):
        decoded += len(batch.decoded)
    seconds = time.perf_counter() - started
    if decoded != len(paths):
        raise SystemExit(f"{len(paths) - decoded} benchmark images failed to decode")
    return len(paths) / seconds


def decode_only_device(encoder: "DualEncoder", paths: list[Path], batch_size: int, read_threads: int) -> float:
    import torch
    from concurrent.futures import ThreadPoolExecutor

    from mmretrieval.ingest.batches import DecodeTask
    from mmretrieval.ingest.device_decode import DeviceJpegDecoder, Probed
    from mmretrieval.ingest.routing import probed_groups

    decoder = DeviceJpegDecoder(encoder.preparer.preprocess, encoder.device)
    tasks = [DecodeTask(i, str(p)) for i, p in enumerate(paths)]
    decoded = for_cpu = 0
    started = time.perf_counter()
    with ThreadPoolExecutor(read_threads) as readers:
        for probed in probed_groups(readers, tasks, batch_size):
            records, _, refused = decoder.decode([p for p in probed if isinstance(p, Probed)])
            decoded += len(records)
            for_cpu += len(refused) + sum(not isinstance(p, Probed) for p in probed)
    if encoder.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    if for_cpu:
        print(f"  (device decode left {for_cpu} files to the CPU pool)", flush=True)
    return decoded / seconds


def model_only(encoder: "DualEncoder", batch_size: int, images: int) -> float:
    import torch

    shape = (batch_size, *encoder.preparer.output_shape)
    batch = torch.randint(0, 256, shape, dtype=torch.uint8)
    if encoder.device.type == "cuda":
        batch = batch.pin_memory()
    encoder.encode_prepared(batch)  # warm-up: kernels, allocator
    batches = max(1, images // batch_size)
    started = time.perf_counter()
    for _ in range(batches):
        encoder.encode_prepared(batch)
    if encoder.device.type == "cuda":
        torch.cuda.synchronize()
    return batches * batch_size / (time.perf_counter() - started)


def end_to_end(encoder: "DualEncoder", folder: Path, collection_dir: Path, batch_size: int, workers: int,
               device_decode: bool | None, share_jpegs: bool = True) -> float:
    from mmretrieval.collection.collection import Collection

    started = time.perf_counter()
    with Collection.open(collection_dir, model=encoder, create=True) as collection:
        summary = collection.ingest([folder], batch_size=batch_size, workers=workers, device_decode=device_decode,
                                    share_jpegs=share_jpegs)
    seconds = time.perf_counter() - started
    if summary.embedded != len(list(folder.iterdir())):
        raise SystemExit(f"end-to-end embedded {summary.embedded} images; expected all: {summary}")
    return summary.embedded / seconds


def clip_retrieval(encoder: "DualEncoder", arch: str, folder: Path, tmp: Path, batch_size: int,
                   workers: int) -> dict:
    """clip-retrieval's `clip inference` on ``folder`` with the same weights, in a process whose PYTHONPATH puts
    its kit (.crkit, with the open_clip it was made for) first."""
    import torch

    checkpoint = tmp / "weights.pt"
    torch.save({name: value.float() for name, value in encoder.model.state_dict().items()}, checkpoint)
    kit = Path(__file__).resolve().parent.parent / ".crkit"
    if not kit.is_dir():
        raise SystemExit(f"--compare-clip-retrieval needs clip-retrieval's kit in {kit}: bash ../shared/device/crkit.sh")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(kit), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, str(Path(__file__).with_name("clip_retrieval_run.py")), str(folder), arch,
                           str(checkpoint), str(batch_size), str(workers)], env=env, capture_output=True, text=True)
    start = done.stdout.rfind('{"tool"')  # its progress line has no newline before the figures
    if done.returncode or start < 0:
        raise SystemExit(f"clip-retrieval failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout[start:].splitlines()[0])


def main() -> None:
    import torch

    from mmretrieval.ingest.batches import IngestConfig
    from mmretrieval.ingest.device_decode import DeviceJpegDecoder
    from mmretrieval.models.encoder import load_encoder
    from mmretrieval.models.settings import PRECISIONS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ViT-B-32", help="model spec (an architecture alone = random weights)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto")
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--set", dest="image_set", choices=("uniform", "mixed", "camera"), default="uniform")
    parser.add_argument("--workers", type=int, help="decoding processes (default: the ingestion default)")
    parser.add_argument("--batch-size", type=int, help="default: the ingestion default for the device")
    parser.add_argument("--device-decode", choices=("auto", "on", "off"), default="auto")
    parser.add_argument("--width", type=int, default=640, help="--set uniform")
    parser.add_argument("--height", type=int, default=480, help="--set uniform")
    parser.add_argument("--compare-clip-retrieval", action="store_true",
                        help="also run clip-retrieval's `clip inference` on the same folder (kit: crkit.sh)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()

    encoder = load_encoder(args.model, device=args.device, precision=args.precision)
    device_decode = {"auto": None, "on": True, "off": False}[args.device_decode]
    config = IngestConfig.for_device(encoder.device.type, args.batch_size, args.workers,
                                     device_decode=device_decode)
    on_device = (encoder.device.type == "cuda" if device_decode is None else device_decode) and \
        DeviceJpegDecoder.supports(encoder.preparer.preprocess)
    figures: dict = {"model": args.model, "device": str(encoder.device), "dtype": str(encoder.dtype), "images": args.images,
                     "set": args.image_set, "batch": config.batch_size, "workers": config.workers,
                     "torch_threads": torch.get_num_threads(), "cores": os.cpu_count(), "device_decode": on_device}
    if encoder.device.type == "cuda":
        figures["gpu"] = torch.cuda.get_device_name()
    with tempfile.TemporaryDirectory(prefix="mmr-bench-") as tmp:
        folder = Path(tmp) / "images"
        started = time.perf_counter()
        paths = make_jpegs(folder, args.images, args.image_set, args.width, args.height)
        sizes = [_jpeg_size(args.image_set, i, args.width, args.height)[0] for i in range(len(paths))]
        megapixels = sum(width * height for width, height in sizes)
        print(json.dumps(figures), flush=True)
        print(f"{len(paths)} JPEGs, mean {megapixels / len(paths) / 1e6:.2f} MP, "
              f"{sum(p.stat().st_size for p in paths) / len(paths) / 1e3:.0f} kB, made in "
              f"{time.perf_counter() - started:.0f} s", flush=True)

        def record(name: str, rate: float) -> float:
            figures[name] = round(rate, 1)
            print(f"{name:<22} {rate:9.1f} images/s", flush=True)
            return rate

        cpu_rate = record("decode_only_cpu", decode_only_cpu(encoder, paths, config.workers, config.batch_size))
        decode_rate = cpu_rate
        if on_device:
            device_rate = record("decode_only_device", decode_only_device(encoder, paths, config.batch_size,
                                                                          config.read_threads))
            decode_rate = max(cpu_rate, device_rate)
        model_rate = record("model_only", model_only(encoder, config.batch_size, min(args.images, 20_000)))
        e2e_rate = record("end_to_end", end_to_end(encoder, folder, Path(tmp) / "collection", config.batch_size,
                                                   config.workers, device_decode))
        if on_device:  # the same, the CPU pool decoding only what the device cannot (routing.share_jpegs off)
            record("end_to_end_unshared", end_to_end(encoder, folder, Path(tmp) / "unshared", config.batch_size,
                                                     config.workers, device_decode, share_jpegs=False))
        figures["ratio_to_min_decode_model"] = round(e2e_rate / min(decode_rate, model_rate), 3)
        print(f"end-to-end / min(decode, model) = {figures['ratio_to_min_decode_model']:.2f}")
        if encoder.device.type == "cpu":
            # Decoding and the model share the cores: each image costs workers/decode + threads/model core-seconds.
            cores = os.cpu_count() or 1
            ceiling = cores / (config.workers / cpu_rate + torch.get_num_threads() / model_rate)
            figures["shared_core_ceiling"] = round(ceiling, 1)
            print(f"shared-core ceiling {ceiling:.1f} images/s; "
                  f"end-to-end / min(decode, model, ceiling) = {e2e_rate / min(decode_rate, model_rate, ceiling):.2f}")
        if args.compare_clip_retrieval:
            theirs = clip_retrieval(encoder, args.model, folder, Path(tmp), config.batch_size, config.workers)
            figures["clip_retrieval"] = theirs
            figures["ratio_to_clip_retrieval"] = round(e2e_rate / theirs["images_per_s"], 2)
            print(f"clip-retrieval         {theirs['images_per_s']:9.1f} images/s ({theirs['wall_s']} s wall); "
                  f"end-to-end / clip-retrieval = {figures['ratio_to_clip_retrieval']:.2f}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1) + "\n")


if __name__ == "__main__":
    main()
