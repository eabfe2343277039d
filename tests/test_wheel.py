"""Install anywhere: a wheel built from the repository carries the bundled model, and runs it from outside
the checkout with only the wheel's files (no editable install, no source tree on the path)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The package built as a wheel (offline, from a copy of the sources) and installed into a bare folder."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "mmretrieval", source / "mmretrieval", ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", "-q"]
    subprocess.run(pip + ["wheel", "--no-deps", "--no-build-isolation", "--no-index", str(source), "-w",
                          str(root / "dist")], check=True, cwd=root, timeout=600)
    wheel = next((root / "dist").glob("mmretrieval-*.whl"))
    target = root / "target"
    subprocess.run(pip + ["install", "--no-deps", "--no-index", "--target", str(target), str(wheel)], check=True,
                   timeout=600)
    return wheel, target


@pytest.mark.slow
def test_the_wheel_carries_the_bundled_model(installed):
    wheel, target = installed
    names = zipfile.ZipFile(wheel).namelist()
    for asset in ("open_clip_config.json", "open_clip_model.safetensors"):
        assert f"mmretrieval/assets/shapes/{asset}" in names
    assert (target / "mmretrieval" / "assets" / "shapes" / "open_clip_model.safetensors").is_file()


@pytest.mark.slow
def test_classify_with_the_builtin_model_from_outside_the_checkout(installed, tmp_path):
    _, target = installed
    work = tmp_path / "elsewhere"
    work.mkdir()
    Image.new("RGB", (96, 96), (220, 30, 30)).save(work / "red.png")
    # -S: no site-packages processing, so the checkout's editable install cannot answer the import;
    # dependencies come from the venv's site-packages, mmretrieval only from the wheel's target folder.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), sysconfig.get_paths()["purelib"]]),
           "HF_HUB_OFFLINE": "1", "MMR_ASSETS": "", "XDG_CACHE_HOME": str(tmp_path / "cache")}
    where = subprocess.run([sys.executable, "-S", "-c", "import mmretrieval; print(mmretrieval.__file__)"],
                           capture_output=True, text=True, cwd=work, env=env, timeout=120)
    assert Path(where.stdout.strip()).is_relative_to(target), where.stderr
    result = subprocess.run([sys.executable, "-S", "-m", "mmretrieval.cli", "classify", "red.png", "--model",
                             "builtin:shapes", "--labels", "red,green,blue", "--templates", "default", "--json"],
                            capture_output=True, text=True, cwd=work, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert '"label": "red"' in result.stdout.splitlines()[0]
    assert sorted(p.name for p in work.iterdir()) == ["red.png"]  # nothing written where it ran


def test_the_demo_cache_goes_to_the_user_cache_unless_told(monkeypatch, tmp_path):
    import argparse

    from mmretrieval.demo import default_demo_dir
    from mmretrieval.ui.server import add_serve_arguments, config_from_args

    monkeypatch.delenv("MMR_DEMO_DIR", raising=False)
    monkeypatch.delenv("MMR_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_demo_dir() == tmp_path / "xdg" / "mmretrieval" / "demo"
    assert not default_demo_dir().is_relative_to(REPO)
    monkeypatch.setenv("MMR_DEMO_DIR", str(tmp_path / "chosen"))
    assert default_demo_dir() == tmp_path / "chosen"
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    assert config_from_args(parser.parse_args(["--data-dir", str(tmp_path / "d")])).data_dir == tmp_path / "d"
    assert config_from_args(parser.parse_args([])).data_dir is None
