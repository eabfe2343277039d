"""The weak-match hint: how far a query's best score stands above its scores over the collection (its
contrast), against the contrasts unrelated text reaches in the same collection."""

from __future__ import annotations

import numpy as np
import pytest

from mmretrieval.collection.confidence import CACHE_NAME, NoiseBand, NoiseCalibration, ScoreMoments, assess


def _band(contrasts):
    moments = ScoreMoments(np.zeros(2), np.eye(2))
    return NoiseBand("model", 1, "digest", tuple(0.5 for _ in contrasts), tuple(contrasts), moments)


def test_assess_places_the_contrast_against_the_band():
    band = _band([1.0, 1.5, 2.0])  # median 1.5, spread 0.5
    weak = assess(0.45, 1.8, band)
    assert weak.level == "weak" and "no further than unrelated text" in weak.message
    assert assess(0.45, 2.0, band).level == "weak"  # the band's top is still noise
    assert assess(0.7, 2.5, band).level == "fair"
    assert assess(0.7, 3.1, band).level == "clear"
    judged = assess(0.65, 2.5, band).to_dict()
    assert judged["noise_high"] == pytest.approx(2.0) and judged["top_score"] == pytest.approx(0.65)
    assert "0.650" in judged["message"] and "2.5 standard deviations" in judged["message"]


def test_a_query_is_weak_only_within_unrelated_text_on_both_contrast_and_best_score():
    band = _band([1.0, 1.5, 2.0])  # unrelated prompts' best scores: 0.5 each
    # a query that fits many images widens its own spread: its contrast stays in the band, its best score does not
    above = assess(0.6, 1.8, band)
    assert above.level == "fair" and "above any unrelated text's" in above.message and "0.500" in above.message
    assert assess(0.5, 1.8, band).level == "weak" and "up to 0.500" in assess(0.5, 1.8, band).message
    assert assess(0.4, 2.5, band).level == "fair"  # beyond on the contrast alone, as before
    assert assess(0.4, 3.1, band).level == "clear"


def test_contrast_from_the_moments_is_the_standardised_best_score():
    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(500, 16)) + rng.normal(size=16)  # off-centre, as image vectors are
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    query = rng.normal(size=16)
    query /= np.linalg.norm(query)
    scores = vectors @ query
    expected = (scores.max() - scores.mean()) / scores.std()
    moments = ScoreMoments.of(vectors.astype(np.float32))
    assert moments.contrast(query, float(scores.max())) == pytest.approx(expected, rel=1e-5)


def test_text_close_to_every_image_reads_weaker_than_text_that_singles_images_out():
    # Images spread around a common direction; "generic" text points along it and scores high on all of them,
    # "specific" text points at a few images and scores lower at best: the best score alone ranks them the
    # wrong way round, the contrast the right way.
    rng = np.random.default_rng(0)
    common, specific = np.eye(32)[0], np.eye(32)[1]
    images = common + 0.25 * rng.normal(size=(400, 32))
    images[:5] += 0.9 * specific
    images /= np.linalg.norm(images, axis=1, keepdims=True)
    moments = ScoreMoments.of(images.astype(np.float32))
    generic_best, specific_best = (images @ common).max(), (images @ specific).max()
    assert generic_best > specific_best
    assert moments.contrast(specific, specific_best) > moments.contrast(common, generic_best) + 1


class _Counting:
    """A collection stand-in whose nearest-neighbour lookups are counted (the real one does the work)."""

    def __init__(self, collection):
        self._collection = collection
        self.lookups = 0

    def __getattr__(self, name):
        return getattr(self._collection, name)

    def nearest(self, *args, **kwargs):
        self.lookups += 1
        return self._collection.nearest(*args, **kwargs)


def test_band_is_measured_once_cached_on_disk_and_measured_again_after_an_ingest(tmp_path, tiny_model_dir):
    from ui_support import write_scene_folder

    from mmretrieval.collection.collection import Collection

    prompts = ("qwxz", "tax law", "lentil soup")
    write_scene_folder(tmp_path / "images", count=6)
    with Collection.open(tmp_path / "c", model=str(tiny_model_dir), create=True, device="cpu") as collection:
        collection.ingest([tmp_path / "images"], workers=0)
        (tmp_path / "c" / "confidence.json").write_text("{}")  # a cache from before contrasts
        counting = _Counting(collection)
        band = NoiseCalibration(counting, prompts=prompts).band()
        assert counting.lookups == 3 and len(band.top_scores) == len(band.contrasts) == 3
        # each prompt's entry is its real best score in the collection, and that score standardised over all
        # stored vectors (a collection this small is its own sample)
        _, stored = collection.vectors()
        by_text, by_vector = collection.search("tax law", k=3), collection.search(collection.query_vector("tax law"), k=3)
        assert [(h.id, h.score) for h in by_vector] == [(h.id, h.score) for h in by_text]  # the UI encodes once
        for prompt, best, contrast in zip(prompts, band.top_scores, band.contrasts):
            scores = stored @ collection.query_vector(prompt)
            assert best == pytest.approx(collection.search(prompt, k=1)[0].score, abs=1e-5)
            assert contrast == pytest.approx((best - scores.mean()) / scores.std(), abs=1e-3)
        assert (tmp_path / "c" / CACHE_NAME).is_file() and not (tmp_path / "c" / "confidence.json").exists()

        again = _Counting(collection)
        cached = NoiseCalibration(again, prompts=prompts).band()
        assert again.lookups == 0  # read from the collection directory
        assert cached.generation == band.generation
        assert (cached.top_scores, cached.contrasts) == (band.top_scores, band.contrasts)
        assert np.array_equal(cached.moments.covariance, band.moments.covariance)
        assert NoiseCalibration(again, prompts=("other", "set")).band().top_scores != band.top_scores
        assert again.lookups == 2  # another prompt set is measured, not mistaken for the cached one

        write_scene_folder(tmp_path / "more", count=2)
        collection.ingest([tmp_path / "more"], workers=0)
        after = _Counting(collection)
        assert NoiseCalibration(after, prompts=prompts).band().generation > band.generation
        assert after.lookups == 3


def test_an_unreadable_cache_is_measured_again_and_an_empty_collection_has_nothing_to_judge(tmp_path, tiny_model_dir):
    from ui_support import write_scene_folder

    from mmretrieval.collection.collection import Collection

    with Collection.open(tmp_path / "c", model=str(tiny_model_dir), create=True, device="cpu") as collection:
        nothing = NoiseCalibration(collection).assess(collection.query_vector("a red circle"), None)
        assert nothing.level == "none" and nothing.noise_high is None
        write_scene_folder(tmp_path / "few", count=4)
        collection.ingest([tmp_path / "few"], workers=0)
        few = NoiseCalibration(collection).assess(collection.query_vector("a red circle"), 0.3)
        assert few.level == "not calibrated" and "Too few images (4)" in few.message and few.contrast is None
        write_scene_folder(tmp_path / "images", count=8)
        collection.ingest([tmp_path / "images"], workers=0)
        (tmp_path / "c" / CACHE_NAME).write_bytes(b"not a zip file")
        counting = _Counting(collection)
        hit = collection.search("a red circle", k=1)[0]
        calibration = NoiseCalibration(counting, prompts=("qwxz", "tax law"))
        judged = calibration.assess(collection.query_vector("a red circle"), hit.score)
        assert counting.lookups == 2 and judged.level in ("weak", "fair", "clear") and judged.contrast is not None
