"""The ``--out`` folder of ``mmr train`` and ``mmr blend``: where a new model may go, and how it replaces the
previous model there: whole, so that no file of the old one outlives it (a blend beside an old run's
``train_log.jsonl`` would claim a training run that never made it), and only once the new one is complete, so that
an interrupted run or a full disk leaves the old model loadable.

A folder is a model of ours when every file in it is one that train or blend writes (and what a killed run of
theirs left) and its ``open_clip_config.json``, if any, carries their notes (``training`` or ``blend``). Such
a folder is replaced; any other non-empty folder is refused unless forced, and even then only our files go.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path
from typing import Iterator

from ..atomic import fsync_dir, remove_orphans, scratch_folder
from ..errors import MMRError
from ..models.specs import CONFIG_NAME, WEIGHTS_NAME

logger = logging.getLogger(__name__)

TRAIN_LOG_NAME = "train_log.jsonl"
MODEL_FILES = (CONFIG_NAME, WEIGHTS_NAME, TRAIN_LOG_NAME)  # every file that train and blend write
NEW_MODEL_NAME = "new-model"  # a run writes its model in OUT/.new-model.<owner>.<random>.partial/, then moves it up


def check_out_folder(out: str | Path, force: bool = False) -> Path:
    """``out`` if a model may be written there: a new name, an empty folder, a model folder that train or blend
    wrote (it is replaced), or, with ``force``, any folder (its other files are kept).

    Raises:
        MMRError: ``out`` is a file, or a folder that holds anything else and ``force`` is false.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise MMRError(f"--out {out} is a file; name a folder for the model")
    if force or not out.is_dir():
        return out
    try:
        others = sorted(entry.name for entry in out.iterdir() if not _ours(entry.name))
    except OSError as exc:
        raise MMRError(f"cannot read --out {out}: {exc.strerror or exc}") from exc
    if others:
        shown = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
        raise MMRError(f"--out {out} holds files that are not a model of mmr train or blend ({shown}); choose a "
                       "new folder, or pass --force to write the model beside them (they are kept)")
    config = out / CONFIG_NAME
    if config.exists() and not _has_our_notes(config):
        raise MMRError(f"--out {out} holds a model that mmr train or blend did not write ({CONFIG_NAME} has no "
                       "training or blend notes); choose a new folder, or pass --force to replace it")
    return out


@contextlib.contextmanager
def model_written_aside(out: Path) -> Iterator[Path]:
    """Yield a new hidden folder in ``out`` to write the model in; when the block ends without an exception, its
    files replace the previous model's in ``out`` (:func:`_move_in`), and a previous model's file that the new
    one lacks (a blend has no training log) is deleted. Other files in ``out`` are not touched.

    Until then the previous model stays whole and loadable. On an exception the hidden folder is deleted, and so
    is ``out`` if this created it and it is still empty; what a killed run (SIGKILL, power cut) left in ``out`` is
    deleted when the next run starts. On Ctrl-C where ``out`` held no model, the last checkpoint saved in the
    hidden folder is moved in instead: there is nothing to protect, and hours of training are not thrown away.

    Raises:
        MMRError: the block wrote no model.
        OSError: ``out`` cannot be written.
    """
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    had_model = (out / CONFIG_NAME).exists() or (out / WEIGHTS_NAME).exists()
    for name in (*MODEL_FILES, NEW_MODEL_NAME):
        remove_orphans(out / name)
    try:
        with scratch_folder(out / NEW_MODEL_NAME) as new:
            try:
                yield new
            except KeyboardInterrupt:
                if not had_model and (new / CONFIG_NAME).is_file() and (new / WEIGHTS_NAME).is_file():
                    _move_in(new, out)
                    logger.warning("interrupted: %s holds the last checkpoint saved", out)
                raise
            _move_in(new, out)
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                out.rmdir()  # only if empty
        raise


def _move_in(new: Path, out: Path) -> None:
    """Rename the model files in ``new`` over those in ``out``, deleting the ones ``new`` lacks.

    Several renames cannot be one atomic step. The previous config goes first and the new one comes last, so that
    for the instant between them (a few renames in one folder) ``out`` holds no loadable model, never one model's
    config with another's weights; at every other instant it holds the whole old model or the whole new one.
    """
    if not (new / CONFIG_NAME).is_file() or not (new / WEIGHTS_NAME).is_file():
        raise MMRError(f"no model was written in {new}; {out} is left as it was")
    (out / CONFIG_NAME).unlink(missing_ok=True)
    for name in (WEIGHTS_NAME, TRAIN_LOG_NAME, CONFIG_NAME):
        if (new / name).exists():
            os.replace(new / name, out / name)
        else:
            (out / name).unlink(missing_ok=True)
    fsync_dir(out)


def _ours(name: str) -> bool:
    """A file that train or blend writes, a temporary of one (``.NAME.<owner>.<random>.tmp``), or the hidden
    folder of a run that is writing a model (``.new-model.<owner>.<random>.partial``)."""
    return (name in MODEL_FILES or (name.startswith(f".{NEW_MODEL_NAME}.") and name.endswith(".partial"))
            or any(name.startswith(f".{known}.") and name.endswith(".tmp") for known in MODEL_FILES))


def _has_our_notes(config: Path) -> bool:
    try:
        notes = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(notes, dict) and ("training" in notes or "blend" in notes)
