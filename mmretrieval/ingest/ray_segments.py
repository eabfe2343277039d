"""Where Ray workers leave finished work for the driver: sealed vector segments plus a table of their rows.

Each write task produces one result named by a random hex ``name``, in the collection's own segment format
(:mod:`mmretrieval.collection.segments`, so the driver commits it with ``Catalog.commit_segment``, hard-linking
rather than copying)::

    <name>.rows.parquet   every row of the batch: id, planned path/size/mtime, status, hash, size, reason
    <name>.vec / .ids     the vectors of the rows that embedded (SegmentWriter)
    <name>.json           the seal (sizes and sha256); written last, so a listed result is always complete

The location is a folder every node reaches (NFS, a cluster file system), or a pyarrow file-system URI
(``s3://bucket/run``, ``gs://``, ``hdfs://``): there a worker writes to a local temporary folder and uploads
the files (the seal last), and the driver downloads each result into a local staging folder to commit it.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ..collection.segments import SealedSegment, SegmentWriter, read_sealed
from ..errors import CollectionError
from ..json_lines import bytes_escaped

logger = logging.getLogger(__name__)

SEAL_SUFFIX = ".json"
ROWS_SUFFIX = ".rows.parquet"
_FILE_SUFFIXES = (ROWS_SUFFIX, ".vec", ".ids", SEAL_SUFFIX)  # upload order: the seal last
_ROW_COLUMNS = ("image_id", "path", "size", "mtime_ns", "status", "content_hash", "width", "height", "format",
                "reason", "message", "photo")


@dataclass(frozen=True)
class ResultRows:
    """The rows of one result (row i of every field is one file); vectors are in its sealed segment."""

    image_ids: npt.NDArray[np.int64]
    paths: tuple[bytes, ...]  # catalog keys (os.fsencode of the absolute path), as planned
    sizes: npt.NDArray[np.int64]  # as planned
    mtimes_ns: npt.NDArray[np.int64]
    ok: npt.NDArray[np.bool_]  # True: embedded (its vector is in the segment); False: failed
    content_hashes: tuple[str, ...]
    widths: npt.NDArray[np.int64]
    heights: npt.NDArray[np.int64]
    formats: tuple[str, ...]
    reasons: tuple[str, ...]
    messages: tuple[str, ...]
    photos: tuple[str, ...]  # PhotoMetadata.to_json(), or "" where nothing was extracted

    def __len__(self) -> int:
        return len(self.image_ids)


@dataclass(frozen=True)
class Result:
    """A finished result, its files on this machine."""

    name: str
    rows: ResultRows
    segment: SealedSegment


PREPARE_RETRY_S = 5.0  # the driver's first touch of a gs:// output location (24 s in all, offline; 41 s at 10)


def short_retries(uri: str) -> str:
    """``uri`` with a short retry limit for Google Cloud Storage, unless it sets one: offline, or without
    credentials, pyarrow's default kept ``mmr ingest --ray`` retrying for minutes before saying anything."""
    if not uri.startswith("gs://") or "retry_limit_seconds=" in uri:
        return uri
    return f"{uri}{'&' if '?' in uri else '?'}retry_limit_seconds={PREPARE_RETRY_S:g}"


def check_utf8_location(location: str, fix: str) -> None:
    """Refuse a work location whose path is not UTF-8 text (a folder named in Latin-1 bytes, say): Ray's file
    systems (pyarrow) and FAISS's on-disk lists take paths as UTF-8, and failed on it with a bare UnicodeEncodeError.
    Files with such names are fine to ingest; only the folder Ray works in must be UTF-8.

    Raises:
        CollectionError: naming the location with its bytes as ``\\xNN``, and ``fix``, what to do.
    """
    shown = bytes_escaped(location)
    if shown != location:
        raise CollectionError(f"Ray cannot work in {shown}: its path is not UTF-8 text, which Ray's file systems "
                              f"and FAISS need; {fix}")


