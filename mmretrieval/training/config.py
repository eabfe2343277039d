"""What a training run is told (no torch here, so the CLI can describe it without importing torch)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

from ..errors import MMRError, SettingError

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
    arch: str | None = None  # a fresh architecture: an open_clip registry name; shapes-vit-tiny unless init is given
    init: str | None = None  # fine-tune this model spec instead of a fresh architecture (it keeps the init's)
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
    log_every_s: float = 60.0  # the longest wait between two log lines, besides a step's own (also every 50 steps)

    def __post_init__(self) -> None:
        """Resolve the architecture and check every number, so that a bad value is one clear error before any
        work (not a numpy warning, a ValueError from torch, or a setting saved that never took effect).

        Raises:
            MMRError: ``arch`` with ``init``, or a value out of its range (the message names both).
        """
        if self.init and self.arch:
            raise MMRError(f"arch {self.arch!r} and init {self.init!r} both given: a fine-tune keeps the "
                           "architecture of the model it starts from; give one of them")
        if not self.init and not self.arch:
            object.__setattr__(self, "arch", SHAPES_ARCH)  # frozen: the default resolved once, here
        if not self.out.strip():
            raise SettingError("out", "is empty: name a folder for the trained model")
        for name, minimum, why in _WHOLE_NUMBERS:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
                raise SettingError(name, f"must be a whole number of at least {minimum}{why}, got {value!r}")
        if not 0 <= self.seed < 2 ** 63 - 1:
            raise SettingError("seed", f"must be a whole number from 0 to 2**63 - 2, got {self.seed!r}")
        if not (_finite(self.lr) and self.lr > 0):
            raise SettingError("lr", f"must be a number above 0, got {self.lr!r}")
        if not (_finite(self.log_every_s) and self.log_every_s >= 0):
            raise SettingError("log_every_s", f"must be a number of seconds of at least 0, got {self.log_every_s!r}")
        if not (_finite(self.weight_decay) and self.weight_decay >= 0):
            raise SettingError("weight_decay", f"must be a number of at least 0, got {self.weight_decay!r}")
        for name in ("classic_share", "position_rate", "label_rate", "grey_rate"):
            value = getattr(self, name)
            if not (_finite(value) and 0 <= value <= 1):
                raise SettingError(name, f"must be a share from 0 to 1, got {value!r}")
        if self.data != "scenes":  # they shape the generated scenes' drawing and captions: a captioned set has neither
            for setting in fields(self):
                if setting.name in SCENES_ONLY and getattr(self, setting.name) != setting.default:
                    raise SettingError(setting.name, f"applies to the generated scenes only, not to the captioned set "
                                                     f"{self.data}")


_WHOLE_NUMBERS = (  # TrainConfig's whole-number fields: name, smallest allowed value, why (when not obvious)
    ("steps", 1, " (a run of no steps would save no model)"),
    ("batch_size", 2, " (each pair's wrong answers are the other pairs of its step)"),
    ("warmup_steps", 0, ""),
    ("workers", 0, " (0 loads data in this process)"),
    ("eval_every", 0, " (0: held-out scores only at the end)"),
    ("scene_size", 32, ""),
    ("unrelated", 0, " (0: none)"),
    ("seed", 0, ""),
)


# settings of the generated scenes only: refused (and not recorded) with a captioned set
SCENES_ONLY = ("scene_size", "classic_share", "position_rate", "label_rate", "grey_rate", "unrelated")


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class StepLog:
    """One line of the training log, handed to the progress callback and written to ``train_log.jsonl``."""

    step: int
    loss: float
    lr: float
    seconds: float
    held_out: dict[str, float | int] = field(default_factory=dict)  # scores, and counts of images and captions
