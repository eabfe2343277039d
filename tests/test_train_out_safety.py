"""`mmr train --out` and `mmr blend --out` over an existing model: the old model stays loadable until the new one
is complete, whatever stops the run (Ctrl-C, an error, a full disk), and a finished run replaces it whole."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest

from mmretrieval.models.encoder import load_encoder
from mmretrieval.training import scenes
from mmretrieval.training.train import TrainConfig, train

MODEL_NAMES = {"open_clip_config.json", "open_clip_model.safetensors", "train_log.jsonl"}


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> Path:
    """Eight captioned scenes: too few to hold any out, so checkpoints cost no scoring."""
    root = tmp_path_factory.mktemp("pairs")
    for i in range(8):
        example = scenes.generate(5, i)
        example.image.save(root / f"{i}.png")
        (root / f"{i}.txt").write_text(example.caption)
    return root


@pytest.fixture
def quick(tiny_model_dir, pairs) -> Callable[..., TrainConfig]:
    """A run of a few steps fine-tuning the tiny model on ``pairs`` into ``out``."""
    def config(out: Path, **given) -> TrainConfig:
        settings = {"steps": 2, "batch_size": 2, "workers": 0, "device": "cpu", "eval_every": 0, "warmup_steps": 1}
        return TrainConfig(out=str(out), init=str(tiny_model_dir), data=str(pairs), **{**settings, **given})
    return config


def _files(folder: Path) -> dict[str, bytes]:
    """Every entry of ``folder`` (hidden ones included) with its bytes; folders as b"<dir>"."""
    return {p.name: (b"<dir>" if p.is_dir() else p.read_bytes()) for p in folder.iterdir()}


def _assert_loads_as(folder: Path, files: dict[str, bytes]) -> None:
    """``folder`` holds exactly ``files``, byte for byte, and loads as a model with the project's loader."""
    assert _files(folder) == files
    assert load_encoder(str(folder), device="cpu").encode_texts(["a red circle"]).shape[0] == 1


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.fixture
def old_model(tmp_path, quick) -> tuple[Path, dict[str, bytes]]:
    """A model folder that an earlier `mmr train` wrote, and its files."""
    out = train(quick(tmp_path / "m", seed=7))
    assert set(_files(out)) == MODEL_NAMES
    return out, _files(out)


@pytest.fixture
def fine_tune(tmp_path, quick) -> Path:
    """Another model that train wrote, to blend with the tiny model it started from."""
    return train(quick(tmp_path / "ft", seed=3))


def _blend(fine_tune: Path, init: Path, out: Path, **given) -> Path:
    from mmretrieval.training.blend import blend_models

    return blend_models(str(fine_tune), str(init), 0.5, out, half=False, **given)


def _interrupt(entry) -> None:
    raise KeyboardInterrupt


def _interrupt_at_step_2(entry) -> None:  # after checkpoints of steps 1 and 2 were saved (aside)
    if entry.step == 2:
        raise KeyboardInterrupt


@pytest.mark.parametrize("stop", ["ctrl-c", "error"])
def test_a_run_stopped_mid_training_leaves_the_old_model_loadable(old_model, quick, monkeypatch, stop):
    import mmretrieval.training.train as train_module

    out, before = old_model
    if stop == "ctrl-c":
        with pytest.raises(KeyboardInterrupt):
            train(quick(out, steps=4, eval_every=1), on_log=_interrupt_at_step_2)
    else:
        def broken_scoring(*args, **kwargs):
            raise RuntimeError("boom")

        monkeypatch.setattr(train_module, "_held_out_score", broken_scoring)
        with pytest.raises(RuntimeError, match="boom"):
            train(quick(out))
    _assert_loads_as(out, before)  # nothing left aside either


def test_while_a_run_trains_the_old_model_loads_and_the_new_log_grows_aside(old_model, quick):
    out, before = old_model
    seen = []

    def check(entry) -> None:
        visible = {name: data for name, data in _files(out).items() if not name.startswith(".")}
        assert visible == before  # the old model, whole, its own log included
        load_encoder(str(out), device="cpu")
        logs = list(out.glob(".new-model.*.partial/train_log.jsonl"))  # `tail -f` this (README)
        assert len(logs) == 1
        seen.append(json.loads(logs[0].read_text().splitlines()[-1])["step"])

    train(quick(out, steps=3, eval_every=1), on_log=check)
    assert seen == [0, 1, 2]