@dataclass(frozen=True)
class ResultDrop:
    """The output location of one Ray ingestion. Small and picklable: the write tasks get a copy."""

    uri: str  # an absolute local path, or a pyarrow file-system URI
    staging: str  # local folder on the driver for downloaded results (unused for a local ``uri``)

    @property
    def is_local(self) -> bool:
        return "://" not in self.uri or self.uri.startswith("file://")

    def _filesystem(self, uri: str | None = None) -> tuple[pafs.FileSystem, str]:
        try:
            return pafs.FileSystem.from_uri(uri or self.uri)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as exc:
            raise CollectionError(f"cannot use {self.uri} as the Ray output location ({exc}); give a folder every "
                                  "node can reach or a URI such as s3://bucket/prefix") from exc

    def _local_dir(self) -> Path:
        return Path(self._filesystem()[1]) if self.is_local else Path(self.staging)

    def prepare(self) -> None:
        """Create the location (on the driver, before any worker writes); an unreachable bucket fails in seconds.

        Raises:
            CollectionError: the location cannot be created, or its path is not UTF-8 text.
        """
        check_utf8_location(self.uri, "give --ray-output a folder whose path is UTF-8 (one every node reaches)")
        if not self.is_local:
            check_utf8_location(self.staging, "results from a URI are staged in the collection's folder: move the "
                                              "collection to a folder whose path is UTF-8")
        filesystem, base = self._filesystem(short_retries(self.uri))
        try:
            filesystem.create_dir(base, recursive=True)
            Path(self.staging).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CollectionError(f"cannot create the Ray output location {self.uri}: {exc}") from exc

    # -- workers ----------------------------------------------------------------------------------------------
    def write(self, columns: dict[str, Any], embeddings: npt.NDArray[np.float32], dtype: str) -> str:
        """Write one result: the rows table, the ok rows' vectors as a sealed segment; returns its name."""
        name = uuid.uuid4().hex
        with self._writable_dir() as directory:
            pq.write_table(_rows_table(columns), str(directory / f"{name}{ROWS_SUFFIX}"))
            ok = np.asarray(columns["status"]) == "ok"
            writer = SegmentWriter(directory, dim=embeddings.shape[1], dtype=dtype, name=name)
            writer.append(np.asarray(columns["image_id"], np.int64)[ok], embeddings[ok])
            writer.seal()
            if not self.is_local:
                self._upload(directory, name)
        return name

    @contextmanager
    def _writable_dir(self) -> Iterator[Path]:
        if self.is_local:
            yield self._local_dir()
            return
        with tempfile.TemporaryDirectory(prefix="mmr-ray-") as tmp:
            yield Path(tmp)

    def _upload(self, directory: Path, name: str) -> None:
        filesystem, base = self._filesystem()
        for suffix in _FILE_SUFFIXES:
            pafs.copy_files(str(directory / f"{name}{suffix}"), f"{base}/{name}{suffix}",
                            destination_filesystem=filesystem)

    # -- the driver -------------------------------------------------------------------------------------------
    def finished(self) -> list[str]:
        """Names of complete results (sealed, their rows table there), in a stable order.

        A seal whose rows table is gone is not one: a task that outlived a stopped driver (Ray retries an actor's
        task after the actor is killed) was still writing when the next run's :meth:`remove_unsealed` took its
        unsealed rows, and sealed it after. Its rows are pending, or committed from another result; the run
        after next removes its files, as unsealed leftovers.
        """
        filesystem, base = self._filesystem()
        names = {os.path.basename(i.path) for i in filesystem.get_file_info(
            pafs.FileSelector(base, allow_not_found=True))}
        return sorted(name[:-len(SEAL_SUFFIX)] for name in names
                      if name.endswith(SEAL_SUFFIX) and name[:-len(SEAL_SUFFIX)] + ROWS_SUFFIX in names)

    def read(self, name: str) -> Result:
        """A finished result, checked against its seal (downloaded first from a remote location).

        Raises:
            CollectionError: its files are missing, truncated or altered (they are left in place).
        """
        if not self.is_local:
            filesystem, base = self._filesystem()
            for suffix in _FILE_SUFFIXES:
                pafs.copy_files(f"{base}/{name}{suffix}", str(Path(self.staging) / f"{name}{suffix}"),
                                source_filesystem=filesystem)
        directory = self._local_dir()
        segment = read_sealed(directory / f"{name}{SEAL_SUFFIX}")
        try:
            rows = _rows_of(pq.read_table(str(directory / f"{name}{ROWS_SUFFIX}")))
        except (OSError, pa.ArrowException, KeyError) as exc:
            raise CollectionError(f"the rows of Ray result {name} in {self.uri} cannot be read ({exc}); move its "
                                  "files away and re-run the ingest: its images are embedded again") from exc
        if int(rows.ok.sum()) != segment.count:
            raise CollectionError(f"Ray result {name} in {self.uri} lists {int(rows.ok.sum())} embedded rows but its "
                                  f"segment holds {segment.count}; move its files away and re-run the ingest")
        return Result(name, rows, segment)

    def remove(self, name: str) -> None:
        """Delete a result's files (after its commit: the collection has hard-linked or copied what it keeps)."""
        if not self.is_local:
            filesystem, base = self._filesystem()
            for suffix in reversed(_FILE_SUFFIXES):
                try:
                    filesystem.delete_file(f"{base}/{name}{suffix}")
                except FileNotFoundError:
                    pass
        for suffix in reversed(_FILE_SUFFIXES):
            (self._local_dir() / f"{name}{suffix}").unlink(missing_ok=True)

    def remove_unsealed(self) -> int:
        """Delete files of results that never got their seal (writers killed midway); only while none writes."""
        filesystem, base = self._filesystem()
        infos = filesystem.get_file_info(pafs.FileSelector(base, allow_not_found=True))
        sealed = set(self.finished())
        orphans = [i.path for i in infos if i.type == pafs.FileType.File
                   and os.path.basename(i.path).split(".", 1)[0] not in sealed]
        for path in orphans:
            filesystem.delete_file(path)
        if not self.is_local:
            shutil.rmtree(self.staging, ignore_errors=True)
            Path(self.staging).mkdir(parents=True, exist_ok=True)
        return len(orphans)


def _rows_table(columns: dict[str, Any]) -> pa.Table:
    ints = ("image_id", "size", "mtime_ns", "width", "height")
    arrays = {}
    for name in _ROW_COLUMNS:
        if name in ints:
            arrays[name] = pa.array(np.asarray(columns[name], dtype=np.int64))
        elif name == "path":
            arrays[name] = pa.array([bytes(p) for p in columns[name]], type=pa.binary())
        else:
            arrays[name] = pa.array([str(v) for v in columns[name]], type=pa.string())
    return pa.table(arrays)


def _rows_of(table: pa.Table) -> ResultRows:
    def ints(name: str) -> npt.NDArray[np.int64]:
        return table.column(name).to_numpy().astype(np.int64)

    def texts(name: str) -> tuple:
        return tuple(table.column(name).to_pylist())

    return ResultRows(ints("image_id"), texts("path"), ints("size"), ints("mtime_ns"),
                      np.array([s == "ok" for s in texts("status")], dtype=bool), texts("content_hash"),
                      ints("width"), ints("height"), texts("format"), texts("reason"), texts("message"),
                      texts("photo"))
