"""The dual encoder over open_clip: every kind of model spec, offline, and the checkpoint defences."""

from __future__ import annotations

import json
import os
import shutil
import warnings

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from conftest import TINY_MODEL_CFG
from mmretrieval.training import scenes
from mmretrieval.models.encoder import load_encoder, resolve_device
from mmretrieval.errors import CheckpointError, ImageDecodeError, ModelNotCachedError, ModelSpecError
from mmretrieval.models.specs import ModelSpec, ModelIdentity


def _unit_rows(vectors: np.ndarray) -> bool:
    return vectors.dtype == np.float32 and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize(
    ("text", "kind", "name", "pretrained"),
    [
        ("ViT-B-32:laion2b_s34b_b79k", "registry", "ViT-B-32", "laion2b_s34b_b79k"),
        ("ViT-B-16-SigLIP", "registry", "ViT-B-16-SigLIP", None),
        ("hf-hub:timm/ViT-B-16-SigLIP2", "hf-hub", "timm/ViT-B-16-SigLIP2", None),
        ("builtin:shapes", "builtin", "shapes", None),
        ("local-dir:/models/mine", "local", "/models/mine", None),
        ("./models/mine", "local", os.path.abspath("models/mine"), None),
        ("ViT-B-32:/ckpt/weights.pt", "registry", "ViT-B-32", "/ckpt/weights.pt"),
    ],
)
def test_spec_parsing(text, kind, name, pretrained):
    spec = ModelSpec.parse(text)
    assert (spec.kind, spec.name, spec.pretrained) == (kind, name, pretrained)


@pytest.mark.parametrize("text", ["", "builtin:nope", "hf-hub:no-slash", "hf-hub:a/b/c", "not a/name:tag"])
def test_bad_spec_syntax(text):
    with pytest.raises(ModelSpecError):
        ModelSpec.parse(text)


def test_random_vit_b32_loads_offline_with_512d_unit_vectors():
    encoder = load_encoder("ViT-B-32", device="cpu")
    images = [scenes.generate(0, i).image for i in range(3)]
    image_vectors = encoder.encode_images(images)
    text_vectors = encoder.encode_texts(["a red circle", "two dogs"])
    assert image_vectors.shape == (3, 512) and text_vectors.shape == (2, 512)
    assert _unit_rows(image_vectors) and _unit_rows(text_vectors)
    assert encoder.identity.weights.startswith("random-")
    assert encoder.identity.architecture == "ViT-B-32"
    assert not encoder.is_sigmoid


def test_registered_tiny_architecture(tmp_path):
    config_file = tmp_path / "mmr-tiny-test.json"
    config_file.write_text(json.dumps(TINY_MODEL_CFG))
    open_clip.add_model_config(config_file)
    encoder = load_encoder("mmr-tiny-test", device="cpu")
    vectors = encoder.encode_texts(["x", "y", "z"])
    assert vectors.shape == (3, 32) and _unit_rows(vectors)
    assert json.loads(encoder.identity.preprocess)["size"] in (32, [32, 32])


def test_an_architecture_alone_draws_the_same_weights_in_every_load(tmp_path, monkeypatch):
    """Random weights come from a fixed seed, so a collection built with them can be searched again later (and by
    every Ray actor); the caller's random state is left alone."""
    import torch

    from mmretrieval.collection.collection import Collection
    from mmretrieval.models import precision

    # bf16 runs (emulated, slower) on a CPU without AVX512-BF16 or AMX too, which --precision bf16 refuses: the
    # test asks only that the weights, hence the identity, are the same
    monkeypatch.setattr(precision, "native_bf16", lambda device: True)

    config_file = tmp_path / "mmr-tiny-seeded.json"
    config_file.write_text(json.dumps(TINY_MODEL_CFG))
    open_clip.add_model_config(config_file)
    torch.manual_seed(5)
    expected_draws = torch.rand(3)
    torch.manual_seed(5)
    first = load_encoder("mmr-tiny-seeded", device="cpu")
    assert torch.equal(torch.rand(3), expected_draws)
    second = load_encoder("mmr-tiny-seeded", device="cpu")
    in_bf16 = load_encoder("mmr-tiny-seeded", device="cpu", precision="bf16")
    assert first.identity.weights.startswith("random-")
    assert first.identity.key() == second.identity.key() == in_bf16.identity.key()
    texts = ["a red circle", "two dogs"]
    np.testing.assert_array_equal(first.encode_texts(texts), second.encode_texts(texts))
    np.testing.assert_allclose(in_bf16.encode_texts(texts), first.encode_texts(texts), atol=0.05)

    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        scenes.generate(0, i).image.save(images / f"scene{i}.png")
    with Collection.open(tmp_path / "col", model="mmr-tiny-seeded", create=True, device="cpu") as col:
        col.ingest([images], workers=0)
    with Collection.open(tmp_path / "col", device="cpu") as col:  # a new load: the same model, not refused
        assert len(col.search("a red circle", k=3)) == 3