@pytest.mark.parametrize("command", ["train", "blend"])
def test_a_full_disk_at_save_time_leaves_the_old_model_loadable(old_model, quick, tiny_model_dir, fine_tune, monkeypatch,
                                                                command):
    import mmretrieval.training.blend as blend_module
    import mmretrieval.training.train as train_module

    out, before = old_model

    def full_disk(model, model_cfg, directory, **kwargs):
        (Path(directory) / "open_clip_model.safetensors").write_bytes(b"half a file")  # what a plain write leaves
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(train_module if command == "train" else blend_module, "save_model_dir", full_disk)
    with pytest.raises(OSError, match="No space left"):
        if command == "train":
            train(quick(out))
        else:
            _blend(fine_tune, tiny_model_dir, out)
    _assert_loads_as(out, before)




def test_a_finished_run_replaces_the_old_model_whole(old_model, quick, tiny_model_dir, fine_tune):
    out, before = old_model
    _blend(fine_tune, tiny_model_dir, out)  # a blend writes no log: the old run's must not stay beside it
    after_blend = _files(out)
    assert set(after_blend) == {"open_clip_config.json", "open_clip_model.safetensors"}
    assert after_blend["open_clip_model.safetensors"] != before["open_clip_model.safetensors"]
    assert "blend" in json.loads(after_blend["open_clip_config.json"])
    _assert_loads_as(out, after_blend)

    train(quick(out, steps=3, seed=5))  # and a training run over the blend
    after_train = _files(out)
    assert set(after_train) == MODEL_NAMES
    assert after_train["open_clip_model.safetensors"] not in (before["open_clip_model.safetensors"],
                                                             after_blend["open_clip_model.safetensors"])
    notes = json.loads(after_train["open_clip_config.json"])
    assert "blend" not in notes and notes["training"]["seed"] == 5
    assert [json.loads(line)["step"] for line in after_train["train_log.jsonl"].splitlines()] == [0, 2]
    _assert_loads_as(out, after_train)


