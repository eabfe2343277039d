"""The dual encoder: open_clip image and text towers behind one small API that returns unit vectors.

Images are prepared in two steps so that the CPU part can run in worker processes:
:class:`~mmretrieval.images.preprocess.ImagePreparer` (picklable, torch-free; resize and crop to uint8 exactly as
open_clip's preprocessing does) and :meth:`DualEncoder.encode_prepared` (normalise on the device, run the tower).
"""

from __future__ import annotations

import io
import json
import logging
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Sequence, Union

import numpy as np
import numpy.typing as npt
import torch
from PIL import Image, ImageOps

from ..errors import ImageDecodeError, ModelSpecError, QueryError
from ..images.decode import decode_path
from ..images.modes import to_rgb
from .inputs import check_batch_size, listed, text_list
from .loading import LoadedModel, load_model
from .precision import open_clip_precision
from .settings import DEVICES, check_device, check_precision
from .specs import ModelIdentity, ModelSpec
from ..images.preprocess import ImagePreparer

if TYPE_CHECKING:
    from .text_tower import TextEncoder

logger = logging.getLogger(__name__)

Progress = Callable[[int, int], None]  # (done, total)


ImageInput = Union[Image.Image, str, bytes, os.PathLike]  # a PIL image, or the path of an image file
_IMAGE_TYPES = (Image.Image, str, bytes, os.PathLike)
_ORIENTATION = 0x0112  # the EXIF orientation tag

def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then Apple MPS, then CPU; ``cuda:N`` and ``mps`` are checked against the devices
    present, here rather than deep in loading, where torch says only that it "is not linked with support".

    Raises:
        ModelSpecError: a name :func:`check_device` refuses, or a CUDA or MPS device that is not there.
    """
    check_device(device)
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise ModelSpecError(f"unknown device {device!r}; use {DEVICES}") from exc
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ModelSpecError(f"device {device!r} asked for, but no CUDA GPU is available; use --device cpu")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ModelSpecError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) present")
    if resolved.type == "mps" and not _mps_available():
        raise ModelSpecError(f"device {device!r} asked for, but no Apple GPU is available; use --device cpu")
    return resolved


def _mps_available() -> bool:
    """Whether Apple's MPS device can run here (torch builds without it have no ``torch.backends.mps``)."""
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


class PixelNormaliser:
    """The device half of preprocessing: uint8 ``(N, 3, H, W)`` from :class:`ImagePreparer` to the model's
    normalised float input, with the mean and std of the preprocess config (kept on the device)."""

    def __init__(self, preprocess: str, device: torch.device):
        cfg = json.loads(preprocess)
        shape = (1, 3, 1, 1)
        self.mean = torch.tensor(cfg["mean"], device=device, dtype=torch.float32).view(shape) * 255
        self.std = torch.tensor(cfg["std"], device=device, dtype=torch.float32).view(shape) * 255

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        return (batch.float() - self.mean) / self.std


