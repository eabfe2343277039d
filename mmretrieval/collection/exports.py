"""Exporting a collection's vectors as clip-retrieval's output layout, so that they can leave this tool.

``OUT/img_emb/img_emb_N.npy`` (``(rows, dim)`` unit vectors, float16 as clip-retrieval writes them, or float32)
next to ``OUT/metadata/metadata_N.parquet``, shard ``N`` numbered from 0 and zero-padded as clip-retrieval pads
it (``img_emb_03.npy`` among 12 shards), so that name order is shard order. This is what clip-retrieval's
``clip index`` and ``clip back``, autofaiss and ``mmr import`` read; ``pandas.read_parquet`` reads the metadata.
Every embedded image is exported once, in catalog id order; row ``i`` of a shard's ``.npy`` is the image of row
``i`` of its parquet. Metadata columns:

- ``image_path``: the file's path as the catalog keeps it (absolute; an imported URI as it was). A string
  column, except in a shard holding a name that is not valid UTF-8 (Linux allows any bytes), where it is a
  binary column of every name's bytes: a string cannot hold such a name, and replacing its bytes would name a
  file that does not exist (``os.fsdecode`` of the bytes opens the file);
- ``caption``, only when some exported image has one (null for the others);
- ``id`` (the catalog id), ``width`` and ``height`` (pixels), ``taken_local`` (capture time,
  ``YYYY-MM-DDTHH:MM:SS`` on the wall clock where the photo was taken), ``taken_source`` (where that time came
  from: ``exif_original``, ``exif_digitized``, ``exif_datetime``, or ``mtime`` for a file without an EXIF date),
  ``camera_make`` and ``camera_model``: null where unknown (imported rows have none of these but the id);
- ``labels``, only when some label set holds a label: each image's labels, best first, named as search results
  name them (``SET:LABEL`` outside the default set); an empty list for an image without one.

``OUT/mmr-model.json`` records the identity of the model that made the vectors (architecture, weights hash,
preprocessing, dimension): ``mmr import`` refuses the export into a collection of another model, whose vectors
would be meaningless next to these even at the same dimension.

Atomic: the shards are written into a hidden sibling of ``OUT`` that becomes ``OUT`` only once every shard is
written and fsynced (:func:`~mmretrieval.filled_folders.folder_built_aside`), so an interrupted export (SIGKILL
included) leaves no ``OUT`` that looks complete; ``OUT`` must be new, empty, or an earlier export (replaced).

Memory: one block of :data:`BLOCK_ROWS` rows (its vectors as stored and as written, its catalog rows as Python
objects) plus one shard's metadata as Arrow arrays (about 100 bytes a row: ~100 MB for a shard of a million);
the vectors go to the ``.npy`` block by block and are never held for a whole shard. Measured with 512-d float16
and 1 M-row shards (``bench/peak_memory.py export``): peak RssAnon 524 MiB at 1 M rows, 589 MiB at 3 M, of which
~290 MiB is the process before it reads a row; flat from shard to shard, so about 0.6 GB at 10 M.

Concurrency: every block is read in one query (its rows, their vectors' places) and gathered from the segments
at once, so each exported row's id, path and vector belong together; a writer committing while the export runs
may or may not have its new rows in it. Nothing in the collection is written, so a read-only collection exports.
"""

from __future__ import annotations

import io
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import numpy as np
import numpy.typing as npt

from ..atomic import fsync_dir
from ..filled_folders import check_fillable_folder, folder_built_aside
from ..errors import CollectionError
from .sealed import DTYPES
from .segment_files import SEGMENT_GONE

if TYPE_CHECKING:
    from .catalog import Catalog
    from .collection import Collection

logger = logging.getLogger(__name__)

