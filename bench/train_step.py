"""Seconds per training step of the demo model (`mmr train`'s own step: forward, the multi-positive loss with
unrelated texts, backward, AdamW), in float32 and in bf16 autocast, on one batch of generated scenes.

    python bench/train_step.py                    # CPU here, batch 128, 3 timed steps after one warm-up
    python bench/train_step.py --device cuda --batch-size 512
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import open_clip  # noqa: E402
import torch  # noqa: E402

from mmretrieval.images.preprocess import ImagePreparer  # noqa: E402
from mmretrieval.models.encoder import PixelNormaliser, resolve_device  # noqa: E402
from mmretrieval.models.precision import native_bf16  # noqa: E402
from mmretrieval.training.config import TrainConfig  # noqa: E402
from mmretrieval.training.train import SceneDataset, _build, _collate, _optimizer, _step  # noqa: E402
from mmretrieval.training.unrelated import unrelated_texts  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    device = resolve_device(args.device)
    config = TrainConfig(out="unused", init="builtin:shapes", batch_size=args.batch_size, device=args.device)
    loaded, _ = _build(config, device)
    model = loaded.model.float().train()
    data = SceneDataset(0, args.batch_size, ImagePreparer(loaded.identity.preprocess), loaded.tokenizer, config)
    batch = _collate([data[i] for i in range(args.batch_size)])
    unrelated = loaded.tokenizer(unrelated_texts(0, 0, config.unrelated))
    normalise, optimizer = PixelNormaliser(loaded.identity.preprocess, device), _optimizer(model, config)
    print(f"device {device}, batch {args.batch_size}, native bf16: {native_bf16(device)}")
    for name, enabled in (("float32", False), ("bf16 autocast", True)):
        autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)
        seconds = []
        for _ in range(args.steps + 1):  # the first is a warm-up
            started = time.perf_counter()
            _step(model, normalise, autocast, optimizer, open_clip.loss.ClipLoss(), False, batch, unrelated, 1e-6,
                  device)
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds.append(time.perf_counter() - started)
        print(f"{name}: {min(seconds[1:]):.2f} s a step (best of {args.steps}; all: "
              f"{', '.join(f'{s:.2f}' for s in seconds[1:])})")


if __name__ == "__main__":
    main()