class DualEncoder:
    """Image and text towers of one open_clip model, returning float32 L2-normalised numpy vectors.

    Build one with :func:`load_encoder`.
    """

    def __init__(self, loaded: LoadedModel, device: torch.device, dim: int | None = None, channels_last: bool = True):
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.device = device
        self.dtype = next(self.model.parameters()).dtype
        full_dim = loaded.identity.embed_dim
        if dim is not None:
            if not 0 < dim <= full_dim:
                raise ModelSpecError(f"--dim {dim} is out of range: the model's vectors have {full_dim} dimensions")
            if dim < full_dim and dim not in loaded.matryoshka_dims:
                warnings.warn(
                    f"truncating {full_dim}-d vectors to {dim}: this model was not trained for truncation "
                    "(Matryoshka), so retrieval quality may drop", stacklevel=2)
        self.dim = int(dim or full_dim)
        self.identity = ModelIdentity(**{**loaded.identity.__dict__, "embed_dim": self.dim})
        self.preparer = ImagePreparer(self.identity.preprocess)
        self.normalise = PixelNormaliser(self.identity.preprocess, device)
        self.channels_last = channels_last and device.type == "cuda"
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)

    # -- scores -----------------------------------------------------------------------------------------------
    @property
    def logit_scale(self) -> float:
        """The learned temperature, already exponentiated (about 100 for CLIP)."""
        # Not clamped: SigLIP checkpoints learn scales above 100 (about 112-117), and their bias is fit to them.
        return float(self.model.logit_scale.detach().float().exp().item())

    @property
    def logit_bias(self) -> float | None:
        """SigLIP-style models' learned bias; None for CLIP-style (softmax) models."""
        bias = getattr(self.model, "logit_bias", None)
        return None if bias is None else float(bias.detach().float().item())

    @property
    def is_sigmoid(self) -> bool:
        """True for SigLIP-style models, whose label probabilities are independent sigmoids."""
        return self.logit_bias is not None

    # -- encoding ---------------------------------------------------------------------------------------------
    def _finish(self, features: torch.Tensor) -> npt.NDArray[np.float32]:
        features = features.float()[:, : self.dim]
        return torch.nn.functional.normalize(features, dim=-1).cpu().numpy().astype(np.float32, copy=False)

    def _run(self, tower: Callable[[torch.Tensor], torch.Tensor], inputs: torch.Tensor) -> npt.NDArray[np.float32]:
        """``tower`` on ``inputs``, a batch of one run as two in bf16/fp16: CPU bf16 kernels take another path
        for a single row, whose result differs from the same row's in any larger batch (up to 9e-4 per element
        with the demo model), while rows of batches of two or more agree exactly, whatever their batch-mates."""
        if len(inputs) == 1 and self.dtype != torch.float32:
            return self._finish(tower(torch.cat([inputs, inputs]))[:1])
        return self._finish(tower(inputs))

    @torch.inference_mode()
    def encode_prepared(self, batch: torch.Tensor) -> npt.NDArray[np.float32]:
        """Encode a uint8 batch ``(N, 3, H, W)`` from :attr:`preparer`."""
        if batch.shape[0] == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        pixels = self.normalise(batch.to(self.device, non_blocking=True)).to(self.dtype)
        if self.channels_last:
            pixels = pixels.contiguous(memory_format=torch.channels_last)
        return self._run(self.model.encode_image, pixels)

    def encode_images(
        self,
        images: ImageInput | Iterable[ImageInput],
        batch_size: int = 64,
        progress: Progress | None = None,
    ) -> npt.NDArray[np.float32]:
        """Encode images (PIL images, or paths decoded safely) to ``(N, dim)`` unit vectors, one row per image.

        A PIL image goes through the same conversion as a file: turned upright by its EXIF orientation (on a
        copy; an image already turned has no orientation tag left), alpha composited on white, 16-bit scaled.

        Args:
            images: a list (or any iterable) of images; one image or path alone is one image, giving ``(1, dim)``.
            batch_size: images per model call.
            progress: ``(done, total)`` callback after each batch.

        Returns:
            ``(N, dim)`` float32 unit vectors, in the order of ``images``.

        Raises:
            QueryError: an item that is neither a PIL image nor a path, a PIL image with no pixels, or a
                ``batch_size`` below 1.
            ImageDecodeError: a path that is not a decodable image, or a PIL image whose data cannot be read.
        """
        batch_size = check_batch_size(batch_size)
        items = _image_list(images)
        chunks = []
        for start in range(0, len(items), batch_size):
            batch = [self._as_image(item) for item in items[start:start + batch_size]]
            chunks.append(self.encode_prepared(torch.from_numpy(np.stack([self.preparer(im) for im in batch]))))
            if progress:
                progress(min(start + batch_size, len(items)), len(items))
        return np.concatenate(chunks) if chunks else np.zeros((0, self.dim), dtype=np.float32)

    def _as_image(self, item: ImageInput) -> Image.Image:
        if isinstance(item, Image.Image):
            width, height = item.size
            if width < 1 or height < 1:  # preprocessing would divide by the zero side
                raise QueryError(f"a {width}x{height} PIL image has no pixels to encode; pass an image of at least "
                                 "1x1 pixels")
            return to_rgb(_upright(item))  # the same conversion as for files: alpha on white, 16-bit scaled
        path = Path(os.fsdecode(item))
        return decode_path(path, draft_size=self.preparer.size).image  # RAW files by their preview too

    @torch.inference_mode()
    def encode_texts(self, texts: str | Iterable[str], batch_size: int = 256) -> npt.NDArray[np.float32]:
        """Encode texts to ``(N, dim)`` unit vectors, one row per text.

        Args:
            texts: a list (or any iterable) of texts; one ``str`` alone is one text, giving ``(1, dim)``.
            batch_size: texts per model call.

        Returns:
            ``(N, dim)`` float32 unit vectors, in the order of ``texts``.

        Raises:
            QueryError: bytes, an item that is not a ``str``, or a ``batch_size`` below 1.
        """
        batch_size = check_batch_size(batch_size)
        items = text_list(texts)
        chunks = []
        for start in range(0, len(items), batch_size):
            tokens = self.tokenizer(items[start:start + batch_size]).to(self.device)
            chunks.append(self._run(self.model.encode_text, tokens))
        return np.concatenate(chunks) if chunks else np.zeros((0, self.dim), dtype=np.float32)


