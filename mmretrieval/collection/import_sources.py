"""What an import reads: the shards of a clip-retrieval output folder (``img_emb/img_emb_N.npy`` beside
``metadata/metadata_N.parquet``) or of another collection, each checked whole before it lands (:mod:`.imports`),
and the model a folder records (an ``mmr export``'s ``mmr-model.json``, or a collection's catalog)."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, Sequence

import numpy as np

from ..errors import CollectionError
from .catalog import encode_path, is_collection
from .exports import MODEL_FILE, pyarrow_modules

if TYPE_CHECKING:
    from ..models.specs import ModelIdentity
    from .collection import Collection

PATH_COLUMN = "image_path"
CAPTION_COLUMN = "caption"
_SHARD_NAME = re.compile(r"img_emb_(\d+)\.npy$")
_METADATA_NAME = re.compile(r"metadata_(\d+)\.parquet$")


class Shard(Protocol):
    """One unit of an import: checked whole, landed in one transaction, recorded by name and fingerprint."""

    name: str  # unique within its source, e.g. img_emb_3 or segment-000002

    def fingerprint(self) -> str:
        """Changes when the shard's content does (a rewritten shard is a new shard)."""

    def rows(self) -> int:
        """Rows it holds (0 when that cannot be known before checking it)."""

    def check(self, dim: int, root: Path) -> "CheckedShard":
        """Read and check its paths and captions and open its vectors (checked as they land, by
        :func:`~.import_vectors.checked_blocks`). Raises CollectionError naming the bad file and the fault."""


@dataclass(frozen=True)
class ShardFiles:
    """The two files of one clip-retrieval shard."""

    name: str  # img_emb_N
    embeddings: Path  # img_emb/img_emb_N.npy
    metadata: Path  # metadata/metadata_N.parquet

    def fingerprint(self) -> str:
        """Sizes and mtimes of both files."""
        parts = []
        for path in (self.embeddings, self.metadata):
            info = path.stat()
            parts.append(f"{info.st_size}:{info.st_mtime_ns}")
        return "/".join(parts)

    def rows(self) -> int:
        try:
            return int(np.load(self.embeddings, mmap_mode="r", allow_pickle=False).shape[0])
        except Exception:  # a broken file is reported properly by check(), in shard order
            return 0

    def check(self, dim: int, root: Path) -> "CheckedShard":
        return check_shard(self, dim, root)


@dataclass(frozen=True)
class CheckedShard:
    """A shard whose paths passed their checks: its rows' catalog keys and captions, and the mapped vectors."""

    name: str
    file: Path  # the vectors' file, named in errors and log lines
    keys: list[bytes]  # catalog path keys, in row order
    captions: list[str | None]
    vectors: Any  # (rows, dim), any float dtype, sliceable and indexable by a position array (a memory map)
    # the rows as one JSON array for SQLite's json_each (None if a key is not UTF-8): made here, on the thread
    # that checks shards ahead, rather than on the one inserting them
    rows_json: str | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "rows_json", rows_json(self.keys, self.captions))


def rows_json(keys: Sequence[bytes], captions: Sequence[str | None]) -> str | None:
    """``[path, ...]``, or ``[[path, caption], ...]`` when any row has a caption, as JSON; None when a key is
    not UTF-8 (JSON cannot carry other bytes)."""
    try:
        texts = [key.decode("utf-8") for key in keys]
    except UnicodeDecodeError:
        return None
    return json.dumps(list(zip(texts, captions)) if any(caption is not None for caption in captions) else texts)


