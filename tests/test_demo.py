"""The cached demo collection follows the bundled model: new weights mean re-embedded vectors, not a refusal."""

from __future__ import annotations

import shutil

import torch

from mmretrieval import demo
from mmretrieval.collection.collection import Collection
from mmretrieval.models.specs import WEIGHTS_NAME


def test_a_changed_model_re_embeds_the_cached_demo(tmp_path, tiny_model_dir):
    model_dir = shutil.copytree(tiny_model_dir, tmp_path / "model")
    config = demo.DemoConfig(count=6, model=str(model_dir), image_size=48)
    root = tmp_path / "demo"
    first = demo.ensure_demo_collection(root, config, device="cpu")
    with Collection.open(first) as collection:
        old_vectors = collection.vectors()[1]

    from safetensors.torch import load_file, save_file
    weights = load_file(str(model_dir / WEIGHTS_NAME))
    save_file({k: v + 0.01 if v.is_floating_point() else v for k, v in weights.items()}, str(model_dir / WEIGHTS_NAME))
    assert not demo.is_ready(root, config)

    again = demo.ensure_demo_collection(root, config, device="cpu")
    with Collection.open(again, model=str(model_dir), device="cpu") as collection:
        ids, new_vectors = collection.vectors()
        assert len(ids) == 6 and not torch.allclose(torch.from_numpy(old_vectors), torch.from_numpy(new_vectors))


def test_a_demo_folder_that_cannot_be_made_says_how_to_choose_another(tmp_path, capsys, monkeypatch):
    """An unwritable cache, or $XDG_CACHE_HOME naming a file: one line that names --demo-dir, not a traceback."""
    from mmretrieval.cli import main

    (tmp_path / "cache").write_text("a file, not a folder")
    monkeypatch.delenv("MMR_DEMO_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert main(["serve", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "mmr serve: error: cannot make the demo folder" in err and "--demo-dir DIR or $MMR_DEMO_DIR" in err, err