# Without a tokenizer that can count (e.g. a Hugging Face one), a text past this many words is taken to be longer
# than the model reads: CLIP's 77 tokens are roughly 60 English words.
LONG_TEXT_WORDS = 60


def readable_tokens(model: "DualEncoder | TextEncoder") -> int | None:
    """How many tokens of one text ``model`` reads: its context less the start and end markers (75 for CLIP's 77);
    None where its tokenizer cannot count tokens (a Hugging Face one: no open_clip ``encode``)."""
    tokenizer = getattr(model, "tokenizer", None)
    context = getattr(tokenizer, "context_length", None)
    if isinstance(context, int) and callable(getattr(tokenizer, "encode", None)):
        return context - 2
    return None


def unread_texts(model: "DualEncoder | TextEncoder", texts: Iterable[str]) -> list[str]:
    """Those of ``texts`` that ``model`` reads only the beginning of, in order: the tokenizer cuts each text to the
    model's context, and the words past it change nothing (two queries that differ only there score alike).

    Counted in tokens where the tokenizer can count them (:func:`readable_tokens`), else in words (more than
    :data:`LONG_TEXT_WORDS`).
    """
    readable = readable_tokens(model)
    if readable is None:
        return [text for text in texts if len(text.split()) > LONG_TEXT_WORDS]
    encode = model.tokenizer.encode
    # An ASCII text (most prompts) takes at most a token per character, so a short one fits: no need to count.
    # (Other text can grow as the tokenizer cleans it: Unicode normalisation writes some characters as three.)
    return [text for text in texts
            if not (text.isascii() and len(text) <= readable) and len(encode(text)) > readable]


def unread_note(model: "DualEncoder | TextEncoder", texts: Sequence[str], what: str = "query") -> str:
    """One sentence saying that ``model`` reads only the beginning of the ``what`` (one of ``texts`` is longer than
    it reads, see :func:`unread_texts`), and how much of it; "" when every text is read whole."""
    if not unread_texts(model, texts):
        return ""
    readable = readable_tokens(model)
    if readable is None:
        return (f"The {what} has more than {LONG_TEXT_WORDS} words: the model reads only about the first "
                f"{LONG_TEXT_WORDS}, the rest is ignored. Put the words that matter first.")
    return (f"The {what} is longer than the model reads: only the first {readable} tokens (about "
            f"{readable * 3 // 4} words) are read, the rest is ignored. Put the words that matter first.")


def _image_list(images: ImageInput | Iterable[ImageInput]) -> list[ImageInput]:
    """``images`` as a list, every item checked before any is decoded: one image or path alone is a list of one.

    Raises:
        QueryError: image data (bytes holding a NUL, or a file object: its lines were taken for paths), or an item
            that is neither a PIL image nor a path.
    """
    if isinstance(images, io.IOBase) or _image_data(images):
        raise QueryError(f"{type(images).__name__} of image data is not a path; decode it first: "
                         "mmretrieval.decode_image(data).image is a PIL image, which encode_images takes")
    items = listed(images, _IMAGE_TYPES, "image", "a PIL image or a path",
                   lambda item: " (convert an array with PIL.Image.fromarray)" if isinstance(item, np.ndarray) else "")
    if any(_image_data(item) for item in items):
        raise QueryError("bytes of image data are not a path; decode them first: mmretrieval.decode_image(data).image "
                         "is a PIL image, which encode_images takes")
    return items