def find_shards(directory: str | os.PathLike) -> list[ShardFiles]:
    """The shards of a clip-retrieval output folder, by shard number.

    Raises:
        CollectionError: no ``img_emb`` folder or no shards in it, or a shard without its metadata file.
    """
    root = Path(directory)
    emb_dir = root / "img_emb"
    if not emb_dir.is_dir():
        raise CollectionError(f"{root} has no img_emb/ folder; mmr import reads clip-retrieval's output layout "
                              "(img_emb/img_emb_N.npy and metadata/metadata_N.parquet)")
    shards = []
    for path in emb_dir.iterdir():
        match = _SHARD_NAME.match(path.name)
        if match is None:
            continue
        metadata = root / "metadata" / f"metadata_{match.group(1)}.parquet"
        if not metadata.is_file():
            raise CollectionError(f"shard {path} has no metadata file {metadata}; clip-retrieval writes "
                                  "both, copy the metadata folder too")
        shards.append((int(match.group(1)), ShardFiles(path.stem, path, metadata)))
    if not shards:
        raise CollectionError(f"no img_emb_N.npy files in {emb_dir}")
    paired = {files.metadata.name for _, files in shards}
    for path in sorted((root / "metadata").glob("metadata_*.parquet")):
        number = _METADATA_NAME.match(path.name)
        if number and path.name not in paired:  # its rows were left out without a word
            raise CollectionError(f"{path} has no embeddings file {emb_dir / f'img_emb_{number.group(1)}.npy'}; "
                                  "clip-retrieval writes both: copy the img_emb folder whole, or move that metadata "
                                  "file away to import the rest")
    return [files for _, files in sorted(shards, key=lambda pair: pair[0])]


def open_embeddings(path: Path, dim: int) -> np.ndarray:
    """Memory-map a shard's ``.npy`` and check its shape and type.

    Raises:
        CollectionError: unreadable or truncated file, not 2-D, not floating point, or the wrong dimension.
    """
    try:
        vectors = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise CollectionError(f"{path} is not a readable .npy file (truncated or corrupt: {exc}); "
                              "re-copy it or remove this shard") from exc
    if vectors.ndim != 2:
        raise CollectionError(f"{path} holds a {vectors.ndim}-D array of shape {vectors.shape}; "
                              "expected (rows, dim) embeddings")
    if vectors.dtype.kind != "f":
        raise CollectionError(f"{path} holds {vectors.dtype} values; expected float16, float32 or float64")
    if vectors.shape[1] != dim:
        raise CollectionError(f"{path} has {vectors.shape[1]}-d vectors but the collection's model makes {dim}-d "
                              "ones; import into a collection of the model that made them (--model)")
    return vectors


def read_metadata(path: Path, rows: int, root: Path) -> tuple[list[bytes], list[str | None]]:
    """The catalog keys and captions of a shard's parquet file.

    Raises:
        CollectionError: unreadable file, no ``image_path`` column, a row count other than ``rows``, or an
            empty path.
    """
    _, pq = pyarrow_modules("reading")
    try:
        # opened here, not by pyarrow: it takes a path only as UTF-8, and a folder's name need not be
        with open(path, "rb") as handle:
            parquet = pq.ParquetFile(handle)
            names = parquet.schema_arrow.names
            if PATH_COLUMN not in names:
                raise CollectionError(f"{path} has no {PATH_COLUMN!r} column (columns: {', '.join(names)})")
            if parquet.metadata.num_rows != rows:
                raise CollectionError(f"{path} has {parquet.metadata.num_rows} rows but its embeddings file has "
                                      f"{rows}; the shard is incomplete, re-copy both files")
            columns = [PATH_COLUMN] + ([CAPTION_COLUMN] if CAPTION_COLUMN in names else [])
            table = parquet.read(columns=columns)
    except CollectionError:
        raise
    except Exception as exc:  # pyarrow raises its own ArrowInvalid / OSError family for corrupt files
        raise CollectionError(f"{path} is not a readable parquet file: {exc}") from exc
    captions = table.column(CAPTION_COLUMN).to_pylist() if CAPTION_COLUMN in names else [None] * rows
    return _keys_of(path, table.column(PATH_COLUMN), root), captions


