"""JPEG decoding on the model's device: batched nvJPEG on a GPU, then resize, crop and EXIF orientation there.

A CPU decodes ~150-250 photo-sized JPEGs a second per core with Pillow; one GPU decodes thousands with nvJPEG
(``torchvision.io.decode_jpeg`` given a list and ``device="cuda"``), so with a fast model the decoding, not
the model, sets the pace of an ingest. This module is the device half of a split the runner makes:

* :func:`probe` (on reader threads) reads a file, hashes it and reads its JPEG header with Pillow without
  decoding: baseline RGB or greyscale JPEGs within the pixel limit are :class:`Probed` for the device; everything
  else (other formats, CMYK/YCCK, progressive JPEGs, which nvJPEG decodes one by one on the CPU, files Pillow
  cannot open) goes back as its :class:`DecodeTask` for the CPU pool, which also gives bad files their reasons.
* :class:`DeviceJpegDecoder` decodes a batch of probed files at once; a batch the library refuses is retried
  file by file, and a file that fails alone goes to the CPU pool, so one bad file never takes its batch-mates
  with it.

The resize and crop copy :class:`~mmretrieval.images.preprocess.ImagePreparer`'s arithmetic (torchvision's
sizes, Pillow-like antialiased filters); the CPU path also shrinks big JPEGs with Pillow's draft mode first, so
the two agree closely, not bit for bit (tested: cosine of the embeddings). The same code runs on the CPU device,
which is how the tests check it.
"""

from __future__ import annotations

import io
import json
import logging
import warnings
from dataclasses import dataclass, field

import torch
from PIL import Image

from ..errors import ImageDecodeError
from ..images.decode import DEFAULT_MAX_PIXELS, read_image_file
from ..images.metadata import PhotoMetadata, photo_metadata
from ..images.preprocess import center_crop_origin, shortest_side_size, square_mode
from .batches import NO_PIXELS, Decoded, DecodeTask, content_hash
from .reader import file_mtime_ns

logger = logging.getLogger(__name__)

_ORIENTATION = 0x0112
# Bigger JPEGs go to the CPU pool, which decodes them at a fraction of their size (draft mode): nvJPEG decodes whole,
# and a batch holds every image at once (~324 MB of pixels for one 108 MP photo). Pillow's own size limit, which
# routed them so while a warning filter turned it into an error (no longer: that filter was not thread-safe).
DEVICE_MAX_PIXELS = 89_478_485


@dataclass(frozen=True)
class Probed:
    """A baseline JPEG read and hashed, ready for the device decoder."""

    task: DecodeTask
    data: bytes = field(repr=False)
    content_hash: str  # blake2b of the file's bytes, as the CPU path computes it
    width: int  # after EXIF orientation, as the catalog records sizes
    height: int
    orientation: int  # EXIF orientation, 1 (as stored) to 8
    metadata: PhotoMetadata | None = None


def probe(task: DecodeTask, max_pixels: int = DEFAULT_MAX_PIXELS) -> Probed | DecodeTask:
    """Read, hash and inspect one file: :class:`Probed` if the device can decode it, else ``task`` (CPU pool)."""
    try:
        data = read_image_file(task.path)
    except ImageDecodeError:
        return task  # the CPU path fails it with the same reason
    try:
        image = Image.open(io.BytesIO(data), formats=["JPEG"])  # (no catch_warnings on these threads: decode.py)
        if (image.format != "JPEG" or image.mode not in ("RGB", "L") or image.info.get("progressive")
                or image.info.get("progression") or image.width * image.height > min(max_pixels, DEVICE_MAX_PIXELS)):
            return task
        exif = image.getexif()
    except Exception:  # not a JPEG, a damaged header, a bomb: the CPU path knows what to say
        return task
    orientation = exif.get(_ORIENTATION, 1) if exif is not None else 1
    orientation = orientation if orientation in range(1, 9) else 1
    width, height = image.size
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    return Probed(task, data, content_hash(data), width, height, orientation,
                  photo_metadata(exif, mtime_ns=file_mtime_ns(task.path), width=width, height=height))


