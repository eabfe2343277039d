"""The CPU half of a model's image preprocessing: resize and crop to uint8 pixels, with Pillow and numpy only.

This is open_clip's eval transform (``image_transform_v2``) up to, not including, ToTensor and Normalize;
normalising runs on the device in :meth:`mmretrieval.models.encoder.DualEncoder.encode_prepared`. The common
square 'shortest' and 'squash' modes are reproduced here pixel for pixel (torchvision's size and crop
arithmetic, Pillow's resampling, as torchvision itself uses for PIL images), so decoding workers import
neither torch nor open_clip: a worker starts in a fraction of a second. Other modes fall back to open_clip.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import numpy.typing as npt
from PIL import Image

_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


@dataclass(frozen=True)
class ImagePreparer:
    """Resize and crop a decoded RGB image to the model's input as uint8 ``(3, H, W)``. Small and picklable."""

    preprocess: str  # the model identity's preprocess JSON (open_clip's preprocess config)
    _steps: object = field(default=None, compare=False, repr=False)

    @property
    def size(self) -> int:
        """The model's input side in pixels (the larger side for non-square inputs)."""
        size = json.loads(self.preprocess)["size"]
        return max(size) if isinstance(size, (list, tuple)) else int(size)

    @property
    def output_shape(self) -> tuple[int, int, int]:
        """The ``(3, H, W)`` of every prepared image (it depends on the config only, not on the image)."""
        return self(Image.new("RGB", (8, 8))).shape

    def __call__(self, image: Image.Image) -> npt.NDArray[np.uint8]:
        steps = self._steps
        if steps is None:
            steps = _resize_steps(json.loads(self.preprocess))
            object.__setattr__(self, "_steps", steps)
        pixels = np.asarray(steps(image if image.mode == "RGB" else image.convert("RGB")), dtype=np.uint8)
        return np.ascontiguousarray(pixels.transpose(2, 0, 1))

    def __getstate__(self) -> dict:
        return {"preprocess": self.preprocess}

    def __setstate__(self, state: dict) -> None:
        object.__setattr__(self, "preprocess", state["preprocess"])
        object.__setattr__(self, "_steps", None)


def square_mode(cfg: dict) -> str | None:
    """``"squash"`` or ``"shortest"`` when a preprocess config makes square inputs in a way reproduced here (and
    by the device decoder); None for the rest, which fall back to open_clip's transforms."""
    size = cfg.get("size", 224)
    mode = cfg.get("resize_mode", "shortest")
    square = isinstance(size, int) or len(set(size)) == 1
    return mode if mode == "squash" or (mode == "shortest" and square) else None


def shortest_side_size(width: int, height: int, side: int) -> tuple[int, int]:
    """(width, height) after resizing the shorter side to ``side``, as torchvision computes it for an int size:
    the long side is truncated, not rounded."""
    if width <= height:
        return side, int(side * height / width)
    return int(side * width / height), side


def center_crop_origin(width: int, height: int, side: int) -> tuple[int, int]:
    """(left, top) of the centred ``side`` square, as torchvision's CenterCrop places it."""
    return int(round((width - side) / 2.0)), int(round((height - side) / 2.0))


def _resize_steps(cfg: dict) -> Callable[[Image.Image], Image.Image]:
    size = cfg.get("size", 224)
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    resample = _RESAMPLE.get(cfg.get("interpolation", "bicubic"), Image.Resampling.BICUBIC)
    mode = square_mode(cfg)
    if mode == "squash":
        return lambda image: image.resize((width, height), resample) if image.size != (width, height) else image
    if mode == "shortest":
        return lambda image: _center_crop(_resize_shortest(image, height, resample), height)
    return _open_clip_steps(cfg)


def _resize_shortest(image: Image.Image, side: int, resample: Image.Resampling) -> Image.Image:
    new_size = shortest_side_size(*image.size, side)
    return image if new_size == image.size else image.resize(new_size, resample)


def _center_crop(image: Image.Image, side: int) -> Image.Image:
    left, top = center_crop_origin(*image.size, side)  # at least ``side`` both ways after _resize_shortest
    return image.crop((left, top, left + side, top + side))


def _open_clip_steps(cfg: dict) -> Callable[[Image.Image], Image.Image]:
    from open_clip.transform import PreprocessCfg, image_transform_v2
    from torchvision.transforms import Compose, Normalize

    keys = PreprocessCfg.__dataclass_fields__
    transform = image_transform_v2(PreprocessCfg(**{k: v for k, v in cfg.items() if k in keys}), is_train=False)
    return Compose([t for t in transform.transforms if not isinstance(t, Normalize) and "ToTensor" not in type(t).__name__])
