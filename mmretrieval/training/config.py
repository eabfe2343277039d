"""What a training run is told (no torch here, so the CLI can describe it without importing torch)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# The bundled demo model: a small ViT and text transformer with the CLIP tokenizer (fast on a CPU).
SHAPES_ARCH = "shapes-vit-tiny"
SHAPES_MODEL_CFG: dict[str, Any] = {
    "embed_dim": 128,
    "vision_cfg": {"image_size": 96, "layers": 6, "width": 192, "patch_size": 8, "head_width": 64},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 128, "heads": 4, "layers": 4},
}
SHAPES_PREPROCESS: dict[str, Any] = {
    "size": [96, 96], "mode": "RGB", "mean": [0.48145466, 0.4578275, 0.40821073],
    "std": [0.26862954, 0.26130258, 0.27577711], "interpolation": "bicubic", "resize_mode": "shortest",
    "fill_color": 0,
}


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on; saved next to the weights."""

    out: str  # output model directory
    data: str = "scenes"  # "scenes" (synthetic) or a captioned set: folder with sidecar .txt files, or a CSV
    arch: str = SHAPES_ARCH  # a fresh architecture: shapes-vit-tiny or an open_clip registry name
    init: str | None = None  # fine-tune this model spec instead of a fresh architecture
    steps: int = 3000  # optimiser steps
    batch_size: int = 256  # pairs per step (also the number of in-batch negatives)
    lr: float = 1e-3  # peak learning rate, after linear warm-up, then cosine decay to zero
    warmup_steps: int = 200  # linear warm-up length
    weight_decay: float = 0.1  # AdamW decay on weight matrices (not gains, biases or the temperature)
    seed: int = 0  # seeds the weights, the scene stream and the data order
    workers: int = 2  # data-loading processes
    device: str = "auto"  # auto, cpu, cuda[:N], mps
    eval_every: int = 500  # steps between held-out scores (0: only at the end)
    half: bool = True  # store weights as float16 (half the size on disk)
    scene_size: int = 128  # pixels of generated scenes before the model's own resize
    classic_share: float = 0.0  # share of scenes drawn with the classic rendering (rehearsal when fine-tuning)
    position_rate: float = 0.5  # chance that a single object's caption names its position
    label_rate: float = 0.1  # chance that a scene's caption is a bare label ("circle", "red shape"), as users type
    grey_rate: float = 0.1  # chance that a scene is shown in grey, its caption naming no colour (shape apart from hue)
    unrelated: int = 32  # texts that describe no scene, per step, as wrong answers for every image (0: none)


@dataclass(frozen=True)
class StepLog:
    """One line of the training log, handed to the progress callback and written to ``train_log.jsonl``."""

    step: int
    loss: float
    lr: float
    seconds: float
    held_out: dict[str, float] = field(default_factory=dict)
