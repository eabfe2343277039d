"""The manifest of a collection's saved FAISS index (``index.json``): what the index file holds and for which model,
how to read it, and when it cannot serve a model.

:meth:`VectorIndex.save <mmretrieval.collection.index.VectorIndex.save>` writes it beside the index file; a reader
compares :func:`manifest_stamp` before each search to notice an index another process saved. Reading it needs no
FAISS.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .sizing import INDEX_TYPES, IndexConfig

logger = logging.getLogger(__name__)

MANIFEST_NAME = "index.json"
ManifestStamp = tuple[int, int, int]  # (inode, bytes, mtime in ns) of index.json: see manifest_stamp
METRIC = "inner_product"


@dataclass(frozen=True)
class Manifest:
    """What an index file holds; written next to it as ``index.json``."""

    model_key: str  # ModelIdentity.key() of the encoder that made the vectors
    dim: int  # vector dimension
    index_type: str  # flat | ivf | hnsw
    params: dict[str, int]  # IndexConfig.params()
    count: int  # vectors in the index
    generation: int  # catalog generation the index reflects
    file: str = ""  # the index file's name in the collection directory
    sha256: str = ""  # of the index file
    metric: str = METRIC
    model: dict[str, Any] = field(default_factory=dict)  # the full model identity, for people reading the file
    note: str = ""  # why the index is not the type asked for (e.g. too few vectors for IVF), for people
    recall: float = -1.0  # recall@10 measured on held-out queries when it was tuned (-1: not measured)
    memory_bytes: int = 0  # estimated resident memory of the index

    def config(self) -> IndexConfig:
        return IndexConfig(type=self.index_type, **self.params)


def manifest_stamp(directory: Path) -> ManifestStamp | None:
    """The saved manifest as one ``stat`` sees it (inode, size, modification time), or None when there is none.

    Every save replaces ``index.json`` by a rename (a new inode), so the stamp changes with each save; it costs no
    read, so a reader can compare it before every search to notice an index another process saved.
    """
    try:
        stat = (directory / MANIFEST_NAME).stat()
    except OSError:  # none yet (or a folder this process cannot look into: nothing it could load either)
        return None
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


def read_manifest(directory: Path) -> Manifest | None:
    """The manifest in ``directory``, or None if it is missing or unreadable."""
    path = directory / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        fields = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        logger.warning("unreadable index manifest %s: %s", path, exc)
        return None
    problem = _not_a_manifest(fields)
    if problem:
        logger.warning("unreadable index manifest %s: %s, so it is not one that mmr wrote", path, problem)
        return None
    return Manifest(**fields)


def _not_a_manifest(fields: object) -> str | None:
    """What keeps the JSON ``fields`` from being a manifest's: not an object, fields missing or unknown."""
    if not isinstance(fields, dict):
        return f"it holds a JSON {type(fields).__name__}, not an object"
    names = {f.name: f for f in dataclasses.fields(Manifest)}
    required = [name for name, f in names.items()
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [name for name in required if name not in fields]
    unknown = sorted(str(name) for name in fields if name not in names)
    if missing:
        return f"it lacks {', '.join(missing)}"
    if unknown:
        return f"it has fields an index manifest has not ({', '.join(unknown)})"
    return None


def manifest_problem(manifest: Manifest, model_key: str, dim: int) -> str | None:
    """Why a saved index cannot serve the model ``model_key`` of ``dim`` dimensions, or None when it can."""
    if manifest.model_key != model_key:
        return f"it was built from another model's vectors ({manifest.model_key}, expected {model_key})"
    if manifest.dim != dim or manifest.metric != METRIC or manifest.index_type not in INDEX_TYPES:
        return f"it is {manifest.dim}-d {manifest.index_type}/{manifest.metric}, expected {dim}-d {METRIC}"
    return None
