"""Zero-shot classification: prompt ensembles and both scoring rules, checked against numpy references."""

from __future__ import annotations

import os

import numpy as np
import pytest

from mmretrieval.training import scenes
from mmretrieval.errors import QueryError
from mmretrieval.models.label_text import parse_labels
from mmretrieval.models.prompt_templates import IMAGENET_TEMPLATES, load_templates
from mmretrieval.models.zeroshot import NULL_LABEL, ZeroShotClassifier, predict

LABELS = ["red circle", "blue square", "green triangle"]
TEMPLATES = ("a photo of a {}.", "a drawing of a {}.", "{}")


def _images(encoder, n=5):
    return encoder.encode_images([scenes.generate(11, i).image for i in range(n)])


def test_prompt_ensemble_is_the_renormalised_mean_of_template_embeddings(tiny_encoder):
    classifier = ZeroShotClassifier.build(tiny_encoder, LABELS, TEMPLATES)
    for row, label in zip(classifier.embeddings, LABELS):
        per_template = tiny_encoder.encode_texts([t.format(label) for t in TEMPLATES])
        mean = per_template.mean(axis=0)
        np.testing.assert_allclose(row, mean / np.linalg.norm(mean), atol=1e-6)


def test_clip_style_scores_are_a_softmax_over_scaled_cosines(tiny_encoder):
    classifier = ZeroShotClassifier.build(tiny_encoder, LABELS, TEMPLATES)
    images = _images(tiny_encoder)
    logits = tiny_encoder.logit_scale * (images.astype(np.float64) @ classifier.embeddings.T)
    expected = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    probabilities = classifier.probabilities(images)
    np.testing.assert_allclose(probabilities, expected, rtol=1e-5)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    assert not classifier.is_sigmoid


def test_clip_style_multi_label_scores_each_label_against_a_neutral_prompt(tiny_encoder):
    classifier = ZeroShotClassifier.build(tiny_encoder, LABELS, TEMPLATES)
    images = _images(tiny_encoder)
    null = tiny_encoder.encode_texts([t.format(NULL_LABEL) for t in TEMPLATES]).mean(axis=0)
    null /= np.linalg.norm(null)
    difference = images @ classifier.embeddings.T - (images @ null)[:, None]
    expected = 1 / (1 + np.exp(-tiny_encoder.logit_scale * difference))
    np.testing.assert_allclose(classifier.probabilities(images, multi_label=True), expected, rtol=1e-4)


def test_siglip_scale_above_100_is_not_clamped(tiny_siglip_dir, tmp_path):
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    from mmretrieval.models.encoder import load_encoder

    directory = shutil.copytree(tiny_siglip_dir, tmp_path / "siglip")
    weights = load_file(str(directory / "open_clip_model.safetensors"))
    weights["logit_scale"] = torch.tensor(float(np.log(117.33))).reshape(weights["logit_scale"].shape)
    save_file(weights, str(directory / "open_clip_model.safetensors"))
    encoder = load_encoder(str(directory), device="cpu")
    assert encoder.logit_scale == pytest.approx(117.33, rel=1e-4)  # as SigLIP checkpoints learn it
    classifier = ZeroShotClassifier.build(encoder, LABELS, TEMPLATES)
    images = _images(encoder)
    expected = 1 / (1 + np.exp(-(117.33 * (images @ classifier.embeddings.T) + encoder.logit_bias)))
    np.testing.assert_allclose(classifier.probabilities(images), expected, rtol=1e-3)


def test_siglip_style_scores_are_independent_sigmoids_with_the_bias(tiny_siglip_encoder):
    assert tiny_siglip_encoder.is_sigmoid and tiny_siglip_encoder.logit_bias == pytest.approx(-10.0)
    classifier = ZeroShotClassifier.build(tiny_siglip_encoder, LABELS, TEMPLATES)
    images = _images(tiny_siglip_encoder)
    logits = tiny_siglip_encoder.logit_scale * (images @ classifier.embeddings.T) + tiny_siglip_encoder.logit_bias
    expected = 1 / (1 + np.exp(-logits))
    for multi_label in (False, True):  # SigLIP's probabilities are independent either way
        np.testing.assert_allclose(classifier.probabilities(images, multi_label=multi_label), expected, rtol=1e-4)
    # Unlike a softmax, the rows need not sum to one: with a -10 bias they sum to far less.
    assert np.all(classifier.probabilities(images).sum(axis=1) < 0.5)