def test_local_directory_matches_open_clips_own_pipeline(tiny_model_dir):
    encoder = load_encoder(str(tiny_model_dir), device="cpu")
    reference, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{tiny_model_dir}")
    reference.eval()
    images = [scenes.generate(3, i, size=100).image for i in range(4)]
    with torch.no_grad():
        expected = reference.encode_image(torch.stack([preprocess(im) for im in images]), normalize=True).numpy()
    np.testing.assert_allclose(encoder.encode_images(images, batch_size=3), expected, atol=1e-5)


def test_identity_is_stable_and_weight_sensitive(tiny_model_dir, tiny_siglip_dir, tmp_path):
    first = load_encoder(str(tiny_model_dir), device="cpu").identity
    copy = shutil.copytree(tiny_model_dir, tmp_path / "moved")
    moved = load_encoder(str(copy), device="cpu").identity
    other = load_encoder(str(tiny_siglip_dir), device="cpu").identity
    assert first.key() == moved.key()  # the same weights in another place are the same model
    assert first.key() != other.key()
    assert ModelIdentity.from_json(first.to_json()) == first


def test_matryoshka_truncation_warns_and_renormalises(tiny_model_dir):
    with pytest.warns(UserWarning, match="not trained for truncation"):
        encoder = load_encoder(str(tiny_model_dir), device="cpu", dim=16)
    full = load_encoder(str(tiny_model_dir), device="cpu")
    vectors = encoder.encode_texts(["a", "b"])
    assert vectors.shape == (2, 16) and _unit_rows(vectors)
    expected = full.model.encode_text(full.tokenizer(["a", "b"]))[:, :16].detach().numpy()
    np.testing.assert_allclose(vectors, expected / np.linalg.norm(expected, axis=1, keepdims=True), atol=1e-5)
    assert encoder.identity.key() != full.identity.key()
    with pytest.raises(ModelSpecError, match="out of range"):
        load_encoder(str(tiny_model_dir), device="cpu", dim=64)


