"""Query algebra: parsing weights and negatives, and the combined vector against a numpy reference."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mmretrieval.collection.collection import Collection
from mmretrieval.errors import QueryError
from mmretrieval.collection.query import Query, Term, parse_query, query_vector, split_weight
from test_ingest import write_good_images


def test_split_weight():
    assert split_weight("2:golden retriever") == (2.0, "golden retriever")
    assert split_weight("0.5: cat") == (0.5, "cat")
    assert split_weight("dog: a good boy") == (1.0, "dog: a good boy")
    assert split_weight("12:00 red circle") == (1.0, "12:00 red circle")  # a time, not weight 12 of "00 ..."
    assert split_weight("2: 5 apples") == (2.0, "5 apples")
    assert split_weight("-5:30 train") == (1.0, "-5:30 train")  # a time again
    with pytest.raises(QueryError, match="'-2:star' must be a positive number, as in '2:star'; a term to move "
                                         "away from is given with --not"):
        split_weight("-2:star")  # it was searched as the text "-2:star", in silence


def test_parse_query_mixes_texts_images_and_negatives(tmp_path):
    image = tmp_path / "pool.jpg"
    Image.new("RGB", (8, 8)).save(image)
    query = parse_query("2:golden retriever", images=[str(image)], negatives=["fruit", f"0.5:{image}"])
    assert query.positives == (Term(text="golden retriever", weight=2.0), Term(image=str(image)))
    assert query.negatives[0] == Term(text="fruit") and query.negatives[1].weight == 0.5
    assert query.negatives[1].image == str(image)


@pytest.mark.parametrize("bad", [
    lambda: parse_query(""), lambda: parse_query("0:cat"), lambda: Term(text="x", image="y.jpg"),
    lambda: Term(text="   "),
])
def test_bad_queries_raise_query_error(bad):
    with pytest.raises(QueryError):
        bad()


def test_query_vector_is_normalised_weighted_difference():
    rng = np.random.default_rng(0)
    table = {w: v / np.linalg.norm(v) for w, v in zip("abcd", rng.normal(size=(4, 8)))}
    query = Query(positives=(Term(text="a", weight=2.0), Term(image="b")), negatives=(Term(text="c", weight=0.5),))
    vector = query_vector(query, lambda texts: np.stack([table[t] for t in texts]), lambda ref: table[ref])
    expected = 2 * table["a"] + table["b"] - 0.5 * table["c"]
    np.testing.assert_allclose(vector, expected / np.linalg.norm(expected), atol=1e-6)
    with pytest.raises(QueryError, match="cancel"):
        query_vector(Query((Term(text="a"),), (Term(text="a"),)), lambda t: np.stack([table[x] for x in t]),
                     lambda ref: table[ref])


def test_collection_search_scores_are_exact_cosines(tmp_path, tiny_encoder):
    paths = write_good_images(tmp_path / "photos", 6)
    with Collection.open(tmp_path / "col", model=tiny_encoder, create=True) as col:
        col.ingest([tmp_path / "photos"], workers=0)
        query = parse_query("1:a red square", images=[str(paths[2])], negatives=["blue"])
        hits = col.search(query, k=6)
        texts = tiny_encoder.encode_texts(["a red square", "blue"])
        combined = texts[0] + col.vectors([col.catalog.id_of_path(paths[2])])[1][0] - texts[1]
        combined /= np.linalg.norm(combined)
        ids, vectors = col.vectors()  # as stored: scores are cosines with them at unit length
        vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        expected = sorted(zip((vectors @ combined).tolist(), ids.tolist()), reverse=True)
        assert [h.id for h in hits] == [i for _, i in expected]
        np.testing.assert_allclose([h.score for h in hits], [s for s, _ in expected], atol=1e-5)
        assert col.similar(str(paths[0]), k=10)[0].path != str(paths[0])  # the image itself is left out
        with pytest.raises(QueryError):
            col.similar(tmp_path / "missing.jpg")


def test_demo_model_finds_and_labels_colours(tmp_path, shapes_encoder):
    """Real retrieval quality with the bundled model: text search and collection labels agree with the scenes."""
    from mmretrieval.training.scenes import COLORS, generate

    folder = tmp_path / "scenes"
    folder.mkdir()
    scenes = {}
    for index in range(48):
        example = generate(11, index)
        example.image.save(folder / f"scene{index:02d}.png")
        scenes[str(folder / f"scene{index:02d}.png")] = example.scene
    with Collection.open(tmp_path / "col", model=shapes_encoder, create=True) as col:
        col.ingest([folder], workers=0)
        for colour in ("red", "blue"):
            hits = col.search(f"{colour} shapes", k=3)
            assert sum(scenes[h.path].color == colour for h in hits) >= 2, (colour, hits)
        col.label(list(COLORS), templates="none")
        assigned = {row[1]: row[2][0][0] for row in _labels_by_path(col)}
        accuracy = np.mean([assigned[path] == scene.color for path, scene in scenes.items()])
        assert accuracy >= 0.85, accuracy


def _labels_by_path(col):
    ids = col.catalog.vector_ids().tolist()
    rows = col.catalog.rows(ids)
    labels = col.label_of(ids)
    return [(i, rows[i].path, labels[i]) for i in ids]


@pytest.mark.parametrize("field", ["path_prefix", "label", "camera"])
def test_a_filter_that_is_not_text_is_a_query_error(field):
    from mmretrieval.collection.filters import Filters

    with pytest.raises(QueryError, match=f"{field} must be text, got 5 \\(int\\)"):
        Filters.of(**{field: 5})


def test_a_zero_zero_position_recorded_before_it_meant_no_fix_is_cleared_when_the_catalog_migrates(
        tmp_path, tiny_encoder):
    """Catalogs of schema 6 may hold GPS (0, 0), what a camera without a fix writes: migrating to 7 clears it, so
    --near and photos() see no place there, and a real place a few hundred metres away stays."""
    import sqlite3

    write_good_images(tmp_path / "photos", 2)
    with Collection.open(tmp_path / "col", model=tiny_encoder, create=True) as col:
        col.ingest([tmp_path / "photos"], workers=0)
        first, second = sorted(col.catalog.vector_ids().tolist())
    db = sqlite3.connect(tmp_path / "col" / "catalog.sqlite")  # as schema 6 recorded a GoPro without a fix
    for image_id, (lat, lon) in ((first, (0.0, 0.0)), (second, (0.001, 0.002))):
        db.execute("UPDATE photos SET latitude = ?, longitude = ? WHERE image_id = ?", (lat, lon, image_id))
    db.execute("UPDATE meta SET value = '6' WHERE key = 'schema'")
    db.commit()
    db.close()
    with Collection.open(tmp_path / "col") as col:
        photos = col.photos([first, second])
        assert (photos[first].latitude, photos[first].longitude) == (None, None)
        assert (photos[second].latitude, photos[second].longitude) == (0.001, 0.002)
        assert [hit.id for hit in col.search("a shape", k=5, near="0,0,1")] == [second]
