"""Loading models the way a user's walkthrough broke it: half-downloaded hub models, checkpoint files that do not
fit, SigLIP without transformers, relative and moved model paths, weights replaced under a collection, and the
one-line errors each of these must give. Tiny random configs and fake Hugging Face caches only: no network."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import sys
from pathlib import Path

import open_clip
import pytest
import torch
from safetensors.torch import save_file

from conftest import TINY_MODEL_CFG
from mmretrieval.collection.collection import Collection
from mmretrieval.collection.opening import check_same_model
from mmretrieval.errors import CheckpointError, CollectionError, ModelNotCachedError, ModelSpecError
from mmretrieval.models.encoder import load_encoder, resolve_device
from mmretrieval.models.loading import save_model_dir
from mmretrieval.models.specs import ModelIdentity, ModelSpec, sha256_file

_REVISION = "0123456789abcdef0123456789abcdef01234567"


def _fake_hub_repo(hub: Path, repo: str, source_dir: Path | None, *, weights: bool = True) -> Path:
    """An open_clip repo in a Hugging Face cache laid out as huggingface_hub writes it: blobs named by their
    sha256, snapshot entries linking to them, refs/main naming the snapshot. Returns the snapshot folder."""
    root = hub / f"models--{repo.replace('/', '--')}"
    snapshot = root / "snapshots" / _REVISION
    snapshot.mkdir(parents=True)
    (root / "blobs").mkdir()
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(_REVISION)
    names = ["open_clip_config.json"] + (["open_clip_model.safetensors"] if weights else [])
    for name in names:
        data = (source_dir / name).read_bytes()
        blob = root / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / name).symlink_to(blob)
    return snapshot


def _register(tmp_path: Path, name: str, cfg: dict) -> str:
    """Register an open_clip architecture ``name`` (tests only run tiny ones)."""
    config_file = tmp_path / f"{name}.json"
    config_file.write_text(json.dumps(cfg))
    open_clip.add_model_config(config_file)
    return name


# -- 1: a hub model with only its config cached ------------------------------------------------------------------
def test_a_hub_model_whose_weights_are_missing_is_refused_not_drawn_at_random(tmp_path, tiny_model_dir):
    hub = tmp_path / "hub"
    _fake_hub_repo(hub, "me/cfgonly", tiny_model_dir, weights=False)
    with pytest.raises(ModelNotCachedError) as caught:
        load_encoder("hf-hub:me/cfgonly", device="cpu", cache_dir=str(hub))
    message = str(caught.value)
    assert "hf-hub:me/cfgonly" in message and "open_clip_model.safetensors" in message
    assert "HF_HUB_OFFLINE" in message and "\n" not in message


def test_a_complete_hub_model_loads_its_weights_and_keeps_its_key(tmp_path, tiny_model_dir):
    hub = tmp_path / "hub"
    _fake_hub_repo(hub, "me/tiny", tiny_model_dir)
    encoder = load_encoder("hf-hub:me/tiny", device="cpu", cache_dir=str(hub))
    reference = load_encoder(str(tiny_model_dir), device="cpu")
    torch.testing.assert_close(encoder.model.state_dict(), reference.model.state_dict())
    weights = (tiny_model_dir / "open_clip_model.safetensors").read_bytes()
    assert encoder.identity.weights == hashlib.sha256(weights).hexdigest()  # as before: the file's sha256


def test_a_registry_tag_whose_weights_are_missing_names_the_file(tmp_path):
    hub = tmp_path / "hub"
    root = hub / "models--laion--CLIP-ViT-B-32-laion2B-s34B-b79K"
    (root / "snapshots" / _REVISION).mkdir(parents=True)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(_REVISION)
    with pytest.raises(ModelNotCachedError) as caught:
        load_encoder("ViT-B-32:laion2b_s34b_b79k", device="cpu", cache_dir=str(hub))
    message = str(caught.value)
    assert "ViT-B-32:laion2b_s34b_b79k" in message and "open_clip_pytorch_model.bin" in message
    assert "laion/CLIP-ViT-B-32-laion2B-s34B-b79K" in message


# -- 2: ARCH:FILE failures are the file's, not "not in the cache" ---------------------------------------------------
def test_a_float16_checkpoint_of_another_image_size_does_not_fit(tmp_path):
    """What train and blend write (float16) for another input size: open_clip resizes the position embedding in
    float16, which torch's CPU interpolation cannot do; still the checkpoint's fault, not a corrupt file."""
    arch = _register(tmp_path, "mmr-walk-small-input", TINY_MODEL_CFG)
    larger_cfg = {**TINY_MODEL_CFG, "vision_cfg": {**TINY_MODEL_CFG["vision_cfg"], "image_size": 48}}
    checkpoint = tmp_path / "larger.safetensors"
    save_file(open_clip.CLIP(**larger_cfg).half().state_dict(), checkpoint)
    with pytest.raises(CheckpointError) as caught:
        load_encoder(f"{arch}:{checkpoint}", device="cpu")
    message = str(caught.value)
    assert f"does not fit {arch}" in message and "corrupt" not in message and "Half" not in message, message


def test_a_checkpoint_file_of_another_architecture_does_not_fit(tmp_path):
    arch = _register(tmp_path, "mmr-walk-narrow", TINY_MODEL_CFG)
    wide_cfg = {**TINY_MODEL_CFG, "text_cfg": {**TINY_MODEL_CFG["text_cfg"], "width": 64}}
    checkpoint = tmp_path / "wide.pt"
    torch.save(open_clip.CLIP(**wide_cfg).state_dict(), checkpoint)
    with pytest.raises(CheckpointError) as caught:
        load_encoder(f"{arch}:{checkpoint}", device="cpu")
    message = str(caught.value)
    assert str(checkpoint) in message and f"does not fit {arch}" in message and "Hugging Face" not in message


def test_a_text_file_as_a_checkpoint_is_corrupt_not_uncached(tmp_path):
    arch = _register(tmp_path, "mmr-walk-text", TINY_MODEL_CFG)
    checkpoint = tmp_path / "notes.pt"
    checkpoint.write_text("hello\n")
    with pytest.raises(CheckpointError) as caught:
        load_encoder(f"{arch}:{checkpoint}", device="cpu")
    assert str(checkpoint) in str(caught.value) and "corrupt" in str(caught.value)


# -- 3: SigLIP's tokenizer without transformers ---------------------------------------------------------------------
def test_siglip_without_transformers_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # as if not installed
    with pytest.raises(ModelSpecError) as caught:
        load_encoder("ViT-B-16-SigLIP", device="cpu")
    assert str(caught.value) == ("ViT-B-16-SigLIP's tokenizer needs the transformers package: "
                                 "pip install 'mmretrieval[siglip]'")


# -- 4: a relative checkpoint file is recorded absolute ---------------------------------------------------------
@pytest.mark.parametrize("name", ["weights.pt", "weights.safetensors", "weights"])
def test_a_relative_checkpoint_file_is_made_absolute(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    (tmp_path / name).write_bytes(b"x")
    spec = ModelSpec.parse(f"ViT-S-32:{name}")
    assert spec.pretrained == str(tmp_path / name)
    assert ModelSpec.parse("ViT-S-32:not-here.bin").pretrained == str(tmp_path / "not-here.bin")
    assert ModelSpec.parse("ViT-B-32:laion2b_s34b_b79k").pretrained == "laion2b_s34b_b79k"


def test_a_model_with_a_relative_checkpoint_loads_from_anywhere(tmp_path, tiny_model_dir, monkeypatch):
    arch = _register(tmp_path, "mmr-walk-relative", TINY_MODEL_CFG)
    shutil.copy(tiny_model_dir / "open_clip_model.safetensors", tmp_path / "w.safetensors")
    monkeypatch.chdir(tmp_path)
    recorded = load_encoder(f"{arch}:w.safetensors", device="cpu").identity
    monkeypatch.chdir(tiny_model_dir)
    assert load_encoder(recorded.spec, device="cpu").identity.key() == recorded.key()


# -- 5: a moved model directory ---------------------------------------------------------------------------------
def test_a_writer_records_where_a_moved_model_now_is(tmp_path, tiny_model_dir, caplog):
    old, new = tmp_path / "old-model", tmp_path / "new-model"
    shutil.copytree(tiny_model_dir, old)
    collection_dir = tmp_path / "c"
    with Collection.open(collection_dir, str(old), create=True, device="cpu"):
        pass
    old.rename(new)
    caplog.set_level(logging.WARNING)
    with Collection.open(collection_dir, str(new), device="cpu", writer="ingest") as collection:
        assert collection.identity.spec == str(new)
    assert f"moved from {old} to {new}; recorded {new}" in caplog.text
    with Collection.open(collection_dir, device="cpu") as collection:
        assert collection.identity.spec == str(new)
        assert collection.encoder.identity.key() == collection.identity.key()


def test_a_reader_of_a_moved_model_is_told_how_to_record_its_new_place(tmp_path, tiny_model_dir):
    old = tmp_path / "old-model"
    shutil.copytree(tiny_model_dir, old)
    collection_dir = tmp_path / "c"
    Collection.open(collection_dir, str(old), create=True, device="cpu").close()
    shutil.rmtree(old)
    with Collection.open(collection_dir, device="cpu") as collection, pytest.raises(ModelSpecError) as caught:
        collection.search("a red circle")  # the text tower, then the whole model: neither is there
    message = str(caught.value)
    assert f"{old} does not exist" in message
    assert f"mmr ingest SOURCE --collection {collection_dir} --model NEW_PLACE" in message


# -- 6: the same spec now loading other weights --------------------------------------------------------------------
def test_weights_replaced_at_the_recorded_spec_are_named_as_such(tmp_path, tiny_model_dir):
    model = tmp_path / "m"
    shutil.copytree(tiny_model_dir, model)
    collection_dir = tmp_path / "c"
    with Collection.open(collection_dir, str(model), create=True, device="cpu") as collection:
        before = collection.identity
    torch.manual_seed(7)
    save_model_dir(open_clip.CLIP(**TINY_MODEL_CFG), TINY_MODEL_CFG, model)
    with pytest.raises(CollectionError) as caught:
        Collection.open(collection_dir, str(model), device="cpu", writer="ingest")
    message = str(caught.value)
    assert f"built with the weights {model} held then (key {before.key()})" in message
    assert f"{model} now loads other weights" in message and "leave out --model" not in message



@pytest.mark.parametrize("recorded", ["folder", "checkpoint file"])
def test_an_ingest_with_the_recorded_weights_replaced_is_refused_before_it_plans_a_row(tmp_path, tiny_model_dir,
                                                                                        recorded):
    """The collection's model loads only once planning found work; the replaced weights are told by their hash
    first, so the refusal leaves no pending rows behind (``mmr info`` showed them until a right-model ingest)."""
    from test_ingest import write_good_images

    if recorded == "folder":
        model = tmp_path / "m"
        shutil.copytree(tiny_model_dir, model)
        spec = str(model)
    else:  # ARCH:/path/checkpoint.pt, the architecture registered with open_clip
        config_file = tmp_path / "mmr-tiny-replaced.json"
        config_file.write_text(json.dumps(TINY_MODEL_CFG))
        open_clip.add_model_config(config_file)
        model = tmp_path / "weights.pt"
        torch.save(load_encoder(str(tiny_model_dir), device="cpu").model.state_dict(), model)
        spec = f"mmr-tiny-replaced:{model}"
    collection_dir = tmp_path / "c"
    Collection.open(collection_dir, spec, create=True, device="cpu").close()
    torch.manual_seed(7)
    other = open_clip.CLIP(**TINY_MODEL_CFG)
    if recorded == "folder":
        save_model_dir(other, TINY_MODEL_CFG, model)
    else:
        torch.save(other.state_dict(), model)
    write_good_images(tmp_path / "photos", 3)
    with Collection.open(collection_dir, device="cpu") as collection:
        with pytest.raises(CollectionError, match="now loads other weights"):
            collection.ingest([tmp_path / "photos"], workers=0)
        assert collection.catalog.counts_by_status() == {}


def test_the_same_model_at_another_dim_is_named_as_a_dimension_not_other_weights(tmp_path):
    stored = ModelIdentity("builtin:shapes", "a", 128, "w1", "{}")
    asked = ModelIdentity("builtin:shapes", "a", 64, "w1", "{}")
    with pytest.raises(CollectionError, match="holds 128-d vectors of builtin:shapes, you asked for 64-d ones "
                                              r"\(--dim\): leave out --dim") as caught:
        check_same_model(stored, asked, tmp_path)
    assert "other weights" not in str(caught.value)


def test_a_different_spec_keeps_the_leave_out_model_advice(tmp_path):
    stored = ModelIdentity("builtin:shapes", "a", 32, "w1", "{}")
    asked = ModelIdentity("/models/other", "a", 32, "w2", "{}")
    with pytest.raises(CollectionError, match="leave out --model"):
        check_same_model(stored, asked, tmp_path)


# -- 7: a checkpoint file given where a model directory goes ------------------------------------------------------
def test_a_checkpoint_file_as_the_model_says_to_name_its_folder(tiny_model_dir, monkeypatch):
    weights = tiny_model_dir / "open_clip_model.safetensors"
    with pytest.raises(ModelSpecError, match=f"{weights} is a file: name the folder that holds it"):
        load_encoder(str(weights), device="cpu")
    monkeypatch.chdir(tiny_model_dir)
    with pytest.raises(ModelSpecError, match="ARCH:FILE"):
        load_encoder("open_clip_model.safetensors", device="cpu")


# -- 8: a hex file name is trusted as a sha256 only in a hub cache -------------------------------------------------
def test_a_hex_named_file_outside_a_hub_cache_is_hashed(tmp_path):
    fake = "ab" * 32
    loose = tmp_path / fake
    loose.write_bytes(b"not the hash of this")
    assert sha256_file(loose) == hashlib.sha256(b"not the hash of this").hexdigest()
    blob = tmp_path / "hub" / "models--me--x" / "blobs" / fake
    blob.parent.mkdir(parents=True)
    blob.write_bytes(b"huggingface_hub named this by its sha256")
    assert sha256_file(blob) == fake  # not re-read: the hub names blobs by their hash


# -- 9: a file that is no pickle at all ------------------------------------------------------------------------------
@pytest.mark.parametrize("content", ["safetensors", "random"])
def test_a_non_pickle_bin_is_corrupt_not_code(tmp_path, tiny_model_dir, content):
    directory = tmp_path / "m"
    directory.mkdir()
    shutil.copy(tiny_model_dir / "open_clip_config.json", directory)
    data = (tiny_model_dir / "open_clip_model.safetensors").read_bytes() if content == "safetensors" \
        else bytes(range(256)) * 20
    (directory / "open_clip_pytorch_model.bin").write_bytes(data)
    with pytest.raises(CheckpointError) as caught:
        load_encoder(str(directory), device="cpu")
    assert "not a torch checkpoint, or corrupt" in str(caught.value) and "run code" not in str(caught.value)


# -- 10: bad configs and names, each one clear line ---------------------------------------------------------------
@pytest.mark.parametrize(("model_cfg", "message"), [
    ({}, "'model_cfg' has no embed_dim, vision_cfg, text_cfg"),
    ([1, 2], "'model_cfg' is a list"),
    ({**TINY_MODEL_CFG, "text_cfg": 5}, "section 'text_cfg' is a int"),
])
def test_a_config_without_an_architecture_says_what_is_missing(tmp_path, tiny_model_dir, model_cfg, message):
    directory = shutil.copytree(tiny_model_dir, tmp_path / "m")
    (directory / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg}))
    with pytest.raises(ModelSpecError, match=message):
        load_encoder(str(directory), device="cpu")


def test_a_wrong_embed_dim_is_one_line(tmp_path, tiny_model_dir):
    directory = shutil.copytree(tiny_model_dir, tmp_path / "m")
    (directory / "open_clip_config.json").write_text(json.dumps({"model_cfg": {**TINY_MODEL_CFG, "embed_dim": 48}}))
    with pytest.raises(CheckpointError, match="does not fit") as caught:
        load_encoder(str(directory), device="cpu")
    assert "\n" not in str(caught.value) and "\t" not in str(caught.value)


def test_an_empty_checkpoint_is_called_empty(tmp_path, tiny_model_dir):
    directory = tmp_path / "m"
    directory.mkdir()
    shutil.copy(tiny_model_dir / "open_clip_config.json", directory)
    (directory / "open_clip_pytorch_model.bin").write_bytes(b"")
    with pytest.raises(CheckpointError, match="is an empty file"):
        load_encoder(str(directory), device="cpu")


def test_a_mistyped_relative_folder_says_no_such_folder_exists(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelSpecError, match="'nonexist_dir', and no folder of that name exists here"):
        load_encoder("nonexist_dir", device="cpu")


# -- 11: mps where there is none ---------------------------------------------------------------------------------
def test_mps_without_an_apple_gpu_is_refused_before_loading(monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ModelSpecError, match="device 'mps' asked for, but no Apple GPU is available; use --device cpu"):
        resolve_device("mps")