def test_trained_matryoshka_dims_do_not_warn(tiny_model_dir, tmp_path):
    directory = shutil.copytree(tiny_model_dir, tmp_path / "m")
    config = json.loads((directory / "open_clip_config.json").read_text())
    (directory / "open_clip_config.json").write_text(json.dumps({**config, "matryoshka_dims": [16]}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_encoder(str(directory), device="cpu", dim=16).dim == 16


def test_encode_images_accepts_paths_and_rejects_non_images(tiny_encoder, tmp_path):
    good = tmp_path / "good.png"
    scenes.generate(0, 0).image.save(good)
    assert tiny_encoder.encode_images([good]).shape == (1, 32)
    bad = tmp_path / "bad.jpg"
    bad.write_text("not an image")
    with pytest.raises(ImageDecodeError) as caught:
        tiny_encoder.encode_images([bad])
    assert caught.value.reason == "not_an_image"


def test_empty_inputs_give_empty_arrays(tiny_encoder):
    assert tiny_encoder.encode_images([]).shape == (0, 32)
    assert tiny_encoder.encode_texts([]).shape == (0, 32)


def test_weights_only_pickle_checkpoint_loads(tiny_model_dir, tmp_path):
    directory = tmp_path / "pickled"
    directory.mkdir()
    shutil.copy(tiny_model_dir / "open_clip_config.json", directory)
    reference = load_encoder(str(tiny_model_dir), device="cpu")
    torch.save(reference.model.state_dict(), directory / "open_clip_pytorch_model.bin")
    loaded = load_encoder(str(directory), device="cpu")
    np.testing.assert_allclose(loaded.encode_texts(["x"]), reference.encode_texts(["x"]), atol=1e-6)


class _Payload:
    """Pickles to a call of os.system: loading it without weights_only would run a shell command."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_carrying_code_is_refused(tiny_model_dir, tmp_path):
    directory = tmp_path / "evil"
    directory.mkdir()
    shutil.copy(tiny_model_dir / "open_clip_config.json", directory)
    marker = tmp_path / "pwned"
    torch.save({"state_dict": _Payload(marker)}, directory / "open_clip_pytorch_model.bin")
    with pytest.raises(CheckpointError, match="pickle"):
        load_encoder(str(directory), device="cpu")
    assert not marker.exists()


def test_corrupt_safetensors_is_a_checkpoint_error(tiny_model_dir, tmp_path):
    directory = shutil.copytree(tiny_model_dir, tmp_path / "corrupt")
    weights = directory / "open_clip_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_encoder(str(directory), device="cpu")


def test_mismatched_checkpoint_is_a_checkpoint_error(tiny_model_dir, tiny_siglip_dir, tmp_path):
    directory = shutil.copytree(tiny_model_dir, tmp_path / "mismatch")
    config = json.loads((directory / "open_clip_config.json").read_text())
    config["model_cfg"]["embed_dim"] = 48
    (directory / "open_clip_config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="does not fit"):
        load_encoder(str(directory), device="cpu")


@pytest.mark.parametrize("other_name", ["a.safetensors", "model.safetensors", "a.bin"])
def test_two_weight_files_identity_names_the_file_that_is_loaded(tiny_model_dir, tiny_siglip_dir, tmp_path,
                                                                  other_name):
    """With two checkpoints in a directory, the identity hash and the loaded weights come from one file."""
    from mmretrieval.models.specs import sha256_file

    directory = tmp_path / "two"
    shutil.copytree(tiny_model_dir, directory)
    weights = directory / "open_clip_model.safetensors"
    other = tiny_siglip_dir / "open_clip_model.safetensors"  # same shapes apart from logit_bias
    if other_name.endswith(".bin"):
        from safetensors.torch import load_file

        state = {k: v for k, v in load_file(str(other)).items() if k != "logit_bias"}
        torch.save(state, directory / other_name)
    else:
        shutil.copy(other, directory / other_name)
    weights.rename(directory / "open_clip_pytorch_model.safetensors")  # a name open_clip prefers to other_name
    encoder = load_encoder(str(directory), device="cpu")
    from safetensors.torch import load_file

    loaded_file = directory / "open_clip_pytorch_model.safetensors"
    expected = load_file(str(loaded_file))["token_embedding.weight"]
    assert torch.equal(encoder.model.token_embedding.weight.detach().cpu(), expected.float())
    assert encoder.identity.weights == sha256_file(loaded_file)


def test_missing_directory_config_and_weights(tmp_path, tiny_model_dir):
    with pytest.raises(ModelSpecError, match="does not exist"):
        load_encoder(str(tmp_path / "nowhere"), device="cpu")
    with pytest.raises(ModelSpecError, match="open_clip_config.json is missing"):
        load_encoder(str(tmp_path), device="cpu")
    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    shutil.copy(tiny_model_dir / "open_clip_config.json", no_weights)
    with pytest.raises(ModelSpecError, match="no weights"):
        load_encoder(str(no_weights), device="cpu")


def test_unknown_architecture_suggests_close_names():
    with pytest.raises(ModelSpecError, match="Did you mean ViT-B-32"):
        load_encoder("ViT-B-33", device="cpu")


def test_unknown_pretrained_tag_lists_known_ones():
    with pytest.raises(ModelSpecError, match="laion2b_s34b_b79k"):
        load_encoder("ViT-B-32:no-such-tag", device="cpu")


@pytest.mark.parametrize("spec", ["ViT-B-32:laion2b_s34b_b79k", "hf-hub:timm/ViT-B-16-SigLIP2"])
def test_uncached_download_offline_gives_a_clear_error(spec):
    with pytest.raises(ModelNotCachedError) as caught:
        load_encoder(spec, device="cpu")
    message = str(caught.value)
    assert spec in message and "not in the Hugging Face cache" in message
    assert "builtin:shapes" in message and "local directory" in message


def test_device_resolution():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    if not torch.cuda.is_available():
        with pytest.raises(ModelSpecError, match="no CUDA GPU"):
            resolve_device("cuda:0")
    with pytest.raises(ModelSpecError, match="unknown device"):
        resolve_device("tpu-ish")


def test_non_rgb_pil_images_are_converted(tiny_encoder):
    grey = Image.new("L", (40, 40), 128)
    rgb = Image.new("RGB", (40, 40), (128, 128, 128))
    np.testing.assert_allclose(tiny_encoder.encode_images([grey]), tiny_encoder.encode_images([rgb]), atol=1e-6)


@pytest.mark.parametrize("preprocess", [
    {"resize_mode": "squash"},
    {"resize_mode": "longest", "fill_color": 0},
    {"resize_mode": "shortest", "interpolation": "bilinear"},
])
def test_every_resize_mode_matches_open_clip(tiny_model_dir, tmp_path, preprocess):
    directory = shutil.copytree(tiny_model_dir, tmp_path / "m")
    config = json.loads((directory / "open_clip_config.json").read_text())
    (directory / "open_clip_config.json").write_text(json.dumps({**config, "preprocess_cfg": preprocess}))
    encoder = load_encoder(str(directory), device="cpu")
    _, _, reference = open_clip.create_model_and_transforms(f"local-dir:{directory}")
    image = scenes.generate(4, 0, size=90).image.resize((90, 60))  # not square, so the modes differ
    # Undo open_clip's Normalize to get back the uint8 pixels it resized and cropped.
    expected = (reference(image) * encoder.normalise.std.view(3, 1, 1) + encoder.normalise.mean.view(3, 1, 1)).round()
    np.testing.assert_array_equal(encoder.preparer(image), expected.numpy())


def test_a_relative_model_directory_is_recorded_absolute(tiny_model_dir, monkeypatch):
    monkeypatch.chdir(tiny_model_dir.parent)
    encoder = load_encoder(tiny_model_dir.name, device="cpu")
    assert encoder.identity.spec == str(tiny_model_dir)  # a collection can reload it from any directory


def test_registry_architecture_with_a_checkpoint_file(tiny_model_dir, tmp_path):
    config_file = tmp_path / "mmr-tiny-ckpt.json"
    config_file.write_text(json.dumps(TINY_MODEL_CFG))
    open_clip.add_model_config(config_file)
    reference = load_encoder(str(tiny_model_dir), device="cpu")
    checkpoint = tmp_path / "weights.pt"
    torch.save(reference.model.state_dict(), checkpoint)
    encoder = load_encoder(f"mmr-tiny-ckpt:{checkpoint}", device="cpu")
    np.testing.assert_allclose(encoder.encode_texts(["x"]), reference.encode_texts(["x"]), atol=1e-6)
    assert len(encoder.identity.weights) == 64  # the file's sha256, not the path


def test_pil_images_and_files_are_converted_alike(tiny_encoder, tmp_path):
    rgba = Image.new("RGBA", (40, 40), (255, 0, 0, 0))  # fully transparent red: white once composited
    rgba.save(tmp_path / "clear.png")
    grey16 = Image.fromarray(np.full((40, 40), 30000, dtype=np.uint16))
    grey16.save(tmp_path / "grey16.png")
    for image, path in ((rgba, "clear.png"), (grey16, "grey16.png")):
        np.testing.assert_allclose(tiny_encoder.encode_images([image]),
                                   tiny_encoder.encode_images([tmp_path / path]), atol=1e-6)


def test_a_saved_model_directory_has_the_modes_the_umask_allows(tmp_path):
    import os
    import stat

    import open_clip
    from conftest import TINY_MODEL_CFG

    from mmretrieval.models.loading import save_model_dir
    from mmretrieval.models.specs import CONFIG_NAME, WEIGHTS_NAME

    previous = os.umask(0o027)
    try:
        directory = save_model_dir(open_clip.CLIP(**TINY_MODEL_CFG), TINY_MODEL_CFG, tmp_path / "m")
    finally:
        os.umask(previous)
    modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in directory.iterdir()}
    assert modes == {CONFIG_NAME: 0o640, WEIGHTS_NAME: 0o640}  # shareable with the group, as any other file


def test_bf16_vectors_do_not_depend_on_their_batch_and_stay_close_to_float32():
    """A bf16 encoder (built directly: emulated bf16 runs on any CPU, only slower) gives an image or a text the
    same vector alone as among others, at any place in a batch; alone it runs as a batch of two, since CPU bf16
    kernels compute a single row another way (up to 9e-4 off with this model)."""
    from mmretrieval.models.encoder import DualEncoder
    from mmretrieval.models.loading import load_model

    cpu = torch.device("cpu")
    half = DualEncoder(load_model(ModelSpec.parse("builtin:shapes"), device=cpu, precision="pure_bf16"), cpu)
    full = load_encoder("builtin:shapes", device="cpu", precision="fp32")
    assert half.dtype == torch.bfloat16 and full.dtype == torch.float32
    images = [scenes.generate(5, i, varied=True).image for i in range(7)]
    together = half.encode_images(images, batch_size=7)
    np.testing.assert_allclose(half.encode_images(images[:1]), together[:1], atol=1e-6)
    np.testing.assert_allclose(half.encode_images(images[3:5], batch_size=2), together[3:5], atol=1e-6)
    texts = ["a red circle", "two blue squares in the top left", "a star", "x"]
    np.testing.assert_allclose(half.encode_texts(texts[1:2]), half.encode_texts(texts)[1:2], atol=1e-6)
    cosines = np.sum(together * full.encode_images(images), axis=1)
    assert cosines.min() > 0.999 and np.abs(together - full.encode_images(images)).max() < 1e-2
