"""mmretrieval: multimodal image-text retrieval over open_clip dual encoders and FAISS.

The public API, imported lazily so that ``import mmretrieval`` stays cheap::

    from mmretrieval import load_encoder, ZeroShotClassifier, Collection
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_PUBLIC = {
    "load_encoder": "mmretrieval.encoders",
    "DualEncoder": "mmretrieval.encoders",
    "ModelSpec": "mmretrieval.models",
    "ModelIdentity": "mmretrieval.models",
    "ZeroShotClassifier": "mmretrieval.labels",
    "decode_image": "mmretrieval.images",
    "Collection": "mmretrieval.collection",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'mmretrieval' has no attribute {name!r}")