class DeviceJpegDecoder:
    """Decode batches of :class:`Probed` JPEGs on ``device`` into the model's uint8 input."""

    def __init__(self, preprocess: str, device: torch.device):
        """
        Args:
            preprocess: the model identity's preprocess JSON (size, resize mode, interpolation).
            device: where to decode and resize: ``cuda`` (nvJPEG), or ``cpu`` (libjpeg; tests).

        Raises:
            ValueError: a preprocessing this decoder does not reproduce (see :meth:`supports`).
        """
        cfg = json.loads(preprocess)
        mode = square_mode(cfg)
        if mode is None:
            raise ValueError(f"device decoding does not reproduce this preprocessing: {preprocess}")
        size = cfg.get("size", 224)
        self.side = size if isinstance(size, int) else int(size[0])
        self.squash = mode == "squash"
        self.mode = "bilinear" if cfg.get("interpolation") == "bilinear" else "bicubic"
        self.device = device

    @staticmethod
    def supports(preprocess: str) -> bool:
        """Square inputs made by 'shortest' (resize and centre crop) or 'squash', as most CLIP/SigLIP models."""
        return square_mode(json.loads(preprocess)) is not None

    def decode(self, items: list[Probed]) -> tuple[list[Decoded], torch.Tensor | None, list[DecodeTask]]:
        """Decode ``items`` together.

        Returns:
            The decoded records (pixels empty), their pixels as one ``(N, 3, side, side)`` uint8 tensor on the
            device in the same order (None if none decoded), and the tasks of files to decode on the CPU.
        """
        from torchvision.io import ImageReadMode, decode_jpeg

        streams = [torch.frombuffer(bytearray(item.data), dtype=torch.uint8) for item in items]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torchvision 0.29 points to torchcodec
            try:
                images = decode_jpeg(streams, mode=ImageReadMode.RGB, device=self.device) if streams else []
            except RuntimeError:  # one bad stream fails the whole call: find it by decoding one at a time
                images = [_decode_one(decode_jpeg, stream, ImageReadMode.RGB, self.device) for stream in streams]
        decoded: list[Decoded] = []
        pixels: list[torch.Tensor] = []
        for_cpu: list[DecodeTask] = []
        for item, image in zip(items, images, strict=True):
            stored = (item.height, item.width) if item.orientation in (5, 6, 7, 8) else (item.width, item.height)
            if image is None or tuple(image.shape[1:]) != stored[::-1]:
                for_cpu.append(item.task)
                continue
            pixels.append(self._prepare(_orient(image, item.orientation)))
            decoded.append(Decoded(item.task.image_id, item.content_hash, item.width, item.height, "JPEG",
                                   NO_PIXELS, item.metadata))
        return decoded, (torch.stack(pixels) if pixels else None), for_cpu

    def _prepare(self, image: torch.Tensor) -> torch.Tensor:
        """(3, H, W) uint8 -> (3, side, side) uint8, as ImagePreparer does with Pillow."""
        _, height, width = image.shape
        side = self.side
        new_width, new_height = (side, side) if self.squash else shortest_side_size(width, height, side)
        if (new_width, new_height) != (width, height):
            resized = torch.nn.functional.interpolate(image[None].float(), size=(new_height, new_width),
                                                      mode=self.mode, antialias=True, align_corners=False)[0]
            image = resized.round_().clamp_(0, 255).to(torch.uint8)
        left, top = center_crop_origin(new_width, new_height, side)
        return image[:, top:top + side, left:left + side]


def _decode_one(decode_jpeg, stream: torch.Tensor, mode, device: torch.device) -> torch.Tensor | None:
    try:
        return decode_jpeg([stream], mode=mode, device=device)[0]
    except RuntimeError as exc:
        logger.debug("device decoder refused a file (%s); it goes to the CPU", exc)
        return None


def _orient(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """Apply an EXIF orientation to a (3, H, W) image, as Pillow's ``ImageOps.exif_transpose``."""
    if orientation == 2:
        return image.flip(2)
    if orientation == 3:
        return image.flip(1, 2)
    if orientation == 4:
        return image.flip(1)
    if orientation == 5:
        return image.transpose(1, 2)
    if orientation == 6:
        return image.transpose(1, 2).flip(2)
    if orientation == 7:
        return image.transpose(1, 2).flip(1, 2)
    if orientation == 8:
        return image.transpose(1, 2).flip(1)
    return image

