"""The weak-match hint: a query's best score against what unrelated text scores in the same collection."""

from __future__ import annotations

import json

import pytest

from mmretrieval.collection.confidence import CACHE_NAME, NoiseBand, NoiseCalibration, assess


def _band(scores):
    return NoiseBand("model", 1, "digest", tuple(scores))


def test_assess_places_the_best_score_against_the_band():
    band = _band([0.50, 0.55, 0.60])  # median 0.55, spread 0.05
    assert assess(0.58, band).level == "weak" and "within the range" in assess(0.58, band).message
    assert assess(0.60, band).level == "weak"  # the band's top is still noise
    assert assess(0.65, band).level == "fair"
    assert assess(0.71, band).level == "clear"
    assert assess(None, band).level == "none"
    assert assess(0.65, band).to_dict()["noise_high"] == pytest.approx(0.60)


class _Counting:
    """A collection stand-in whose nearest-neighbour lookups are counted (the real one does the work)."""

    def __init__(self, collection):
        self._collection = collection
        self.lookups = 0

    def __getattr__(self, name):
        return getattr(self._collection, name)

    def _nearest(self, *args):
        self.lookups += 1
        return self._collection._nearest(*args)


def test_band_is_measured_once_cached_on_disk_and_measured_again_after_an_ingest(tmp_path, tiny_model_dir):
    from ui_support import write_scene_folder

    from mmretrieval.collection.collection import Collection

    write_scene_folder(tmp_path / "images", count=6)
    with Collection.open(tmp_path / "c", model=str(tiny_model_dir), create=True, device="cpu") as collection:
        collection.ingest([tmp_path / "images"], workers=0)
        counting = _Counting(collection)
        band = NoiseCalibration(counting, prompts=("qwxz", "tax law", "lentil soup")).band()
        assert counting.lookups == 3 and len(band.top_scores) == 3
        # each prompt's band entry is its real best score in the collection
        assert band.high == pytest.approx(max(collection.search(p, k=1)[0].score for p in ("qwxz", "tax law", "lentil soup")), abs=1e-5)
        cached = json.loads((tmp_path / "c" / CACHE_NAME).read_text())
        assert cached["generation"] == collection.catalog.generation and len(cached["top_scores"]) == 3

        again = _Counting(collection)
        assert NoiseCalibration(again, prompts=("qwxz", "tax law", "lentil soup")).band() == band
        assert again.lookups == 0  # read from the collection directory
        assert NoiseCalibration(again, prompts=("other", "set")).band().top_scores != band.top_scores
        assert again.lookups == 2  # another prompt set is measured, not mistaken for the cached one

        write_scene_folder(tmp_path / "more", count=2)
        collection.ingest([tmp_path / "more"], workers=0)
        after = _Counting(collection)
        assert NoiseCalibration(after, prompts=("qwxz", "tax law", "lentil soup")).band().generation > band.generation
        assert after.lookups == 3