def test_predict_single_and_multi_label():
    probabilities = np.array([[0.1, 0.7, 0.2], [0.6, 0.55, 0.9]], dtype=np.float32)
    single = predict(probabilities, LABELS)
    assert [[p.label for p in row] for row in single] == [["blue square"], ["green triangle"]]
    top2 = predict(probabilities, LABELS, top_k=2)
    assert [p.label for p in top2[1]] == ["green triangle", "red circle"]
    multi = predict(probabilities, LABELS, multi_label=True, threshold=0.58)
    assert [[p.label for p in row] for row in multi] == [["blue square"], ["green triangle", "red circle"]]
    assert predict(probabilities, LABELS, multi_label=True, threshold=0.95) == [[], []]


def test_parse_labels_from_text_and_files(tmp_path):
    assert parse_labels("cat, dog,,car") == ["cat", "dog", "car"]
    assert parse_labels(["cat\ndog", "dog,bird"]) == ["cat", "dog", "bird"]
    # Several lines are one label a line, as in a file: a pasted class list keeps "tench, Tinca tinca" whole.
    pasted = "# ImageNet\ntench, Tinca tinca\ngoldfish, Carassius auratus\n\n"
    expected = ["tench, Tinca tinca", "goldfish, Carassius auratus"]
    assert parse_labels(pasted) == parse_labels(pasted, read_files=False) == expected
    with pytest.raises(QueryError, match="cannot start with '@' here"):
        parse_labels("cat\n@/etc/passwd", read_files=False)
    assert parse_labels("#sunset\n#beach\n# a comment", read_files=False) == ["#sunset", "#beach"]  # hashtags
    with pytest.warns(UserWarning, match=r"kept 'circle, square' as one label: over several lines each line is one"):
        assert parse_labels("circle, square\nheart", read_files=False) == ["circle, square", "heart"]
    label_file = tmp_path / "labels.txt"
    label_file.write_text("golden retriever\npoodle\n\n")
    assert parse_labels(["@" + str(label_file), "cat"]) == ["golden retriever", "poodle", "cat"]
    with pytest.raises(QueryError, match="no labels"):
        parse_labels(" , ")
    with pytest.raises(QueryError, match="cannot read"):
        parse_labels("@" + str(tmp_path / "missing.txt"))


def test_templates_builtin_and_from_file(tmp_path):
    assert load_templates("default") == ("a photo of a {}.",)
    assert len(load_templates("imagenet")) == 80 == len(set(IMAGENET_TEMPLATES))
    template_file = tmp_path / "t.txt"
    template_file.write_text("# mine\na sketch of {}\nan icon of a {}\n")
    assert load_templates(str(template_file)) == ("a sketch of {}", "an icon of a {}")
    template_file.write_text("no placeholder here\n")
    with pytest.raises(QueryError, match="exactly one"):
        load_templates(str(template_file))
    with pytest.raises(QueryError, match="unknown template set"):
        load_templates("nonexistent-set")
    with pytest.raises(QueryError, match="no template file 'nonexist.txt'"):  # not "unknown template set"
        load_templates("nonexist.txt")
    with pytest.raises(QueryError, match="name a folder"):
        load_templates(str(tmp_path))
    template_file.write_text("a {} of {kind}\n")  # str.format would fail on it mid-way
    with pytest.raises(QueryError, match="no other braces"):
        load_templates(str(template_file))
    for bad in ("a {0} of {}", "a {!r}", "a {:>9}", "a {} {", "a {} and {}"):
        template_file.write_text(bad + "\n")
        with pytest.raises(QueryError, match="no other braces"):
            load_templates(str(template_file))
    template_file.write_text("a {{logo}} of a {}\n")  # doubled braces are literal ones, as in str.format
    assert [t.format("cat") for t in load_templates(str(template_file))] == ["a {logo} of a cat"]


