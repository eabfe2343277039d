"""Fast commands: a command loads only what it uses (no model for an unchanged ingest or a stored-vector
query, only the text tower for a text search, no training code or Ray for `mmr search`)."""

from __future__ import annotations

import os

import pytest

import mmretrieval.models.encoder as encoder_module  # where a collection's model loads from
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
    real = encoder_module.load_encoder

    def counting(spec, **kwargs):
        loads.append(str(spec))
        return real(spec, **kwargs)

    monkeypatch.setattr(encoder_module, "load_encoder", counting)
    return loads


def test_an_unchanged_ingest_never_loads_the_model(built, monkeypatch):
    directory, photos = built
    loads = _count_model_loads(monkeypatch)
    with Collection.open(directory, device="cpu") as col:
        summary = col.ingest([photos], workers=0)
    assert (summary.embedded, summary.unchanged) == (0, 5)
    assert loads == []
    touched = sorted(photos.iterdir())[0]
    later = touched.stat().st_mtime_ns + 10**9
    os.utime(touched, ns=(later, later))  # the same bytes with a new time: hashed, not decoded (it loaded the model)
    with Collection.open(directory, device="cpu") as col:
        summary = col.ingest([photos], workers=0)
        assert col.catalog.file_state(touched)[2] == later
    assert (summary.embedded, summary.duplicates, summary.unchanged) == (0, 0, 5) and loads == []
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


# -- the text tower alone ---------------------------------------------------------------------------------------
TEXTS = ["a red circle", "two blue squares on a striped background", "x " * 60, ""]


def _variant_dir(tmp_path, name, **changes):
    import open_clip
    import torch

    from conftest import TINY_MODEL_CFG
    from mmretrieval.models.loading import save_model_dir

    cfg = {**TINY_MODEL_CFG, **{k: v for k, v in changes.items() if k != "text_cfg"},
           "text_cfg": {**TINY_MODEL_CFG["text_cfg"], **changes.get("text_cfg", {})}}
    torch.manual_seed(3)
    model = open_clip.CLIP(**cfg)
    return save_model_dir(model, cfg, tmp_path / name)


@pytest.mark.parametrize("variant", ["plain", "siglip", "quickgelu_layerscale_bias", "shapes"])
def test_text_tower_matches_open_clip(variant, tmp_path, tiny_model_dir, tiny_siglip_dir):
    import numpy as np
    import torch

    from mmretrieval.models.encoder import load_encoder
    from mmretrieval.models.text_tower import load_text_encoder

    spec = {"plain": str(tiny_model_dir), "siglip": str(tiny_siglip_dir), "shapes": "builtin:shapes"}.get(variant)
    if spec is None:
        spec = str(_variant_dir(tmp_path, variant, quick_gelu=True,
                                text_cfg={"ls_init_value": 0.5, "proj_bias": True, "mlp_ratio": 2.0}))
    full = load_encoder(spec, device="cpu")
    fast = load_text_encoder(full.identity, torch.device("cpu"))
    assert fast is not None
    np.testing.assert_allclose(fast.encode_texts(TEXTS), full.encode_texts(TEXTS), atol=2e-5)
    # zero-shot scoring reads the calibration from whichever it gets
    assert fast.logit_scale == pytest.approx(full.logit_scale)
    assert fast.is_sigmoid == full.is_sigmoid == (variant == "siglip")
    if variant == "siglip":
        assert fast.logit_bias == pytest.approx(full.logit_bias)


def test_label_needs_only_the_text_tower(built, tiny_model_dir, monkeypatch, tmp_path):
    directory, photos = built
    labels, templates = ["red", "green", "blue"], ("a {} picture",)
    with Collection.open(tmp_path / "col-full", model=str(tiny_model_dir), create=True, device="cpu") as col:
        col.ingest([photos], workers=0)
        expected = col.label(labels, templates, multi_label=True, threshold=0.3).counts
        expected_labels = {col.image_path(i).name: v for i, v in col.label_of(list(range(1, 6))).items()}
    loads = _count_model_loads(monkeypatch)
    with Collection.open(directory, device="cpu") as col:
        summary = col.label(labels, templates, multi_label=True, threshold=0.3)
        got_labels = {col.image_path(i).name: v for i, v in col.label_of(list(range(1, 6))).items()}
    assert loads == []  # no image tower, no open_clip model
    assert summary.counts == expected and sum(expected.values()) > 0
    assert got_labels.keys() == expected_labels.keys() and len(expected_labels) == 5
    for name, assigned in expected_labels.items():
        assert [label for label, _ in got_labels[name]] == [label for label, _ in assigned]
        assert [p for _, p in got_labels[name]] == pytest.approx([p for _, p in assigned], abs=1e-4)