def _keys_of(path: Path, column: Any, root: Path) -> list[bytes]:
    """Catalog keys of a parquet path column: the common case (absolute, normal) in pyarrow, the rest one by one."""
    import pyarrow as pa
    import pyarrow.compute as pc

    try:
        strings = column.cast(pa.string())
    except pa.ArrowInvalid:  # names that are not UTF-8 (as mmr export writes them): their bytes, one by one
        if not (pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type)):
            raise
        return _keys_of_bytes(path, column.to_pylist(), root)
    empty = pc.fill_null(pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(strings)), 0), True)
    if pc.any(empty).as_py():
        row = int(np.flatnonzero(empty.to_numpy(zero_copy_only=False))[0])
        raise CollectionError(f"{path} row {row} has an empty {PATH_COLUMN}; every row must name its image")
    # already what encode_path would make: absolute, no ".", "..", "//" or trailing "/" to normalise away
    plain = pc.and_(pc.starts_with(strings, "/"),
                    pc.invert(pc.match_substring_regex(strings, r"(^|/)\.\.?(/|$)|//|/$")))
    keys = strings.cast(pa.binary()).to_pylist()  # UTF-8 bytes, which is what os.fsencode makes of them
    for row in np.flatnonzero(~plain.to_numpy(zero_copy_only=False)).tolist():
        keys[row] = catalog_key(keys[row].decode("utf-8"), root)
    return keys


def _keys_of_bytes(path: Path, names: list, root: Path) -> list[bytes]:
    """Catalog keys of a binary path column: each name's bytes, as a file system gives them."""
    keys = []
    for row, name in enumerate(names):
        if name is None or not name.strip():
            raise CollectionError(f"{path} row {row} has an empty {PATH_COLUMN}; every row must name its image")
        keys.append(catalog_key(os.fsdecode(name), root))
    return keys


def catalog_key(path: str, root: Path) -> bytes:
    """The catalog key of an imported path: URIs verbatim, relative paths resolved against ``root``."""
    key = encode_path(path)
    if key == os.fsencode(path):  # a URI, or already absolute and normal
        return key
    return encode_path(os.path.join(root, os.path.expanduser(path)))


def check_shard(files: ShardFiles, dim: int, root: Path) -> CheckedShard:
    """The checks on one shard that come before its transaction: its files, shape and paths.

    Raises:
        CollectionError: naming the bad file and what is wrong with it.
    """
    vectors = open_embeddings(files.embeddings, dim)
    keys, captions = read_metadata(files.metadata, len(vectors), root)
    return CheckedShard(files.name, files.embeddings, keys, captions, vectors)


def import_source(directory: str | os.PathLike) -> Path:
    """``directory`` made absolute, if it is a folder.

    Raises:
        CollectionError: it is not.
    """
    source = Path(os.path.abspath(directory))
    if not source.is_dir():
        raise CollectionError(f"{directory} is not a folder; pass a clip-retrieval output folder or a collection")
    return source


def find_any(source: Path, collection: "Collection") -> Sequence[Shard]:
    if is_collection(source):
        from .import_segments import find_segment_shards

        if source == collection.directory:
            raise CollectionError(f"{source} is the collection itself; import from another collection's folder")
        return find_segment_shards(source, collection.identity)
    theirs = exported_model(source)
    if theirs is not None:  # an `mmr export`: its model is known, so it is checked
        from .import_segments import refuse_another_model

        refuse_another_model(source, theirs, collection.identity)
    return find_shards(source)


def collection_model(source: Path) -> "ModelIdentity | None":
    """The model of the collection in ``source``; None when it is no collection or records none."""
    from ..models.specs import ModelIdentity
    from .catalog import CATALOG_NAME, Catalog

    if not is_collection(source):
        return None
    catalog = Catalog(source / CATALOG_NAME, writable=False)
    try:
        stored = catalog.get_meta("model_identity")
    finally:
        catalog.close()
    return None if stored is None else ModelIdentity.from_json(stored)


def exported_model(source: Path) -> "ModelIdentity | None":
    """The model an ``mmr export`` in ``source`` records (:data:`~.exports.MODEL_FILE`); None for other folders.

    Raises:
        CollectionError: the record cannot be read.
    """
    from ..models.specs import ModelIdentity

    if not (source / MODEL_FILE).is_file():
        return None
    try:
        return ModelIdentity.from_json((source / MODEL_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CollectionError(f"{source / MODEL_FILE} cannot be read ({exc}); it names the model of these "
                              "vectors") from exc
