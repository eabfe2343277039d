"""Evaluation metrics against brute-force references, and the reports on user-style data sets."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmretrieval.training import scenes
from mmretrieval.errors import MMRError
from mmretrieval.training.evaluate import captions_report, folder_report
from mmretrieval.training.metrics import attribute_match_at_5, classification_scores, text_to_image_recall


def _unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def test_recall_at_k_matches_a_brute_force_reference():
    rng = np.random.default_rng(0)
    images, texts = _unit(rng.normal(size=(50, 8))), _unit(rng.normal(size=(80, 8)))
    owners = rng.integers(0, 50, size=80)
    result = text_to_image_recall(images, texts, owners, ks=(1, 5, 10))
    for k in (1, 5, 10):
        expected = np.mean([owners[t] in np.argsort(-(images @ texts[t]))[:k] for t in range(80)])
        assert result[f"recall@{k}"] == pytest.approx(expected)


def test_recall_at_k_ranks_exact_copies_in_a_random_order():
    """12 copies of one image under 12 captions scored recall@1 = 1.0: each copy tied with its caption's own
    counted as a hit (a fine-tune walkthrough). A reference: the mean over many random orders of the ties."""
    rng = np.random.default_rng(2)
    images = _unit(np.vstack([np.repeat(rng.normal(size=(1, 8)), 12, axis=0), rng.normal(size=(6, 8))]))
    texts = _unit(images[[0] * 12 + list(range(12, 18))] + 0.01 * rng.normal(size=(18, 8)))
    owners = np.arange(18)
    result = text_to_image_recall(images, texts, owners, ks=(1, 5, 10))
    similarities = texts @ images.T
    for k in (1, 5, 10):
        hits = [owners[t] in np.argsort(-similarities[t] + 1e-9 * rng.random(18) * (similarities[t] ==
                similarities[t, owners[t]]), kind="stable")[:k] for _ in range(400) for t in range(18)]
        assert result[f"recall@{k}"] == pytest.approx(np.mean(hits), abs=0.03)
    assert result["recall@1"] == pytest.approx((12 / 12 + 6) / 18)  # each copy's caption: 1/12 of a hit
    diverged = text_to_image_recall(np.full_like(images, np.nan), texts, owners, ks=(1, 5))  # NaN vectors: misses
    assert diverged == {"recall@1": 0.0, "recall@5": 0.0}


def test_classification_scores_match_a_reference():
    rng = np.random.default_rng(1)
    classes, images = _unit(rng.normal(size=(4, 6))), _unit(rng.normal(size=(60, 6)))
    targets = rng.integers(0, 4, size=60)
    predicted = np.argmax(images @ classes.T, axis=1)
    result = classification_scores(images, classes, targets)
    assert result["top1"] == pytest.approx(np.mean(predicted == targets))
    per_class = [np.mean(predicted[targets == c] == c) for c in range(4)]
    assert result["mean_per_class_recall"] == pytest.approx(np.mean(per_class))


def test_attribute_match_counts_against_each_captions_ceiling():
    truth = [scenes.Scene("red", "circle", 1, "small", "plain", "center")] * 2 + \
            [scenes.Scene("blue", "star", 2, "large", "dots", None)] * 6
    facts = [scenes.CaptionFacts("red", "circle", 1, None, None, None), scenes.CaptionFacts("blue", None, None, None, None, None)]
    similarities = np.array([np.linspace(1, 0, 8), np.linspace(0, 1, 8)])  # perfect rankings for both
    result = attribute_match_at_5(similarities, facts, truth)
    assert result["attribute_match@5"] == 1.0
    assert result["attribute_match@5_raw"] == pytest.approx((2 / 5 + 1) / 2)
    assert result["attribute_match@5_ceiling"] == pytest.approx((2 / 5 + 1) / 2)
    worst = attribute_match_at_5(-similarities, facts, truth)
    assert worst["attribute_match@5"] == pytest.approx((0 + 3 / 5) / 2)


@pytest.fixture(scope="module")
def colour_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("colours")
    wanted = {"red": 6, "blue": 6, "yellow": 6}
    index = 0
    while any(wanted.values()):
        example = scenes.generate(77, index)
        index += 1
        if wanted.get(example.scene.color, 0):
            wanted[example.scene.color] -= 1
            folder = root / example.scene.color
            folder.mkdir(exist_ok=True)
            example.image.save(folder / f"{index}.png")
            example.image.save(root / f"{index}.png")
            (root / f"{index}.txt").write_text(example.caption + "\n")
    return root


def test_folder_report_on_an_image_folder(shapes_encoder, colour_folder):
    report = folder_report(shapes_encoder, str(colour_folder), templates=("a photo of a {} shape.",))
    assert report["images"] == 18 and report["classes"] == 3
    assert report["top1"] >= 0.9 and report["mean_per_class_recall"] >= 0.9


def test_folder_report_leaves_out_and_counts_undecodable_images(shapes_encoder, colour_folder, tmp_path):
    import shutil

    root = tmp_path / "colours"
    shutil.copytree(colour_folder, root)
    (root / "red" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    report = folder_report(shapes_encoder, str(root), templates=("a photo of a {} shape.",))
    assert report["images"] == 18 and report["undecodable"] == 1 and report["top1"] >= 0.9


def test_captions_report_from_sidecars_and_csv(shapes_encoder, colour_folder, tmp_path):
    sidecars = captions_report(shapes_encoder, str(colour_folder))
    assert sidecars["images"] == sidecars["captions"] == 18
    assert 0 <= sidecars["recall@1"] <= sidecars["recall@5"] <= sidecars["recall@10"] <= 1
    csv_file = tmp_path / "set.csv"
    rows = [f"{p},{p.with_suffix('.txt').read_text().strip()}" for p in sorted(colour_folder.glob("*.png"))]
    csv_file.write_text("image,text\n" + "\n".join(rows) + "\n")
    assert captions_report(shapes_encoder, str(csv_file)) == sidecars


def test_bad_evaluation_sets(shapes_encoder, tmp_path):
    with pytest.raises(MMRError, match="does not exist"):
        folder_report(shapes_encoder, str(tmp_path / "missing"))
    with pytest.raises(MMRError, match="has no class subfolders; zero-shot accuracy needs two"):
        folder_report(shapes_encoder, str(tmp_path))
    (tmp_path / "red").mkdir()
    scenes.render(scenes.Scene("red", "circle", 1, "large", "plain", "center"), random.Random(0)).save(
        tmp_path / "red" / "a.png")
    (tmp_path / ".cache").mkdir()
    with pytest.raises(MMRError, match=r"has 1 class subfolder \(red\); .* directly in ROOT are not used"):
        folder_report(shapes_encoder, str(tmp_path))  # one class: every guess would be right
    (tmp_path / "blue").mkdir()  # a class without images is still a label to be mistaken for
    report = folder_report(shapes_encoder, str(tmp_path), templates=("a photo of a {} shape.",))
    assert report["classes"] == 2 and report["images"] == 1
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("file_name,label\nx.png,cat\n")
    with pytest.raises(MMRError, match="need a path column"):
        captions_report(shapes_encoder, str(bad_csv))


def test_a_csv_that_is_not_utf8_reads_as_ingest_lists_read(tmp_path):
    """train and eval refused a CSV with one Latin-1 byte that classify and ingest read (a fine-tune walkthrough):
    now a path keeps its bytes and a caption's undecodable byte becomes U+FFFD, as in ingest's lists."""
    import os

    from mmretrieval.training.datasets import read_captioned

    (tmp_path / os.fsdecode(b"caf\xe9.png")).write_bytes(b"image bytes")
    latin1 = tmp_path / "latin1.csv"
    latin1.write_bytes(b"path,caption\ncaf\xe9.png,un caf\xe9 rouge\n")
    [item] = read_captioned(latin1)
    assert os.fsencode(item.path) == os.fsencode(tmp_path) + b"/caf\xe9.png" and item.path.is_file()
    assert item.captions == ("un caf\ufffd rouge",)


def test_one_image_under_several_paths_is_one_image_and_uncaptioned_images_are_named(tmp_path):
    """A file named by a relative and an absolute path counted as two images (so the two could fall on both sides
    of a training run's held-out split), and images without a caption were dropped without a word (a fine-tune
    walkthrough)."""
    from mmretrieval.training.datasets import read_captioned

    (tmp_path / "set").mkdir()
    for name in ("a.png", "b.png", "c.png"):
        Image.new("RGB", (8, 8)).save(tmp_path / "set" / name)
    (tmp_path / "set" / "a.txt").write_text("a red thing\n")
    (tmp_path / "set" / "b.txt").write_text("\n  \n")
    listed = tmp_path / "set" / "pairs.csv"
    listed.write_text(f"path,caption\na.png,first\n./a.png,second\n{tmp_path}/set/a.png,third\nb.png,\n"
                      "./c.png,\nc.png,a cat\n")
    left_out = []
    items = {x.path: x.captions for x in read_captioned(listed, on_skipped=left_out.append)}
    assert items == {tmp_path / "set" / "a.png": ("first", "second", "third"), tmp_path / "set" / "c.png": ("a cat",)}
    assert [(s.path, s.reason) for s in left_out] == [(str(tmp_path / "set" / "b.png"), "no_caption")]
    left_out.clear()
    assert [x.path.name for x in read_captioned(tmp_path / "set", on_skipped=left_out.append)] == ["a.png"]
    assert sorted((Path(s.path).name, s.message.split(": ")[-1]) for s in left_out) == [
        ("b.png", "b.txt is blank"), ("c.png", "no c.txt beside it")]


def test_drawn_apart_covers_every_shape_and_colour_in_that_colour():
    from mmretrieval.training.drawn_shapes import APART_COLORS, drawn_apart

    items = drawn_apart(per_pair=1, size=64)
    assert {(color, shape) for _, color, shape in items} == {(c, s) for c in APART_COLORS for s in scenes.SHAPES}
    for image, color, shape in items:  # the shape's inside is its colour, exactly (edges are blended)
        pixels = np.asarray(image).reshape(-1, 3).astype(int)
        inside = np.abs(pixels - APART_COLORS[color]).max(axis=1) <= 1
        assert inside.mean() >= 0.03, (color, shape)


def test_position_match_beats_chance_with_the_demo_model(shapes_encoder):
    from mmretrieval.training.shapes_eval import position_scores

    scores = position_scores(shapes_encoder, seed=5, n_scenes=150, n_queries=60)
    assert 0.3 < scores["position_match@5"] <= 1.0  # five positions: 0.2 by chance
    # each query's own scene is among those of its colour and shape: chance is above a fifth, and below 1
    assert 0.2 < scores["position_top1_same_object_chance"] < 1.0
    assert scores["position_top1_same_object_chance"] < scores["position_top1_same_object"] <= 1.0


def _red_circle(path):
    scenes.render(scenes.Scene("red", "circle", 1, "large", "plain", "center"), random.Random(0)).save(path)
    return path


def test_a_csv_row_with_a_caption_and_no_path_is_refused_naming_its_line(shapes_encoder, tmp_path):
    from mmretrieval.training.datasets import read_captioned

    _red_circle(tmp_path / "red.png")
    csv_file = tmp_path / "e.csv"
    csv_file.write_text("path,caption\nred.png,a red circle\n,orphan\n")
    with pytest.raises(MMRError, match=r"e\.csv, line 3: the path cell is empty \(caption 'orphan'\)"):
        captions_report(shapes_encoder, str(csv_file))  # it was the CSV's own folder: IsADirectoryError
    csv_file.write_text("path,caption\nred.png,a red circle\n,\n  ,  \nred.png,\n")  # blank rows: nothing to refuse
    assert read_captioned(csv_file) == [read_captioned(csv_file)[0]]
    assert read_captioned(csv_file)[0].captions == ("a red circle",)


def test_a_folder_named_as_an_image_is_counted_as_undecodable(shapes_encoder, tmp_path):
    _red_circle(tmp_path / "red.png")
    (tmp_path / "sub").mkdir()
    csv_file = tmp_path / "set.csv"
    csv_file.write_text("path,caption\nred.png,a red circle\nsub,a folder\ngone.png,a missing file\n")
    report = captions_report(shapes_encoder, str(csv_file))
    assert report["images"] == 1 and report["undecodable"] == 2 and report["captions"] == 1


def test_captioned_sets_saved_with_a_byte_order_mark_read_as_without(tmp_path):
    from mmretrieval.training.datasets import read_captioned

    _red_circle(tmp_path / "red.png")
    plain, marked = tmp_path / "plain.csv", tmp_path / "bom.csv"
    plain.write_text("path,caption\nred.png,a red circle\n", encoding="utf-8")
    marked.write_text("path,caption\nred.png,a red circle\n", encoding="utf-8-sig")  # as Excel saves CSV UTF-8
    assert marked.read_bytes().startswith(b"\xef\xbb\xbf")
    assert read_captioned(marked) == read_captioned(plain)
    (tmp_path / "red.txt").write_text("a red circle\n", encoding="utf-8-sig")  # a sidecar from the same editor
    assert [item.captions for item in read_captioned(tmp_path)] == [("a red circle",)]


def test_a_file_given_as_a_labelled_folder_is_called_a_file(shapes_encoder, tmp_path):
    csv_file = tmp_path / "captions.csv"
    csv_file.write_text("path,caption\n")
    with pytest.raises(MMRError, match=r"captions\.csv is a file, not a labelled folder .* goes to --captions"):
        folder_report(shapes_encoder, str(csv_file))


def test_captioned_recall_keeps_vectors_not_decoded_images(tiny_encoder, tmp_path, monkeypatch):
    """Each image is decoded, prepared and embedded a batch at a time: a big photo decodes to tens of MB, so a
    set of them held at once ran out of memory. Checked by counting decoded images still alive at each model call,
    and against a reference that embeds every image at once."""
    import weakref

    import mmretrieval.training.evaluate as evaluate
    from mmretrieval.training.datasets import CaptionedImage

    items = []
    for i in range(9):
        example = scenes.generate(3, i)
        example.image.save(tmp_path / f"{i}.png")
        items.append(CaptionedImage(tmp_path / f"{i}.png", (example.caption, scenes.full_caption(example.scene))))
    items.insert(4, CaptionedImage(tmp_path / "gone.png", ("a missing image",)))
    decoded, alive_at_calls = [], []
    real_decode, real_encode = evaluate.decode_image, tiny_encoder.encode_prepared

    def decode_image(*args, **kwargs):
        result = real_decode(*args, **kwargs)
        decoded.append(weakref.ref(result.image))
        return result

    def encode_prepared(batch):
        alive_at_calls.append(sum(ref() is not None for ref in decoded))
        return real_encode(batch)

    monkeypatch.setattr(evaluate, "decode_image", decode_image)
    monkeypatch.setattr(tiny_encoder, "encode_prepared", encode_prepared)
    report = evaluate.captioned_recall(tiny_encoder, items, batch_size=4)
    monkeypatch.undo()
    assert len(alive_at_calls) == 3 and max(alive_at_calls) <= 1  # 9 images: batches of 4, 4, 1
    kept = [item for item in items if item.path.name != "gone.png"]
    reference = text_to_image_recall(tiny_encoder.encode_images([item.path for item in kept]),
                                     tiny_encoder.encode_texts([c for item in kept for c in item.captions]),
                                     [i for i, item in enumerate(kept) for _ in item.captions])
    assert report == {"images": 9, "captions": 18, "undecodable": 1, **reference}


def test_folder_and_captions_reports_count_their_images_as_they_go(shapes_encoder, colour_folder, tmp_path):
    """`mmr eval --folder/--captions` draw a bar from these: every image counted once, the undecodable too."""
    import shutil

    root = tmp_path / "colours"
    shutil.copytree(colour_folder, root)
    (root / "red" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    folder_seen: list[tuple[int, int]] = []
    folder_report(shapes_encoder, str(root), templates=("a {} shape.",), progress=lambda *r: folder_seen.append(r))
    assert folder_seen[-1] == (19, 19)
    assert [done for done, _ in folder_seen] == sorted(done for done, _ in folder_seen)
    captions_seen: list[tuple[int, int]] = []
    from mmretrieval.training.evaluate import captioned_recall
    from mmretrieval.training.datasets import read_captioned

    captioned_recall(shapes_encoder, read_captioned(str(colour_folder)), batch_size=4,
                     progress=lambda *r: captions_seen.append(r))
    assert captions_seen == [(4, 18), (8, 18), (12, 18), (16, 18), (18, 18)]


def test_cli_eval_folder_shows_progress_on_stderr(colour_folder, capsys):
    from mmretrieval.cli import main

    assert main(["eval", "--folder", str(colour_folder), "--device", "cpu", "--json"]) == 0
    out, err = capsys.readouterr()
    assert "eval --folder: 18/18 img" in err and '"zeroshot_images": 18' in out
