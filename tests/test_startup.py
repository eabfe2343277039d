"""Fast commands: a command loads only what it uses (no model for an unchanged ingest or a stored-vector
query, only the text tower for a text search, no training code or Ray for `mmr search`)."""

from __future__ import annotations

import pytest

import mmretrieval.collection.collection as collection_module
from mmretrieval.collection.collection import Collection
from test_ingest import write_good_images


@pytest.fixture()
def built(tmp_path, tiny_model_dir):
    photos = tmp_path / "photos"
    write_good_images(photos, 5)
    with Collection.open(tmp_path / "col", model=str(tiny_model_dir), create=True, device="cpu") as col:
        col.ingest([photos], workers=0)
    return tmp_path / "col", photos


def _count_model_loads(monkeypatch) -> list[str]:
    loads: list[str] = []
    real = collection_module.load_encoder

    def counting(spec, **kwargs):
        loads.append(str(spec))
        return real(spec, **kwargs)

    monkeypatch.setattr(collection_module, "load_encoder", counting)
    return loads


def test_an_unchanged_ingest_never_loads_the_model(built, monkeypatch):
    directory, photos = built
    loads = _count_model_loads(monkeypatch)
    with Collection.open(directory, device="cpu") as col:
        summary = col.ingest([photos], workers=0)
    assert (summary.embedded, summary.unchanged) == (0, 5)
    assert loads == []
    write_good_images(photos / "more", 1, seed=3)  # something new: now the model is needed, once
    with Collection.open(directory, device="cpu") as col:
        summary = col.ingest([photos], workers=0)
    assert summary.embedded == 1 and len(loads) == 1


def test_similar_to_a_stored_image_needs_no_model(built, monkeypatch):
    directory, photos = built
    loads = _count_model_loads(monkeypatch)
    with Collection.open(directory, device="cpu") as col:
        by_path = col.similar(str(photos / "good00.jpg"), k=2)
        by_id = col.similar(by_path[0].id, k=2)
    assert len(by_path) == 2 and len(by_id) == 2
    assert loads == []
