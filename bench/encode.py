"""Throughput of DualEncoder.encode_prepared (model only: uint8 batch → unit vectors) and of
encode_images (PIL preprocessing in this process + model), in images/s, for a few models and batch sizes.

    python bench/encode.py                        # CPU here: builtin:shapes and ViT-B-32 (random weights)
    python bench/encode.py --device cuda --models ViT-B-32 ViT-B-16 --batch-sizes 256 512 1024
    python bench/encode.py --models ViT-B-32 --precision fp32 bf16   # float32 against bf16 (native bf16 CPUs)
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from mmretrieval.training import scenes  # noqa: E402
from mmretrieval.models.encoder import load_encoder  # noqa: E402
from mmretrieval.models.settings import PRECISIONS  # noqa: E402


def _rate(fn, images: int, seconds: float) -> float:
    fn()  # warm-up (kernels, allocator)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        fn()
        done += images
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return done / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["builtin:shapes", "ViT-B-32"])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[16, 64])
    parser.add_argument("--seconds", type=float, default=5.0, help="timed seconds per measurement")
    parser.add_argument("--precision", nargs="+", default=["auto"], choices=PRECISIONS)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"gpu {torch.cuda.get_device_name() if torch.cuda.is_available() else 'none'}")
    print("model\tdevice\tdtype\tbatch\tmodel_only_img_per_s\twith_pil_preprocess_img_per_s")
    for spec, precision in ((spec, precision) for spec in args.models for precision in args.precision):
        encoder = load_encoder(spec, device=args.device, precision=precision)
        pil_images = [scenes.generate(0, i, size=256).image for i in range(64)]
        for batch_size in args.batch_sizes:
            size = encoder.preparer.size
            batch = torch.randint(0, 256, (batch_size, 3, size, size), dtype=torch.uint8)
            if encoder.device.type == "cuda":
                batch = batch.pin_memory()
            model_only = _rate(lambda: encoder.encode_prepared(batch), batch_size, args.seconds)
            sample = (pil_images * (batch_size // len(pil_images) + 1))[:batch_size]
            with_pil = _rate(lambda: encoder.encode_images(sample, batch_size=batch_size), batch_size, args.seconds)
            print(f"{spec}\t{encoder.device}\t{encoder.dtype}\t{batch_size}\t{model_only:.1f}\t{with_pil:.1f}", flush=True)


if __name__ == "__main__":
    main()
