"""Collections: the SQLite catalog, the FAISS index and its upkeep, queries and labels.

``Collection`` and its records are imported lazily so that ``mmretrieval.collection.catalog`` (used by the
ingest workers and cheap commands) does not pull in torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_PUBLIC = {
    "Collection": "mmretrieval.collection.collection",
    "CollectionInfo": "mmretrieval.collection.records",
    "Failure": "mmretrieval.collection.records",
    "Hit": "mmretrieval.collection.records",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'mmretrieval.collection' has no attribute {name!r}")
