"""The functions Ray runs on its workers: decode (CPU tasks), embed (actors that load the model once), write.

Batches are dicts of numpy columns (Ray Data's ``numpy`` batch format). Every row carries its catalog id and
planned path, size and mtime from the first stage to the segment file, because Ray does not keep rows in
order and may run a block twice.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import numpy.typing as npt

from ..errors import CollectionError
from ..images.preprocess import ImagePreparer
from ..models.specs import ModelIdentity
from .batches import NO_PIXELS, Decoded, DecodeTask, Failed
from .ray_segments import ResultDrop
from .reader import decode_file

if TYPE_CHECKING:
    from .pool import DecodePool

Batch = dict[str, npt.NDArray[Any]]
DecodeFn = Callable[[DecodeTask, ImagePreparer], "Decoded | Failed"]


def decode_rows(batch: Batch, preparer: ImagePreparer, timeout_s: float | None = None,
                decode: "DecodeFn" = decode_file) -> Batch:
    """Read, hash, decode and prepare each file of ``batch`` with the single-machine decoder.

    A file that fails becomes a row with ``status`` ``failed`` and its reason, never an exception: an
    exception here would fail (or, with ``max_errored_blocks``, drop) the whole block.

    Args:
        batch: ``image_id`` and ``path`` (catalog keys) columns, plus columns passed through.
        preparer: the model's resize and crop.
        timeout_s: decode in one child process, as the single-machine pool does, so a file that hangs is
            failed with ``decode_timeout`` after this long and one that crashes the decoder with
            ``decoder_crashed``, instead of hanging the task or crashing it over and over through Ray's
            retries; the child is kept for the next task this Ray worker runs. None decodes in the task's own
            process (no isolation).
        decode: the per-file function (tests pass one that misbehaves).
    """
    tasks = [DecodeTask(int(image_id), os.fsdecode(bytes(path))) for image_id, path in zip(batch["image_id"],
                                                                                           batch["path"])]
    if timeout_s is None:
        results = [decode(task, preparer) for task in tasks]
    else:
        by_id = {result.image_id: result for result in _decoder(preparer, timeout_s, decode).run(tasks)}
        results = [by_id[task.image_id] for task in tasks]
    pixels = np.zeros((len(results), *preparer.output_shape), dtype=np.uint8)
    columns: dict[str, list] = {name: [] for name in ("status", "content_hash", "width", "height", "format",
                                                      "reason", "message", "photo")}
    for row, result in enumerate(results):
        ok = isinstance(result, Decoded)
        if ok:
            pixels[row] = result.pixels
        columns["status"].append("ok" if ok else "failed")
        columns["content_hash"].append(result.content_hash if ok else "")
        columns["width"].append(result.width if ok else 0)
        columns["height"].append(result.height if ok else 0)
        columns["format"].append(result.format if ok else "")
        columns["reason"].append("" if ok else result.reason)
        columns["message"].append("" if ok else result.message)
        columns["photo"].append(result.metadata.to_json() if ok and result.metadata else "")
    out: Batch = {name: batch[name] for name in ("image_id", "path", "size", "mtime_ns")}
    for name, values in columns.items():
        out[name] = np.array(values, dtype=np.int64 if name in ("width", "height") else object)
    out["pixels"] = pixels
    return out


_decoders: dict[tuple, "DecodePool"] = {}  # this Ray worker process's decoder, kept from task to task


def _decoder(preparer: ImagePreparer, timeout_s: float, decode: "DecodeFn") -> "DecodePool":
    """One decoding child process for this Ray worker, started by its first decode task and reused by the next.

    Ray runs many tasks in one worker process; starting a decoder per task cost ~1 s of each 256-file task.
    """
    from .pool import DecodePool

    key = (preparer, timeout_s, decode)
    if key not in _decoders:
        for stale in _decoders.values():
            stale.close()
        _decoders.clear()
        _decoders[key] = DecodePool(preparer, 1, timeout_s, decode=decode, keep_workers=True)
    return _decoders[key]


class Embedder:
    """A Ray actor: loads the collection's model once, then embeds batches of decoded rows."""

    def __init__(self, identity_json: str, device: str, threads: int | None = None, precision: str = "auto"):
        """
        Args:
            identity_json: the collection's :class:`ModelIdentity`; the loaded model must match its key.
            device: ``cuda`` in actors given a GPU, ``cpu`` otherwise.
            threads: torch threads on ``cpu``; None: every core of this node, as the single-machine path's
                model has them (Ray's default, one thread per CPU the actor reserved, halves it on 2 cores).
            precision: the model's number format, ``auto``, ``fp32`` or ``bf16`` (:mod:`..models.precision`).

        Raises:
            CollectionError: the model loaded on this node is not the collection's (another checkpoint there).
        """
        from ..models.encoder import load_encoder  # torch: only in the actors

        identity = ModelIdentity.from_json(identity_json)
        if device == "cpu":
            import torch

            torch.set_num_threads(threads or os.cpu_count() or 1)
        self.encoder = load_encoder(identity.spec, device=device, dim=identity.embed_dim, precision=precision)
        if self.encoder.identity.key() != identity.key():
            raise CollectionError(
                f"on this Ray node {identity.spec} loads as model key {self.encoder.identity.key()}, but the "
                f"collection was built with key {identity.key()}; install the same weights on every node")

    def __call__(self, batch: Batch) -> Batch:
        from .runner import NothingKnown, embed_batch

        ok_rows = np.flatnonzero(batch["status"] == "ok")
        decoded = [Decoded(int(batch["image_id"][row]), str(batch["content_hash"][row]), 0, 0, "", NO_PIXELS)
                   for row in ok_rows]
        # runs the model once per content; duplicates of stored content are found at commit
        embedded = embed_batch(self.encoder, NothingKnown(), decoded, [batch["pixels"][ok_rows]], ())
        out = {name: (column.copy() if name in ("status", "reason", "message") else column)
               for name, column in batch.items() if name != "pixels"}
        row_of = {int(batch["image_id"][row]): row for row in ok_rows}
        for failure in embedded.failed:  # a vector the model gave as NaN: that row fails, as in a local ingest
            row = row_of[failure.image_id]
            out["status"][row], out["reason"][row], out["message"][row] = "failed", failure.reason, failure.message
        embeddings = np.zeros((len(batch["image_id"]), self.encoder.dim), dtype=np.float32)
        embeddings[[row_of[item.image_id] for item in embedded.decoded]] = embedded.embeddings
        out["embedding"] = embeddings
        return out


def write_rows(batch: Batch, drop: ResultDrop, dtype: str) -> Batch:
    """Write the rows of ``batch`` as one result (a sealed segment of the embedded ones); returns its name."""
    columns = {name: column for name, column in batch.items() if name != "embedding"}
    name = drop.write(columns, np.asarray(batch["embedding"], dtype=np.float32), dtype)
    return {"result": np.array([name], dtype=object), "rows": np.array([len(batch["image_id"])], dtype=np.int64)}
