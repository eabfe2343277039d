"""Shared fixtures. Tests never touch the network and keep every cache and home directory in a temp dir."""

from __future__ import annotations

import os
import tempfile

_SANDBOX = tempfile.mkdtemp(prefix="mmr-tests-")
for _var in ("HOME", "XDG_CACHE_HOME", "XDG_DATA_HOME", "HF_HOME", "TORCH_HOME", "GRADIO_TEMP_DIR", "MPLCONFIGDIR"):
    os.environ[_var] = os.path.join(_SANDBOX, _var.lower())
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ.pop("MMR_COLLECTION", None)
os.environ.pop("MMR_DATA_DIR", None)

import pytest  # noqa: E402
import torch  # noqa: E402

# A registered-config-sized CLIP small enough that a test builds and runs it in well under a second.
TINY_MODEL_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A local open_clip model directory with random (seeded) tiny weights."""
    import open_clip

    from mmretrieval.models.loading import save_model_dir

    torch.manual_seed(0)
    model = open_clip.CLIP(**TINY_MODEL_CFG)
    return save_model_dir(model, TINY_MODEL_CFG, tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def tiny_encoder(tiny_model_dir):
    from mmretrieval.models.encoder import load_encoder

    return load_encoder(str(tiny_model_dir), device="cpu")


@pytest.fixture(scope="session")
def shapes_encoder():
    """The bundled demo model (mmretrieval/assets/shapes), for tests that assert real retrieval quality."""
    from mmretrieval.models.encoder import load_encoder

    return load_encoder("builtin:shapes", device="cpu")


@pytest.fixture(scope="session")
def tiny_siglip_dir(tmp_path_factory):
    """Like ``tiny_model_dir`` but SigLIP-style: the model has a learned ``logit_bias``."""
    import open_clip

    from mmretrieval.models.loading import save_model_dir

    torch.manual_seed(1)
    cfg = {**TINY_MODEL_CFG, "init_logit_bias": -10.0}
    model = open_clip.CLIP(**cfg)
    return save_model_dir(model, cfg, tmp_path_factory.mktemp("tiny-siglip"))


@pytest.fixture(scope="session")
def tiny_siglip_encoder(tiny_siglip_dir):
    from mmretrieval.models.encoder import load_encoder

    return load_encoder(str(tiny_siglip_dir), device="cpu")


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray on 2 CPUs for one test module (starting one costs seconds, so modules share it)."""
    ray = pytest.importorskip("ray")
    # address="local": a new Ray even where a `ray start` cluster (or its stale address file) is around
    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=200 * 1024**2,
             log_to_driver=False)
    yield ray
    ray.shutdown()


# The web UI's handlers over the module's own ``context`` fixture (an AppContext on the module's collection).
@pytest.fixture(scope="module")
def search(context):
    from mmretrieval.ui.search_handlers import SearchHandlers

    return SearchHandlers(context)


@pytest.fixture(scope="module")
def manage(context):
    from mmretrieval.ui.collection_handlers import CollectionHandlers

    return CollectionHandlers(context)


# Debian's Chromium (Playwright's own browser download does not work here), for the browser tests.
CHROMIUM = os.environ.get("MMR_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def browser():
    """A headless Chromium for one test module."""
    from pathlib import Path

    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: install Debian's chromium (.ci/run does)"
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()