def _image_data(item: object) -> bool:
    """Whether ``item`` is bytes no path can be (a NUL in them): an image file's contents, most likely."""
    return isinstance(item, (bytes, bytearray)) and b"\0" in item


def _upright(image: Image.Image) -> Image.Image:
    """``image`` turned as its EXIF orientation asks, as :func:`~mmretrieval.images.decode.decode_path` turns a
    file; a copy, so the caller's image is left as it was.

    Loaded before the tag is read: Pillow's TIFF decoder applies the orientation itself and drops the tag, and
    pillow-heif's opener does the same, so reading it first would turn those images twice.

    Raises:
        ImageDecodeError: the image's data cannot be read (a lazily opened file that is truncated or corrupt).
    """
    try:
        image.load()
    except OSError as exc:
        reason = "truncated" if "truncated" in str(exc).lower() else "corrupt"
        raise ImageDecodeError(reason, f"cannot decode the PIL image: {exc}") from exc
    except (SyntaxError, EOFError) as exc:  # Pillow's plugins raise these for malformed data
        raise ImageDecodeError("corrupt", f"cannot decode the PIL image: {exc}") from exc
    try:
        orientation = image.getexif().get(_ORIENTATION, 1)
        # exif_transpose copies even an upright image, so it runs only where there is a turn to make
        if orientation in (2, 3, 4, 5, 6, 7, 8):
            return ImageOps.exif_transpose(image)
    except Exception:  # a malformed EXIF block must not lose an otherwise good image (as for files)
        pass
    return image

def load_encoder(
    spec: str | os.PathLike | ModelSpec = "builtin:shapes",
    *,
    device: str = "auto",
    dim: int | None = None,
    cache_dir: str | None = None,
    precision: str = "auto",
) -> DualEncoder:
    """Load the dual encoder a model spec names (see :mod:`mmretrieval.models.specs`).

    Args:
        spec: ``ARCH:TAG``, ``hf-hub:ORG/REPO``, a local model directory (text or a path object), or
            ``builtin:shapes``.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``. CUDA runs with channels_last.
        dim: truncate vectors to this many dimensions (renormalised); warns unless the model was trained for it.
        cache_dir: Hugging Face cache directory (default: the standard one).
        precision: ``auto`` (bf16 on CUDA, float32 on CPU), ``fp32`` or ``bf16`` (:mod:`.precision`).

    Raises:
        ModelSpecError: an unknown device or precision (:func:`check_device`, :func:`.precision.check_precision`,
            both before anything loads), a precision the device cannot run natively, a bad spec, or a ``dim``
            that is not a whole number.
        ModelNotCachedError, CheckpointError: see :func:`mmretrieval.models.loading.load_model`.
    """
    check_device(device)  # these settings are checked before the spec is looked up or anything loads
    check_precision(precision)
    if dim is not None and (isinstance(dim, bool) or not isinstance(dim, (int, np.integer))):
        raise ModelSpecError(f"dim must be a whole number of dimensions, got {dim!r}")  # 64.0 made a broken encoder
    if spec is None or not isinstance(spec, (str, os.PathLike, ModelSpec)):
        raise ModelSpecError(f"a model spec is text or a model folder's path, got {spec!r}; try builtin:shapes or "
                             "ViT-B-32:laion2b_s34b_b79k")
    parsed = spec if isinstance(spec, ModelSpec) else ModelSpec.parse(os.fspath(spec))
    torch_device = resolve_device(device)
    open_clip_dtype = open_clip_precision(torch_device, precision)
    loaded = load_model(parsed, device=torch_device, precision=open_clip_dtype, cache_dir=cache_dir)
    logger.info("loaded %s on %s in %s (%d-d)", parsed, torch_device, open_clip_dtype, loaded.identity.embed_dim)
    return DualEncoder(loaded, torch_device, dim=dim)
