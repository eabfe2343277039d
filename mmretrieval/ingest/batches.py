"""The records that flow between ingestion stages. Every one carries the catalog id it belongs to, so a
failure anywhere can never attach a vector to the wrong file."""

from __future__ import annotations

import collections
import hashlib
import os
from dataclasses import dataclass, field, replace
from typing import Iterable, Iterator

import numpy as np
import numpy.typing as npt

from ..errors import SettingError
from ..images.decode import DEFAULT_MAX_PIXELS
from ..images.metadata import PhotoMetadata


NO_PIXELS = np.zeros((0,), dtype=np.uint8)  # a record's pixels, when they travel as a row of a batch or chunk
RAY_RESULTS_DIR = "ray-results"  # in a collection: where `--ray` workers leave results unless told otherwise
RAY_OUTPUT_KEY = "ray_output"  # catalog meta: a --ray-output location elsewhere that a run may have left results in


def content_hash(data: bytes) -> str:
    """The content hash the catalog keeps of a file's bytes: how ingestion finds identical files and touched ones
    (the CPU decoders, the GPU path and the planner must all hash alike)."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


@dataclass(frozen=True)
class IngestConfig:
    """How to run one ingestion."""

    batch_size: int | None = None  # images per model call (and per catalog transaction); None: by the device
    workers: int | None = None  # decoding processes; 0 decodes in the calling process; None: by the device
    timeout_s: float = 60.0  # a file whose decode takes longer is failed and its worker restarted
    prune: bool = False  # delete rows of files that no longer exist
    checksum: bool = False  # also hash files whose size and time are unchanged (rsync's -c): reads every file
    forget_mounts: tuple[str, ...] = ()  # with prune: folders where a drive was seen mounted, now pruned as any other
    device_decode: bool | None = None  # decode JPEGs on the model's device (None: when that is a CUDA GPU)
    read_threads: int = 8  # with device decoding: threads reading, hashing and probing files
    share_jpegs: bool = True  # with device decoding: the CPU pool also takes JPEGs while its workers have room
    max_pixels: int = DEFAULT_MAX_PIXELS  # refuse images with more pixels (decompression bombs)

    def __post_init__(self) -> None:
        """Check every setting before a file is read: a wrong one hung the pool (a negative batch size) or was
        stored as each good file's failure (a pixel limit given as text: every file ``corrupt``, for good).

        Raises:
            SettingError: naming the setting and the value.
        """
        for name, least in (("batch_size", 1), ("workers", 0)):
            value = getattr(self, name)
            if value is not None and not _whole(value, least):
                raise SettingError(name, f"must be a whole number of at least {least} (None: by the device), got "
                                         f"{value!r}")
        for name in ("max_pixels", "read_threads"):
            if not _whole(getattr(self, name), 1):
                raise SettingError(name, f"must be a whole number of at least 1, got {getattr(self, name)!r}")
        seconds = isinstance(self.timeout_s, (int, float, np.integer, np.floating)) and \
            not isinstance(self.timeout_s, bool)
        if not seconds or not 0 < self.timeout_s < float("inf"):
            raise SettingError("timeout_s", f"must be a number of seconds above 0, got {self.timeout_s!r}")
        for name in ("prune", "checksum", "share_jpegs"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise SettingError(name, f"must be True or False, got {getattr(self, name)!r}")

    @classmethod
    def for_device(cls, device_type: str, batch_size: int | None = None, workers: int | None = None,
                   **kwargs) -> "IngestConfig":
        """A config with its sizes chosen for ``device_type`` where not given (see :meth:`on_device`)."""
        return cls(batch_size=batch_size, workers=workers, **kwargs).on_device(device_type)

    def on_device(self, device_type: str) -> "IngestConfig":
        """This config with the sizes it leaves open chosen for the model's device: big batches on a GPU; on a
        CPU, one core left for the model. The ingest chooses them once the model is loaded, so that a run with
        nothing to embed never looks for a GPU (or imports torch)."""
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        default_workers = max(1, cores - 1) if device_type == "cpu" else max(1, cores)
        return replace(self, batch_size=self.batch_size or (256 if device_type == "cuda" else 32),
                       workers=default_workers if self.workers is None else self.workers)


def _whole(value: object, least: int) -> bool:
    """Whether ``value`` is a whole number (numpy's too, not a bool) of at least ``least``."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= least


@dataclass(frozen=True)
class SourceFile:
    """A file the reader found (not yet opened)."""

    path: str  # absolute
    size: int  # bytes
    mtime_ns: int
    caption: str | None = None  # from a CSV list file


@dataclass(frozen=True)
class Skipped:
    """Something the reader will not open: a FIFO, a device, a link loop, a broken link, a link leaving the folder,
    a link to a folder walked under its real path."""

    path: str
    reason: str  # short stable code
    message: str


@dataclass(frozen=True)
class DecodeTask:
    """One catalog row to decode."""

    image_id: int
    path: str


@dataclass(frozen=True)
class Decoded:
    """A decoded image, resized and cropped for the model."""

    image_id: int
    content_hash: str  # blake2b of the file's bytes
    width: int  # original size in pixels, after EXIF orientation
    height: int
    format: str
    pixels: npt.NDArray[np.uint8] = field(repr=False)  # (3, H, W), the model's input size
    metadata: PhotoMetadata | None = None  # capture time, camera, GPS, orientation (None: not extracted)


@dataclass(frozen=True)
class Failed:
    """A row that could not be decoded, and why."""

    image_id: int
    reason: str  # ImageDecodeError.reason, or decode_timeout / decoder_crashed
    message: str


@dataclass(frozen=True)
class EmbeddedBatch:
    """What the writer commits in one transaction."""

    decoded: tuple[Decoded, ...]  # same order as rows of ``embeddings``
    embeddings: npt.NDArray[np.float32] = field(repr=False)  # (len(decoded), dim) unit vectors
    failed: tuple[Failed, ...] = ()
    duplicates: int = 0  # how many of ``decoded`` reused an existing vector instead of running the model


@dataclass(frozen=True)
class IngestSummary:
    """The outcome of one ingestion."""

    embedded: int = 0  # files the model embedded
    unchanged: int = 0  # files skipped because path, size and mtime were unchanged
    duplicates: int = 0  # files whose bytes were already embedded elsewhere (vector reused), the moved ones aside
    moved: int = 0  # new paths of files whose old path is gone, found while planning: moved or renamed (vector reused)
    failed: dict[str, int] = field(default_factory=dict)  # reason -> count, files that did not decode or embed
    pruned: int = 0  # rows removed because their file disappeared
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> count, what the reader would not open
    adopted: int = 0  # of the unchanged: imported rows whose files were read for the first time, vectors kept
    unmounted: tuple[str, ...] = ()  # folders a drive was seen mounted at, not mounted now: a prune kept their rows

    @property
    def failed_total(self) -> int:
        return sum(self.failed.values())

    @property
    def skipped_total(self) -> int:
        return sum(self.skipped.values())


def skip_counts(skipped: Iterable[Skipped], aliases: int = 0) -> dict[str, int]:
    """Skips by reason, as :class:`IngestSummary` reports them; ``aliases``: files counted as ``alias``, held
    already under another path to them (:class:`~.planning.Planned`)."""
    counts = collections.Counter(s.reason for s in skipped)
    if aliases:
        counts["alias"] += aliases
    return dict(sorted(counts.items()))


def chunked(items: Iterable, size: int) -> Iterator[list]:
    """``items`` in lists of ``size`` (the last one shorter), read as they are needed."""
    batch: list = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