def test_unsupported_or_changed_models_fall_back_to_the_full_load(tmp_path, tiny_model_dir):
    import shutil

    import torch

    from mmretrieval.models.encoder import load_encoder
    from mmretrieval.models.text_tower import load_text_encoder

    custom = _variant_dir(tmp_path, "custom", text_cfg={"embed_cls": True})
    assert load_text_encoder(load_encoder(str(custom), device="cpu").identity, torch.device("cpu")) is None
    moved = tmp_path / "changed"
    shutil.copytree(tiny_model_dir, moved)
    identity = load_encoder(str(moved), device="cpu").identity
    other = _variant_dir(tmp_path, "other")
    shutil.copy(other / "open_clip_model.safetensors", moved / "open_clip_model.safetensors")
    assert load_text_encoder(identity, torch.device("cpu")) is None  # the weights are not the collection's


def test_a_changed_model_directory_is_still_refused(built, tiny_model_dir, tmp_path):
    import shutil

    from mmretrieval.errors import CollectionError

    directory, photos = built
    model_copy = tmp_path / "model-copy"
    shutil.copytree(tiny_model_dir, model_copy)
    with Collection.open(tmp_path / "col2", model=str(model_copy), create=True, device="cpu") as col:
        col.ingest([photos], workers=0)
    shutil.copy(_variant_dir(tmp_path, "other") / "open_clip_model.safetensors", model_copy)
    with Collection.open(tmp_path / "col2", device="cpu") as col:
        with pytest.raises(CollectionError, match="was built with"):
            col.search("a red circle")


def test_checkpoint_hashes_are_remembered_but_never_stale(tmp_path):
    import hashlib
    import os

    from mmretrieval.models.specs import sha256_file

    path = tmp_path / "weights.safetensors"
    path.write_bytes(b"a" * 1000)
    first = sha256_file(path)
    assert first == hashlib.sha256(b"a" * 1000).hexdigest() and sha256_file(path) == first
    stat = path.stat()
    path.write_bytes(b"b" * 1000)  # same size; the modification time put back, as a careless copy might
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert sha256_file(path) == hashlib.sha256(b"b" * 1000).hexdigest()


_SEARCH_IN_CHILD = """
import json, sys
from mmretrieval.cli import main
code = main(["search", "a red circle", "--collection", sys.argv[1], "--device", "cpu", "--json", "-k", "3"])
heavy = ["open_clip", "torchvision", "timm", "mmretrieval.training", "ray", "gradio", "torch._dynamo"]
print(json.dumps({"code": code, "loaded": [name for name in heavy if name in sys.modules]}), file=sys.stderr)
"""


def test_mmr_search_imports_neither_open_clip_nor_training_nor_ray(built, tmp_path):
    import json
    import os
    import subprocess
    import sys

    directory, _ = built
    child = subprocess.run([sys.executable, "-c", _SEARCH_IN_CHILD, str(directory)], capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": os.getcwd()}, timeout=300)
    report = json.loads(child.stderr.strip().splitlines()[-1])
    assert report == {"code": 0, "loaded": []}, child.stderr
    fast_hits = [json.loads(line) for line in child.stdout.splitlines()]
    with Collection.open(directory, device="cpu") as col:
        col.encoder  # the full model: the reference
        full_hits = col.search("a red circle", k=3)
    assert [h["id"] for h in fast_hits] == [h.id for h in full_hits]
    assert [h["score"] for h in fast_hits] == pytest.approx([h.score for h in full_hits], abs=1e-5)


_WITHOUT_TORCH = """
import sys
sys.modules["torch"] = None  # importing it fails: a command that needs no model must not import it
from mmretrieval.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("command", [["info"], ["duplicates"], ["export", "{out}"], ["index"], ["compact"],
                                     ["ingest", "{photos}"], ["similar", "{photos}/good00.jpg"]])
def test_commands_that_need_no_model_run_without_torch(built, tmp_path, command):
    """torch took 1.4 of `mmr info`'s 2.3 s and 600 of its 670 MB: info, duplicates, export, index, compact, an
    ingest with nothing new and `similar` to a stored image read stored vectors only."""
    import os
    import subprocess
    import sys

    directory, photos = built
    argv = [part.format(out=tmp_path / "exported", photos=photos) for part in command]
    argv += ["--collection", str(directory)]
    child = subprocess.run([sys.executable, "-c", _WITHOUT_TORCH, *argv], capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": os.getcwd()}, timeout=300)
    # duplicates exits 1 when it finds no group: what matters is that it ran to its answer
    assert child.returncode in ((0, 1) if command == ["duplicates"] else (0,)), child.stderr
    assert "Traceback" not in child.stderr and "torch" not in child.stderr, child.stderr


def test_building_the_command_line_imports_no_numpy():
    """Every command builds every command's options first: a constant taken from a module that imports numpy
    (the multi-label default, once) added ~0.09 s to each `mmr` start, `--help` included."""
    import json
    import os
    import subprocess
    import sys

    script = ("import json, sys\nfrom mmretrieval.cli import build_parser\nbuild_parser()\n"
              "print(json.dumps([name for name in ('numpy', 'torch', 'PIL', 'faiss') if name in sys.modules]))")
    child = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                           env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert json.loads(child.stdout) == [], child.stderr