def test_a_stopped_blend_leaves_the_old_model_and_forced_foreign_files(old_model, quick, tiny_model_dir, fine_tune,
                                                                       monkeypatch):
    import mmretrieval.training.blend as blend_module

    out, before = old_model
    (out / "notes.txt").write_text("mine")
    before = _files(out)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(blend_module, "save_model_dir", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _blend(fine_tune, tiny_model_dir, out, force=True)
    _assert_loads_as(out, before)
    monkeypatch.undo()
    _blend(fine_tune, tiny_model_dir, out, force=True)
    assert set(_files(out)) == {"notes.txt", "open_clip_config.json", "open_clip_model.safetensors"}
    assert (out / "notes.txt").read_text() == "mine"


def test_a_second_run_into_the_same_out_is_refused_while_the_first_writes(old_model, quick, tiny_model_dir, fine_tune):
    """Two runs' renames could interleave into one model's config beside the other's weights: the second is refused
    at once (exit 75 from the command line, as a busy collection), and the first ends as if alone."""
    from mmretrieval.cli import EXIT_BUSY
    from mmretrieval.errors import Busy

    out, _ = old_model
    statuses = []

    def second_run(entry) -> None:
        if entry.step == 1:
            other = subprocess.run([sys.executable, "-m", "mmretrieval.cli", "blend", str(fine_tune),
                                    str(tiny_model_dir), "--keep-init", "0.5", "--out", str(out)],
                                   capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
            statuses.append(other.returncode)
            errors.append(other.stderr)
            with pytest.raises(Busy, match="this thread already holds"):  # in this thread: would wait for itself
                _blend(fine_tune, tiny_model_dir, out)

    errors: list[str] = []
    train(quick(out, steps=3, eval_every=1, seed=5), on_log=second_run)
    assert statuses == [EXIT_BUSY]
    assert "being written by another mmr train or blend" in errors[0]
    assert json.loads((out / "open_clip_config.json").read_text())["training"]["seed"] == 5
    assert set(_files(out)) == MODEL_NAMES
    _blend(fine_tune, tiny_model_dir, out)  # once the first is done, the folder is free
    assert "blend" in json.loads((out / "open_clip_config.json").read_text())


def test_a_failed_first_run_leaves_no_folder(tmp_path, quick):
    with pytest.raises(KeyboardInterrupt):
        train(quick(tmp_path / "new"), on_log=_interrupt)
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("force", [False, True])
def test_a_collection_is_refused_as_out_even_with_force(tmp_path, quick, tiny_model_dir, force):
    """--out on a collection's folder suggested --force to write the model beside its files (a walkthrough)."""
    from mmretrieval.errors import MMRError
    from mmretrieval.training.blend import blend_models

    (tmp_path / "col").mkdir()
    (tmp_path / "col" / "catalog.sqlite").write_bytes(b"")
    with pytest.raises(MMRError, match="is a collection; name another folder for the model"):
        train(quick(tmp_path / "col"), force=force)
    with pytest.raises(MMRError, match="is a collection; name another folder for the model"):
        blend_models(str(tiny_model_dir), str(tiny_model_dir), 0.5, tmp_path / "col", force=force)
    assert [p.name for p in (tmp_path / "col").iterdir()] == ["catalog.sqlite"]


def test_a_first_run_stopped_with_ctrl_c_keeps_its_last_checkpoint(tmp_path, quick):
    """With no model to protect in OUT, Ctrl-C keeps the latest checkpoint rather than hours of training lost."""
    out = tmp_path / "new"
    with pytest.raises(KeyboardInterrupt):
        train(quick(out, steps=4, eval_every=1), on_log=_interrupt_at_step_2)
    assert set(_files(out)) == MODEL_NAMES  # nothing left aside
    saved = json.loads((out / "open_clip_config.json").read_text())["training"]["saved_at_step"]
    assert saved == 1 and load_encoder(str(out), device="cpu").encode_texts(["a red circle"]).shape[0] == 1


def test_what_a_killed_run_left_aside_is_removed_by_the_next_run(old_model, quick):
    out, before = old_model
    left = []

    def kill(entry) -> None:  # copy what this run has put aside as if its process had died (SIGKILL)
        for aside in out.iterdir():
            if aside.name.startswith(".") and f"~{os.getpid()}." in aside.name:
                dead = out / aside.name.replace(f"~{os.getpid()}.", f"~{_dead_pid()}.")
                shutil.copytree(aside, dead) if aside.is_dir() else shutil.copy(aside, dead)
                left.append(dead)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(quick(out), on_log=kill)
    assert left and all(path.exists() for path in left)
    train(quick(out))  # not refused as foreign files; they are cleaned up
    assert set(_files(out)) == MODEL_NAMES


class _Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs in the process, no cleanup that catches Exception either."""


def _new_model_kept_by_dead_run(out: Path) -> Path:
    """The hidden folder a killed run left, renamed as if its process had died (as after SIGKILL)."""
    kept = list(out.glob(f".new-model.*~{os.getpid()}.*.partial"))
    assert len(kept) == 1, "a move that had started was deleted: the new config is lost"
    dead = out / kept[0].name.replace(f"~{os.getpid()}.", f"~{_dead_pid()}.")
    kept[0].rename(dead)
    return dead


@pytest.mark.parametrize("command", ["train", "blend"])
def test_a_run_killed_mid_move_is_finished_by_the_next_run(old_model, quick, tiny_model_dir, fine_tune, monkeypatch,
                                                           command):
    """Killed after the old config went and the new weights came in: `out` holds no config, the only copy of the
    new one is aside. The next run must move it in (the old log goes if the new model has none), not delete it."""
    import mmretrieval.training.out_folder as out_folder_module
    from mmretrieval.training.out_folder import model_written_aside

    out, before = old_model
    real_replace = os.replace

    def killed_after_the_weights(source, target):
        real_replace(source, target)
        if Path(target) == out / "open_clip_model.safetensors":  # not the write aside: the rename into out
            raise _Killed

    monkeypatch.setattr(out_folder_module.os, "replace", killed_after_the_weights)
    with pytest.raises(_Killed):
        if command == "train":
            train(quick(out, steps=3, seed=5))
        else:
            _blend(fine_tune, tiny_model_dir, out)
    monkeypatch.undo()
    aside = _new_model_kept_by_dead_run(out)
    new_config = (aside / "open_clip_config.json").read_bytes()
    new_weights = _files(out)["open_clip_model.safetensors"]  # renamed in before the kill
    expected = {"open_clip_config.json": new_config, "open_clip_model.safetensors": new_weights}
    if command == "train":
        expected["train_log.jsonl"] = (aside / "train_log.jsonl").read_bytes()
    assert "open_clip_config.json" not in _files(out) and new_weights != before["open_clip_model.safetensors"]
    from mmretrieval.errors import ModelSpecError
    from mmretrieval.models.specs import read_dir_config

    with pytest.raises(ModelSpecError, match="stopped while moving its new model in; the next train or blend with"):
        read_dir_config(out)  # what every reader says meanwhile (it said only "open_clip_config.json is missing")

    said: list[str] = []  # the warning, read from the module's logger whatever logging the session set up
    monkeypatch.setattr(out_folder_module.logger, "warning", lambda message, *args: said.append(message % args))
    with pytest.raises(RuntimeError, match="stopped"):  # the next run fails before it has a model of its own
        with model_written_aside(out):
            raise RuntimeError("stopped")
    assert len(said) == 1 and "finishing the move" in said[0] and str(out) in said[0]
    _assert_loads_as(out, expected)  # the killed run's model, whole; its hidden folder gone
    assert ("blend" in json.loads(new_config)) == (command == "blend")

    train(quick(out, seed=9))  # and a run after it replaces it as usual
    assert set(_files(out)) == MODEL_NAMES
    assert json.loads((out / "open_clip_config.json").read_text())["training"]["seed"] == 9


def test_a_killed_run_that_had_not_touched_the_old_model_is_removed(old_model, tiny_model_dir, fine_tune, monkeypatch):
    """Killed before the old config went: the old model is whole, and what the run left aside is deleted."""
    import mmretrieval.training.out_folder as out_folder_module

    out, before = old_model
    real_unlink = Path.unlink

    def killed_before_the_old_config_goes(self, *args, **kwargs):
        if self == out / "open_clip_config.json":
            raise _Killed
        real_unlink(self, *args, **kwargs)

    monkeypatch.setattr(out_folder_module.Path, "unlink", killed_before_the_old_config_goes)
    with pytest.raises(_Killed):
        _blend(fine_tune, tiny_model_dir, out)
    monkeypatch.undo()
    for aside in out.glob(f".new-model.*~{os.getpid()}.*.partial"):  # as if its process had died
        aside.rename(out / aside.name.replace(f"~{os.getpid()}.", f"~{_dead_pid()}."))
    from mmretrieval.training.out_folder import model_written_aside

    with pytest.raises(RuntimeError):
        with model_written_aside(out):
            raise RuntimeError("stopped")
    _assert_loads_as(out, before)


@pytest.mark.parametrize("signum", ["SIGINT", "SIGTERM"])
def test_a_signal_during_the_move_waits_until_the_move_is_done(old_model, tiny_model_dir, fine_tune, monkeypatch,
                                                                signum):
    import signal

    import mmretrieval.training.out_folder as out_folder_module

    class Terminated(Exception):
        pass

    def terminated(*args) -> None:
        raise Terminated

    out, _ = old_model
    real_replace = os.replace
    delivered = []

    def signalled_mid_move(source, target):
        if Path(target) == out / "open_clip_model.safetensors":
            signal.raise_signal(getattr(signal, signum))  # Ctrl-C (or kill) between two renames
            delivered.append(signum)
        real_replace(source, target)

    monkeypatch.setattr(out_folder_module.os, "replace", signalled_mid_move)
    previous = signal.signal(signal.SIGTERM, terminated)
    try:
        with pytest.raises(KeyboardInterrupt if signum == "SIGINT" else Terminated):
            _blend(fine_tune, tiny_model_dir, out)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert delivered == [signum]
    after = _files(out)
    assert set(after) == {"open_clip_config.json", "open_clip_model.safetensors"}  # moved in whole, nothing aside
    assert "blend" in json.loads(after["open_clip_config.json"])
    _assert_loads_as(out, after)
