"""What the Python API's model functions are handed: single items, batch sizes, label lists, PIL images with EXIF
orientation or no pixels, bad devices and precisions, and the logging setup of the application that loads a model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from mmretrieval.errors import ModelSpecError, QueryError
from mmretrieval.models import encoder as encoder_module
from mmretrieval.models import settings as settings_module
from mmretrieval.models.encoder import load_encoder
from mmretrieval.models.label_text import parse_labels
from mmretrieval.models.zeroshot import ZeroShotClassifier

_ORIENTATION = 0x0112


# -- single items and batch sizes -----------------------------------------------------------------------------
def test_one_text_alone_is_one_text_not_its_letters(tiny_encoder):
    one = tiny_encoder.encode_texts("red circle")
    assert one.shape == (1, tiny_encoder.dim)
    np.testing.assert_allclose(one, tiny_encoder.encode_texts(["red circle"]), atol=1e-6)
    from_generator = tiny_encoder.encode_texts(text for text in ["red circle", "blue square"])
    np.testing.assert_allclose(from_generator, tiny_encoder.encode_texts(["red circle", "blue square"]), atol=1e-6)


def test_the_text_tower_alone_takes_one_text_as_the_full_model_does(tiny_encoder):
    from mmretrieval.models.text_tower import load_text_encoder

    tower = load_text_encoder(tiny_encoder.identity, torch.device("cpu"))
    assert tower is not None
    assert tower.encode_texts("red circle").shape == (1, tiny_encoder.dim)
    with pytest.raises(QueryError, match="batch_size"):
        tower.encode_texts(["red circle"], batch_size=0)
    with pytest.raises(QueryError, match="not a str"):
        tower.encode_texts(["red", 3])


def test_texts_that_are_not_str_are_refused(tiny_encoder):
    with pytest.raises(QueryError, match="bytes"):
        tiny_encoder.encode_texts(b"red circle")
    with pytest.raises(QueryError, match="text 1 .*int"):
        tiny_encoder.encode_texts(["red", 3])


def test_one_image_alone_is_one_image_not_its_path_letters(tiny_encoder, tmp_path):
    path = tmp_path / "shape.png"
    Image.new("RGB", (40, 30), (200, 30, 30)).save(path)
    expected = tiny_encoder.encode_images([path])
    for one in (str(path), path, os.fsencode(path), Image.open(path)):
        vectors = tiny_encoder.encode_images(one)
        assert vectors.shape == (1, tiny_encoder.dim)
        np.testing.assert_allclose(vectors, expected, atol=1e-6)
    np.testing.assert_allclose(tiny_encoder.encode_images([os.fsencode(path)]), expected, atol=1e-6)


def test_an_image_item_of_another_type_is_refused(tiny_encoder):
    with pytest.raises(QueryError, match="image 0 .*int"):
        tiny_encoder.encode_images([7])


@pytest.mark.parametrize("batch_size", [0, -1])
def test_a_batch_size_below_one_is_refused(tiny_encoder, batch_size):
    with pytest.raises(QueryError, match=f"batch_size must be at least 1, got {batch_size}"):
        tiny_encoder.encode_texts(["red circle"], batch_size=batch_size)
    with pytest.raises(QueryError, match=f"batch_size must be at least 1, got {batch_size}"):
        tiny_encoder.encode_images([Image.new("RGB", (8, 8))], batch_size=batch_size)


# -- images ---------------------------------------------------------------------------------------------------
def _turned_jpeg(path, orientation: int) -> Image.Image:
    """Write a JPEG whose EXIF asks for ``orientation``; return its pixels as stored (not turned). Small enough
    (under twice the tiny model's 32 px) that JPEG draft mode decodes a path at full size too."""
    pixels = np.zeros((24, 40, 3), dtype=np.uint8)
    pixels[:, :20] = (220, 30, 30)  # left half red, a bar along the top: no turn leaves it alone
    pixels[:6, :, 2] = 255
    exif = Image.Exif()
    exif[_ORIENTATION] = orientation
    Image.fromarray(pixels).save(path, "JPEG", quality=95, exif=exif.tobytes())
    with Image.open(path) as stored:
        stored.load()
        return stored.copy()


def test_a_pil_image_is_turned_upright_by_its_exif_orientation_as_a_file_is(tiny_encoder, tmp_path):
    path = tmp_path / "turned.jpg"
    stored = _turned_jpeg(path, 6)
    upright = ImageOps.exif_transpose(stored)
    assert upright.size == (24, 40)
    from_path = tiny_encoder.encode_images([path])
    opened = Image.open(path)
    from_image = tiny_encoder.encode_images([opened])
    np.testing.assert_allclose(from_image, from_path, atol=1e-5)
    np.testing.assert_allclose(from_image, tiny_encoder.encode_images([upright]), atol=1e-5)
    # An image already turned upright has no orientation tag left, so it is not turned twice.
    np.testing.assert_allclose(tiny_encoder.encode_images([ImageOps.exif_transpose(Image.open(path))]), from_path,
                               atol=1e-5)
    assert opened.getexif().get(_ORIENTATION) == 6 and opened.size == (40, 24)  # the caller's image is untouched
    # The test can tell: the pixels as stored give another vector.
    sideways = Image.frombytes("RGB", stored.size, stored.tobytes())  # no EXIF
    assert not np.allclose(tiny_encoder.encode_images([sideways]), from_path, atol=1e-3)


@pytest.mark.parametrize("size", [(0, 0), (5, 0), (0, 5)])
def test_an_image_without_pixels_is_refused(tiny_encoder, size):
    with pytest.raises(QueryError, match=f"{size[0]}x{size[1]}"):
        tiny_encoder.encode_images([Image.new("RGB", (4, 4)), Image.new("RGB", size)])


# -- labels given as a list -----------------------------------------------------------------------------------
def test_a_label_list_is_deduplicated_across_case_with_the_warning_typed_labels_get(tiny_encoder):
    with pytest.warns(UserWarning, match="differ only in case"):
        listed = ZeroShotClassifier.build(tiny_encoder, ["red", " red ", "Red", "blue"])
    with pytest.warns(UserWarning, match="differ only in case"):
        typed = parse_labels("red, red, Red, blue")
    assert listed.labels == tuple(typed) == ("red", "blue")
    # In a list each item is one label: a comma or a leading @ is part of it, never a separator or a file.
    assert ZeroShotClassifier.build(tiny_encoder, ["Paris, France", "@home"]).labels == ("Paris, France", "@home")


def test_a_label_iterable_of_any_kind_is_taken(tiny_encoder):
    expected = ZeroShotClassifier.build(tiny_encoder, ["a", "b"])
    for labels in ((x for x in ["a", "b"]), ("a", "b"), {"a": 1, "b": 2}.keys()):
        classifier = ZeroShotClassifier.build(tiny_encoder, labels)
        assert classifier.labels == ("a", "b")
        np.testing.assert_allclose(classifier.embeddings, expected.embeddings, atol=1e-6)


@pytest.mark.parametrize(("labels", "message"), [
    (["", "x"], "label 0 is empty"),
    (["x", "  "], "label 1 is empty"),
    ([1, 2], "label 0 is 1 .*int"),
    (["x", None], "label 1 is None"),
    ([], "no labels"),
    ((x for x in []), "no labels"),
    (5, "labels must be a str or a list of them"),
])
def test_bad_labels_in_a_list_are_refused(tiny_encoder, labels, message):
    with pytest.raises(QueryError, match=message):
        ZeroShotClassifier.build(tiny_encoder, labels)


def test_labelling_a_collection_checks_a_label_list_as_it_checks_typed_labels(tmp_path, tiny_encoder):
    from mmretrieval.collection.collection import Collection
    from test_ingest import write_good_images

    write_good_images(tmp_path / "photos", 3)
    with Collection.open(tmp_path / "col", model=tiny_encoder, create=True) as col:
        col.ingest([tmp_path / "photos"], workers=0)
        with pytest.raises(QueryError, match="label 0 is 1"):
            col.label([1, 2])
        with pytest.raises(QueryError, match="label 1 is empty"):
            col.label(["red", ""])
        assert col.label_sets() == []  # nothing written
        with pytest.warns(UserWarning, match="differ only in case"):
            summary = col.label(["Red", "red", "blue"])
        assert set(summary.counts) == {"Red", "blue"} and sum(summary.counts.values()) == 3
        assert col.label((x for x in ["red", "blue"]), replace=True).counts.keys() == {"red", "blue"}


def test_a_lone_softmax_label_is_scored_by_the_classifier_and_refused_by_the_check_callers_run(tiny_encoder):
    """Decided: probabilities() does not refuse a lone label (the web UI shows its 1.0 with a note); the CLI and
    Collection.label refuse it first with refuse_lone_softmax_label, which API callers can run too."""
    from mmretrieval.models.zeroshot import refuse_lone_softmax_label

    classifier = ZeroShotClassifier.build(tiny_encoder, ["red"])
    vectors = tiny_encoder.encode_images([Image.new("RGB", (8, 8), (200, 0, 0)), Image.new("RGB", (8, 8))])
    np.testing.assert_allclose(classifier.probabilities(vectors), 1.0)
    assert classifier.probabilities(vectors, multi_label=True).max() < 1.0
    with pytest.raises(QueryError, match="pass --multi-label"):
        refuse_lone_softmax_label(classifier.labels, is_sigmoid=classifier.is_sigmoid, multi_label=False)


# -- devices and precisions -----------------------------------------------------------------------------------
@pytest.mark.parametrize("device", ["gpu", "meta", "xla", "CPU", " cpu", "cuda:x", "auto:0", ""])
def test_an_unknown_device_is_refused_before_anything_loads(tiny_model_dir, monkeypatch, device):
    monkeypatch.setattr(encoder_module, "load_model", lambda *a, **k: pytest.fail("loaded before checking"))
    with pytest.raises(ModelSpecError, match=r"unknown device .*use auto, cpu, cuda, cuda:N or mps"):
        load_encoder(str(tiny_model_dir), device=device)
    with pytest.raises(ModelSpecError, match="unknown device"):
        settings_module.check_device(device)


@pytest.mark.parametrize("precision", ["fp16", "FP32", "float32", ""])
def test_an_unknown_precision_is_refused_before_anything_loads(tiny_model_dir, monkeypatch, precision):
    monkeypatch.setattr(encoder_module, "load_model", lambda *a, **k: pytest.fail("loaded before checking"))
    with pytest.raises(ModelSpecError, match=f"unknown precision {precision!r}; use one of auto, fp32, bf16"):
        load_encoder(str(tiny_model_dir), device="cpu", precision=precision)
    with pytest.raises(ModelSpecError, match="unknown precision"):
        settings_module.check_precision(precision)


def test_known_devices_and_precisions_pass_the_checks():
    for device in ("auto", "cpu", "cuda", "cuda:1", "mps"):
        assert settings_module.check_device(device) == device
    for precision in settings_module.PRECISIONS:
        assert settings_module.check_precision(precision) == precision


# -- logging --------------------------------------------------------------------------------------------------
_LOAD_AND_REPORT = textwrap.dedent("""
    import json, logging, sys
    from mmretrieval.models.encoder import load_encoder
    if sys.argv[2] == "configured":
        logging.basicConfig(level=logging.INFO, format="CONFIGURED %(name)s %(message)s", stream=sys.stdout)
    load_encoder(sys.argv[1], device="cpu")
    root = logging.getLogger()
    print(json.dumps({"handlers": [type(h).__name__ for h in root.handlers], "level": root.level}))
""")


def _load_in_a_fresh_process(model_dir, mode: str) -> tuple[dict, str]:
    done = subprocess.run([sys.executable, "-c", _LOAD_AND_REPORT, str(model_dir), mode], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"},
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stdout


def test_loading_a_model_leaves_the_applications_root_logger_unconfigured(tiny_model_dir):
    report, _ = _load_in_a_fresh_process(tiny_model_dir, "unconfigured")
    assert report == {"handlers": [], "level": 30}  # no handler, WARNING: a later basicConfig() still takes


def test_an_applications_own_logging_setup_still_gets_open_clips_records(tiny_model_dir):
    report, output = _load_in_a_fresh_process(tiny_model_dir, "configured")
    assert report["handlers"] == ["StreamHandler"]
    assert "CONFIGURED root " in output  # open_clip logs through the root logger

