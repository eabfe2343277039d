"""Result segments of a Ray ingestion: files that workers on any node write and the driver commits.

A segment is one Parquet file of finished rows (embedded or failed), written by a Ray worker to an output
location every node can reach: a shared path, or a pyarrow file-system URI (``s3://bucket/run``, ``gs://``,
``hdfs://``). It is written under a temporary name and then moved into place, so the driver never reads half
a segment. Each row carries its catalog id *and* the path, size and mtime it was planned with, so the
driver can tell a result that still belongs to its row from a stale one (the file changed since).

Segments are staging, not storage: the driver copies their rows into the catalog and then deletes them.
A segment left behind by a killed driver is committed by the next run, and one written twice by a retried
task commits once, because committing is idempotent (see :mod:`.ray_commit`).
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ..errors import CollectionError

logger = logging.getLogger(__name__)

SUFFIX = ".segment.parquet"
_PARTIAL = ".partial"  # a segment being written; never read, removed by the driver when it is old news

# Columns every segment has, in this order; ``embedding`` is a fixed-size list of float32 (zeros when failed).
COLUMNS = ("image_id", "path", "size", "mtime_ns", "status", "content_hash", "width", "height", "format",
           "reason", "message", "embedding")


@dataclass(frozen=True)
class SegmentRows:
    """The rows of one segment as numpy columns (row i of every field is one file)."""

    image_ids: npt.NDArray[np.int64]
    paths: tuple[bytes, ...]  # the catalog keys (os.fsencode of the absolute path)
    sizes: npt.NDArray[np.int64]  # as planned
    mtimes_ns: npt.NDArray[np.int64]
    ok: npt.NDArray[np.bool_]  # True: embedded; False: failed (see reasons)
    content_hashes: tuple[str, ...]
    widths: npt.NDArray[np.int64]
    heights: npt.NDArray[np.int64]
    formats: tuple[str, ...]
    reasons: tuple[str, ...]
    messages: tuple[str, ...]
    embeddings: npt.NDArray[np.float32]  # (n, dim)

    def __len__(self) -> int:
        return len(self.image_ids)


@dataclass(frozen=True)
class SegmentStore:
    """Where segments go: a pyarrow file system and a base directory on it. Picklable, so workers get it."""

    uri: str  # what the user gave: a local path or a file-system URI

    def _resolve(self) -> tuple[pafs.FileSystem, str]:
        try:
            return pafs.FileSystem.from_uri(self.uri)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as exc:
            raise CollectionError(f"cannot use {self.uri} as the Ray output location ({exc}); give a folder every "
                                  "node can reach or a URI such as s3://bucket/prefix") from exc

    def prepare(self) -> None:
        """Create the base directory (on the driver, before any worker writes)."""
        filesystem, base = self._resolve()
        try:
            filesystem.create_dir(base, recursive=True)
        except OSError as exc:
            raise CollectionError(f"cannot create the Ray output location {self.uri}: {exc}") from exc

    def write(self, table: pa.Table) -> str:
        """Write ``table`` as a new segment; returns its path on the store's file system."""
        filesystem, base = self._resolve()
        name = f"{base}/{uuid.uuid4().hex}{SUFFIX}"
        partial = name + _PARTIAL
        with filesystem.open_output_stream(partial) as stream:
            pq.write_table(table, stream)
        filesystem.move(partial, name)
        return name

    def finished(self) -> list[str]:
        """Finished segments, oldest name first (names are random, so the order only needs to be stable)."""
        filesystem, base = self._resolve()
        selector = pafs.FileSelector(base, allow_not_found=True)
        return sorted(info.path for info in filesystem.get_file_info(selector) if info.path.endswith(SUFFIX))

    def read(self, path: str) -> SegmentRows:
        """Read one segment.

        Raises:
            CollectionError: the file is not a readable segment (it is then left in place for inspection).
        """
        filesystem, _ = self._resolve()
        try:
            with filesystem.open_input_file(path) as handle:
                table = pq.read_table(handle)
            return rows_of(table)
        except (OSError, pa.ArrowException, KeyError, ValueError) as exc:
            raise CollectionError(f"segment {path} cannot be read ({exc}); move it away and re-run the ingest, "
                                  "its files are embedded again") from exc

    def remove(self, path: str) -> None:
        filesystem, _ = self._resolve()
        try:
            filesystem.delete_file(path)
        except FileNotFoundError:
            pass

    def remove_partials(self) -> int:
        """Delete half-written segments (only call when no worker is writing); returns how many."""
        filesystem, base = self._resolve()
        selector = pafs.FileSelector(base, allow_not_found=True)
        partials = [info.path for info in filesystem.get_file_info(selector) if info.path.endswith(_PARTIAL)]
        for path in partials:
            self.remove(path)
        return len(partials)


def table_of(columns: dict[str, Any]) -> pa.Table:
    """A segment table from numpy columns named as :data:`COLUMNS` (``embedding`` an ``(n, dim)`` array)."""
    embeddings = np.ascontiguousarray(columns["embedding"], dtype=np.float32)
    dim = embeddings.shape[1]
    arrays = {
        "image_id": pa.array(np.asarray(columns["image_id"], dtype=np.int64)),
        "path": pa.array(list(columns["path"]), type=pa.binary()),
        "size": pa.array(np.asarray(columns["size"], dtype=np.int64)),
        "mtime_ns": pa.array(np.asarray(columns["mtime_ns"], dtype=np.int64)),
        "status": pa.array([str(s) for s in columns["status"]], type=pa.string()),
        "content_hash": pa.array([str(s) for s in columns["content_hash"]], type=pa.string()),
        "width": pa.array(np.asarray(columns["width"], dtype=np.int64)),
        "height": pa.array(np.asarray(columns["height"], dtype=np.int64)),
        "format": pa.array([str(s) for s in columns["format"]], type=pa.string()),
        "reason": pa.array([str(s) for s in columns["reason"]], type=pa.string()),
        "message": pa.array([str(s) for s in columns["message"]], type=pa.string()),
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(embeddings.reshape(-1)), dim),
    }
    return pa.table(arrays)


def rows_of(table: pa.Table) -> SegmentRows:
    """The rows of a segment table (as written by :func:`table_of`)."""
    column = table.column
    embedding = column("embedding").combine_chunks()
    dim = embedding.type.list_size
    flat = embedding.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    return SegmentRows(
        image_ids=column("image_id").to_numpy().astype(np.int64),
        paths=tuple(column("path").to_pylist()),
        sizes=column("size").to_numpy().astype(np.int64),
        mtimes_ns=column("mtime_ns").to_numpy().astype(np.int64),
        ok=np.array([s == "ok" for s in column("status").to_pylist()], dtype=bool),
        content_hashes=tuple(column("content_hash").to_pylist()),
        widths=column("width").to_numpy().astype(np.int64),
        heights=column("height").to_numpy().astype(np.int64),
        formats=tuple(column("format").to_pylist()),
        reasons=tuple(column("reason").to_pylist()),
        messages=tuple(column("message").to_pylist()),
        embeddings=flat.reshape(-1, dim),
    )