Progress = Callable[[int, int], None]  # (rows written, rows to write)
_SHARD_NAME = re.compile(r"img_emb/img_emb_\d+\.npy|metadata/metadata_\d+\.parquet")
EXPORTED_BY = "mmr export"  # the marker of an export folder: a later export into it replaces it
MODEL_FILE = "mmr-model.json"  # in an export: the identity of the model that made its vectors (mmr import checks it)
DEFAULT_DTYPE = "float16"  # what clip-retrieval writes, and what collections store by default: an exact copy
DEFAULT_SHARD_ROWS = 1_000_000  # rows per shard: 1 GB of 512-d float16, about clip-retrieval's own shard size
BLOCK_ROWS = 32_768  # rows read from the catalog and the segments at a time: 32 MiB of 512-d float16

_ROWS_SQL = ("SELECT v.image_id, v.segment, v.row, i.path, i.caption, i.width, i.height, p.taken_local, "
             "p.taken_source, p.make, p.model FROM vector_rows v JOIN images i ON i.id = v.image_id "
             "LEFT JOIN photos p ON p.image_id = v.image_id WHERE v.image_id > ? ORDER BY v.image_id LIMIT ?")


@dataclass(frozen=True)
class ExportSummary:
    """What one export wrote."""

    out: str  # the folder written
    rows: int  # images exported
    shards: int
    dtype: str  # of the vectors written
    captions: bool  # whether the metadata has a caption column
    binary_path_shards: int  # shards whose image_path column holds bytes: a name in them is not UTF-8
    elapsed_s: float  # wall time of reading and writing the shards


@dataclass(frozen=True)
class ExportBlock:
    """Consecutive exported rows, in id order: their vectors as stored and their catalog metadata."""

    ids: npt.NDArray[np.int64]
    vectors: npt.NDArray[np.floating]  # (rows, dim), the segments' dtype
    paths: Sequence[bytes]  # catalog keys: the file system's bytes of the absolute path, or a URI
    captions: Sequence[str | None]
    widths: Sequence[int | None]
    heights: Sequence[int | None]
    taken_local: Sequence[str | None]
    taken_source: Sequence[str | None]
    camera_makes: Sequence[str | None]
    camera_models: Sequence[str | None]
    labels: Sequence[list[str]] | None  # per row, best first, as search results name them; None: no label set


def check_export_folder(out: str | os.PathLike) -> Path:
    """``out`` if an export may fill it: a new name, an empty folder, or an earlier export (replaced).

    Raises:
        CollectionError: ``out`` is a file, or a folder holding anything else (nothing of it is touched).
    """
    return check_fillable_folder(out, EXPORTED_BY, _exported_here)


def _exported_here(inside: tuple[str, ...], entry: os.DirEntry) -> bool:
    """Whether :func:`export_embeddings` wrote this entry: the model's identity, a shard's vectors or metadata."""
    return inside == (MODEL_FILE,) or _SHARD_NAME.fullmatch("/".join(inside)) is not None


