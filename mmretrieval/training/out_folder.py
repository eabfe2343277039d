"""The ``--out`` folder of ``mmr train`` and ``mmr blend``: where a new model may go, and clearing the previous
model's files there, so that none of them outlives it (a blend beside an old run's ``train_log.jsonl`` would claim
a training run that never made it).

A folder is a model of ours when every file in it is one that train or blend writes (and the temporaries a killed
write of one left) and its ``open_clip_config.json``, if any, carries their notes (``training`` or ``blend``). Such
a folder is replaced; any other non-empty folder is refused unless forced, and even then only our files go.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..atomic import remove_orphans
from ..errors import MMRError
from ..models.specs import CONFIG_NAME, WEIGHTS_NAME

TRAIN_LOG_NAME = "train_log.jsonl"
MODEL_FILES = (CONFIG_NAME, WEIGHTS_NAME, TRAIN_LOG_NAME)  # every file that train and blend write


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


def clear_model_files(out: Path) -> None:
    """Delete a previous model's files from ``out`` (and what killed writes of them left), nothing else."""
    for name in MODEL_FILES:
        (out / name).unlink(missing_ok=True)
        remove_orphans(out / name)


def _ours(name: str) -> bool:
    """A file that train or blend writes, or a temporary of one (``.NAME.<owner>.<random>.tmp``)."""
    return name in MODEL_FILES or any(name.startswith(f".{known}.") and name.endswith(".tmp") for known in MODEL_FILES)


def _has_our_notes(config: Path) -> bool:
    try:
        notes = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(notes, dict) and ("training" in notes or "blend" in notes)
