"""A model that goes wrong on purpose, for tests of what ingestion keeps when it does."""

from __future__ import annotations

import numpy as np
import pytest


def nan_at_row(monkeypatch: pytest.MonkeyPatch, row: int) -> None:
    """Make every model call give row ``row`` of its vectors as NaN (as a model whose numbers overflow would)."""
    from mmretrieval.models.encoder import DualEncoder

    encode = DualEncoder.encode_prepared

    def with_nan(self, pixels):
        vectors = encode(self, pixels)
        vectors[row] = np.nan
        return vectors

    monkeypatch.setattr(DualEncoder, "encode_prepared", with_nan)