def export_embeddings(collection: "Collection", out: str | os.PathLike, *, dtype: str = DEFAULT_DTYPE,
                      shard_rows: int = DEFAULT_SHARD_ROWS, block_rows: int = BLOCK_ROWS,
                      progress: Progress | None = None) -> ExportSummary:
    """Write every embedded image of ``collection`` to ``out`` in clip-retrieval's output layout.

    Args:
        collection: an open collection (read-only is enough).
        out: the folder to make: new, empty, or an earlier export (replaced whole).
        dtype: ``float16`` (clip-retrieval's, and a collection's default storage) or ``float32``.
        shard_rows: rows per shard (the last one holds the rest).
        block_rows: rows read and written at a time (memory: see the module's docstring).
        progress: ``(rows written, rows to write)`` after each block.

    Returns:
        Rows and shards written, the dtype, whether there is a caption column, shards with binary paths.

    Raises:
        CollectionError: a bad dtype or row count, pyarrow missing, a collection with no embedded image,
            ``out`` not fillable (:func:`check_export_folder`) or not writable, or damaged segments.
    """
    if dtype not in DTYPES:
        raise CollectionError(f"cannot export as {dtype!r}: choose one of {', '.join(DTYPES)}")
    if shard_rows < 1 or block_rows < 1:
        raise CollectionError(f"shard_rows and block_rows must be at least 1, got {shard_rows} and {block_rows}")
    pyarrow_modules()
    started = time.perf_counter()
    catalog = collection.catalog
    total = catalog.vector_count()
    if not total:
        raise CollectionError(f"{collection.directory} has no embedded image; there is nothing to export")
    with_captions = _any_caption(catalog)
    digits = len(str(-(-total // shard_rows)))  # clip-retrieval pads to its shard count's digits
    with_labels = bool(catalog.select("SELECT EXISTS(SELECT 1 FROM labels)")[0][0])
    reader = _BlockReader(catalog, block_rows, with_labels)
    shards = binary = done = 0

    def report(rows: int) -> None:  # rows written so far, this shard's included
        if progress is not None:
            progress(rows, max(total, rows))  # a writer may have added rows since the count

    try:
        with folder_built_aside(out, EXPORTED_BY, _exported_here) as folder:
            for sub in ("img_emb", "metadata"):
                (folder / sub).mkdir()
            (folder / MODEL_FILE).write_text(collection.identity.to_json() + "\n", encoding="utf-8")
            while reader.has_more():
                number = str(shards).zfill(digits)
                rows, binary_paths = _write_shard(
                    folder / "img_emb" / f"img_emb_{number}.npy", folder / "metadata" / f"metadata_{number}.parquet",
                    reader.blocks(shard_rows), np.dtype(dtype).newbyteorder("<"), catalog.segments.dim,
                    with_captions, lambda written: report(done + written))  # (called before done moves on)
                shards, binary, done = shards + 1, binary + binary_paths, done + rows
                if rows < shard_rows:  # the reader ran out
                    break
            for sub in ("img_emb", "metadata"):
                fsync_dir(folder / sub)
    except OSError as exc:
        raise CollectionError(f"cannot write {out}: {exc.strerror or exc}") from exc
    logger.info("exported %d vectors in %d shard(s) to %s", done, shards, out)
    return ExportSummary(out=str(Path(out).expanduser()), rows=done, shards=shards, dtype=dtype,
                         captions=with_captions, binary_path_shards=binary,
                         elapsed_s=round(time.perf_counter() - started, 3))


class _BlockReader:
    """The exported rows as blocks in id order, each read where the previous one ended."""

    def __init__(self, catalog: "Catalog", block_rows: int, with_labels: bool):
        self._catalog, self._block_rows, self._with_labels = catalog, block_rows, with_labels
        self._after = -1  # the last id read

    def has_more(self) -> bool:
        return bool(self._catalog.select("SELECT EXISTS(SELECT 1 FROM vector_rows WHERE image_id > ?)",
                                         (self._after,))[0][0])

    def blocks(self, limit: int) -> Iterator[ExportBlock]:
        """Blocks of at most ``limit`` rows in all (fewer when the rows run out)."""
        left = limit
        while left > 0:
            block = self._read(min(self._block_rows, left))
            if block is None:
                return
            left -= len(block.ids)
            self._after = int(block.ids[-1])
            yield block
            del block  # not held while the next one is read

    def _read(self, limit: int) -> ExportBlock | None:
        try:
            return self._read_once(limit)
        except SEGMENT_GONE:  # a compaction deleted a segment meanwhile: ask again
            self._catalog.segments.forget_maps()
            return self._read_once(limit)

    def _read_once(self, limit: int) -> ExportBlock | None:
        rows = self._catalog.select(_ROWS_SQL, (self._after, limit))
        if not rows:
            return None
        ids, segments, places, paths, captions, widths, heights, taken, sources, makes, models = zip(*rows)
        vectors = self._catalog.segments.gather(segments, places, stored_dtype=True)
        labels = None
        if self._with_labels:
            assigned = self._catalog.labels_of(ids)
            labels = [[name for name, _ in assigned.get(image_id, ())] for image_id in ids]
        return ExportBlock(np.array(ids, np.int64), vectors, paths, captions, widths, heights, taken, sources, makes,
                           models, labels)


def _write_shard(embeddings: Path, metadata: Path, blocks: Iterator[ExportBlock], dtype: np.dtype, dim: int,
                 with_captions: bool, progress: Callable[[int], None]) -> tuple[int, bool]:
    """Write one shard's ``.npy`` block by block and then its parquet; returns its rows and whether its
    ``image_path`` column is binary."""
    pa, pq = pyarrow_modules()
    batches = []
    rows = 0
    with open(embeddings, "wb") as handle:
        placeholder = _npy_header(0, dim, dtype)  # rewritten once the rows are counted
        handle.write(placeholder)
        for block in blocks:
            handle.write(np.ascontiguousarray(block.vectors, dtype=dtype).data)
            batches.append(_metadata_batch(block, with_captions))
            rows += len(block.ids)
            progress(rows)
            del block  # not held while the next one is read
        header = _npy_header(rows, dim, dtype)
        if len(header) != len(placeholder):  # numpy pads headers so that the row count can grow in place
            raise CollectionError(f"numpy {np.__version__} writes .npy headers of varying length; "
                                  "upgrade numpy (>= 1.26) to export")
        handle.seek(0)
        handle.write(header)
        handle.flush()
        os.fsync(handle.fileno())
    table = pa.Table.from_batches(batches)
    del batches
    paths = table.column("image_path")
    try:
        table = table.set_column(0, "image_path", paths.cast(pa.string()))
        binary = False
    except pa.ArrowInvalid:  # a name that is not UTF-8: the column keeps every name's bytes
        binary = True
    with open(metadata, "wb") as handle:
        pq.write_table(table, handle)
        handle.flush()
        os.fsync(handle.fileno())
    return rows, binary


def _metadata_batch(block: ExportBlock, with_captions: bool) -> Any:
    """One block's parquet columns (``image_path`` as bytes, cast to text per shard)."""
    pa, _ = pyarrow_modules()
    columns = {"image_path": pa.array(block.paths, pa.binary())}
    if with_captions:
        columns["caption"] = pa.array(block.captions, pa.string())
    columns.update({
        "id": pa.array(block.ids, pa.int64()),
        "width": pa.array(block.widths, pa.int32()),
        "height": pa.array(block.heights, pa.int32()),
        "taken_local": pa.array(block.taken_local, pa.string()),
        "taken_source": pa.array(block.taken_source, pa.string()),
        "camera_make": pa.array(block.camera_makes, pa.string()),
        "camera_model": pa.array(block.camera_models, pa.string()),
    })
    if block.labels is not None:
        columns["labels"] = pa.array(block.labels, pa.list_(pa.string()))
    return pa.RecordBatch.from_pydict(columns)


def _npy_header(rows: int, dim: int, dtype: np.dtype) -> bytes:
    """The ``.npy`` header (format 1.0) of a C-ordered ``(rows, dim)`` array."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buffer, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": (rows, dim)})
    return buffer.getvalue()


def _any_caption(catalog: "Catalog") -> bool:
    return bool(catalog.select("SELECT EXISTS(SELECT 1 FROM images i JOIN vector_rows v ON v.image_id = i.id "
                               "WHERE i.caption IS NOT NULL)")[0][0])


def pyarrow_modules(use: str = "writing") -> tuple[Any, Any]:
    """``(pyarrow, pyarrow.parquet)``, for ``use`` (``"writing"``, ``"reading"``) clip-retrieval metadata.

    Raises:
        CollectionError: pyarrow is not installed (the ``[import]`` extra brings it).
    """
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise CollectionError(f"{use} clip-retrieval metadata needs pyarrow: pip install 'mmretrieval[import]'"
                              ) from exc
    return pa, pq