def test_the_python_api_takes_one_string_as_one_thing_not_its_letters(tiny_encoder, tmp_path):
    from mmretrieval.ingest.files import embed_files
    from test_ingest import write_good_images

    listed = ZeroShotClassifier.build(tiny_encoder, ["red", "blue"], ["a photo of a {}."])
    one = ZeroShotClassifier.build(tiny_encoder, "red, blue", "a photo of a {}.")  # labels as typed, one template
    named = ZeroShotClassifier.build(tiny_encoder, "red,blue", "default")  # a template set's name
    assert one.labels == named.labels == ("red", "blue")
    np.testing.assert_allclose(one.embeddings, listed.embeddings, atol=1e-6)
    np.testing.assert_allclose(named.embeddings, listed.embeddings, atol=1e-6)
    for bad in ("a photo of a {.", ["a photo", "a {} of {x}"]):
        with pytest.raises(QueryError, match="exactly one"):
            ZeroShotClassifier.build(tiny_encoder, "red,blue", bad)
    write_good_images(tmp_path / "pics", 2)
    for folder in (str(tmp_path / "pics"), os.fsencode(tmp_path / "pics")):  # a folder, not p, i, c, s
        batches = list(embed_files(tiny_encoder, folder, workers=0))
        assert sum(len(b.paths) for b in batches) == 2 and not any(b.failed for b in batches)


def test_labelling_a_collection_with_one_softmax_label_is_refused(tmp_path, tiny_encoder):
    """One label in a softmax gets probability 1.0 on every image: mmr label refuses it, as classify does, and
    takes it with multi_label (scored against the neutral prompt)."""
    from mmretrieval.collection.collection import Collection
    from test_ingest import write_good_images

    write_good_images(tmp_path / "photos", 3)
    with Collection.open(tmp_path / "col", model=tiny_encoder, create=True) as col:
        col.ingest([tmp_path / "photos"], workers=0)
        with pytest.raises(QueryError, match="pass --multi-label"):
            col.label("red")
        assert col.label_sets() == []  # nothing written
        assert col.label("red", multi_label=True, threshold=0.0).counts == {"red": 3}


def test_a_large_vocabulary_is_embedded_in_chunks_with_progress_and_the_same_vectors(tiny_encoder, monkeypatch):
    from mmretrieval.models import zeroshot

    labels = [f"class {n}" for n in range(23)]
    whole = zeroshot.ZeroShotClassifier.build(tiny_encoder, labels, ("a {}.", "a photo of a {}."))
    monkeypatch.setattr(zeroshot, "CLASSES_PER_CHUNK", 5)
    reported: list[tuple[int, int]] = []
    chunked = zeroshot.ZeroShotClassifier.build(tiny_encoder, labels, ("a {}.", "a photo of a {}."),
                                                progress=lambda done, total: reported.append((done, total)))
    assert reported == [(0, 23), (5, 23), (10, 23), (15, 23), (20, 23), (23, 23)]
    np.testing.assert_allclose(chunked.embeddings, whole.embeddings, atol=1e-5)
    silent: list[tuple[int, int]] = []  # one chunk: nothing to report
    zeroshot.ZeroShotClassifier.build(tiny_encoder, labels[:5], "a {}.", progress=lambda *a: silent.append(a))
    assert silent == []


def test_mmr_label_shows_progress_while_a_large_vocabulary_is_embedded(tmp_path, tiny_model_dir, capsys, monkeypatch):
    from mmretrieval.cli import main
    from mmretrieval.models import zeroshot
    from test_ingest import write_good_images

    monkeypatch.setattr(zeroshot, "CLASSES_PER_CHUNK", 4)
    write_good_images(tmp_path / "photos", 2)
    collection = str(tmp_path / "col")
    assert main(["ingest", str(tmp_path / "photos"), "--collection", collection, "--model", str(tiny_model_dir),
                 "--device", "cpu", "--workers", "0"]) == 0
    (tmp_path / "labels.txt").write_text("\n".join(f"class {n}" for n in range(10)))
    capsys.readouterr()
    assert main(["label", "--collection", collection, "--labels", f"@{tmp_path / 'labels.txt'}", "--device", "cpu"]) == 0
    assert "labels: 10/10 label (100%)" in capsys.readouterr().err
