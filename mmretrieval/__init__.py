"""mmretrieval: multimodal image-text retrieval over open_clip dual encoders and FAISS.

The public API, imported lazily so that ``import mmretrieval`` stays cheap::

    from mmretrieval import load_encoder, ZeroShotClassifier, Collection
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_PUBLIC = {
    "load_encoder": "mmretrieval.models.encoder",
    "DualEncoder": "mmretrieval.models.encoder",
    "ModelSpec": "mmretrieval.models.specs",
    "ModelIdentity": "mmretrieval.models.specs",
    "ZeroShotClassifier": "mmretrieval.models.zeroshot",
    "decode_image": "mmretrieval.images.decode",
    "Collection": "mmretrieval.collection.collection",
    "Query": "mmretrieval.collection.query",
    "Term": "mmretrieval.collection.query",
    "parse_query": "mmretrieval.collection.query",
    "embed_files": "mmretrieval.ingest.files",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'mmretrieval' has no attribute {name!r}")


def __dir__() -> list[str]:  # the public names too (tab completion, help()), though they load on first use
    return sorted({*globals(), *__all__})
