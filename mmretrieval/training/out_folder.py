"""The ``--out`` folder of ``mmr train`` and ``mmr blend``: where a new model may go, and how it replaces the
previous model there: whole, so that no file of the old one outlives it (a blend beside an old run's
``train_log.jsonl`` would claim a training run that never made it), and only once the new one is complete, so that
an interrupted run or a full disk leaves the old model loadable.

A folder is a model of ours when every file in it is one that train or blend writes (and what a killed run of
theirs left) and its ``open_clip_config.json``, if any, carries their notes (``training`` or ``blend``). Such
a folder is replaced; any other non-empty folder is refused unless forced, and even then only our files go.

A move, once started, is finished. Before its first rename a run writes ``move.json`` (the names of the new
model's files) in its hidden folder, and holds SIGINT and SIGTERM until the last rename is done (microseconds),
so Ctrl-C cannot land between two renames. A run killed there anyway (SIGKILL, power cut) leaves ``out``
without a config and the rest of the new model aside, its ``move.json`` beside it: the next
:func:`model_written_aside` on ``out`` recognises the move as started by exactly that (a dead run's hidden folder
holding ``move.json`` and a config, while ``out`` holds none) and finishes it, with a warning, before it removes
what dead runs left. A run that died before its first rename left ``out`` with its config and the old model
whole: its hidden folder is removed like any other, and so is one whose move ended.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import threading
from pathlib import Path
from typing import Iterator

from ..atomic import atomic_write_text, exclusive_lock, fsync_dir, orphans, remove_orphans, scratch_folder
from ..collection.catalog import is_collection
from ..errors import Busy, MMRError
from ..models.specs import CONFIG_NAME, WEIGHTS_NAME

logger = logging.getLogger(__name__)

TRAIN_LOG_NAME = "train_log.jsonl"
MODEL_FILES = (CONFIG_NAME, WEIGHTS_NAME, TRAIN_LOG_NAME)  # every file that train and blend write
NEW_MODEL_NAME = "new-model"  # a run writes its model in OUT/.new-model.<owner>.<random>.partial/, then moves it up
MOVE_NAME = "move.json"  # in that folder once the move has started: the names of the new model's files


def check_out_folder(out: str | Path, force: bool = False) -> Path:
    """``out`` if a model may be written there: a new name, an empty folder, a model folder that train or blend
    wrote (it is replaced), or, with ``force``, any folder (its other files are kept).

    Raises:
        MMRError: ``out`` is a file, a collection, or a folder that holds anything else and ``force`` is false.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise MMRError(f"--out {out} is a file; name a folder for the model")
    if is_collection(out):  # not even with --force: a collection's folder is no model's place
        raise MMRError(f"--out {out} is a collection; name another folder for the model")
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

    Until then the previous model stays whole and loadable. On an exception the hidden folder is deleted (unless
    the move had started: it is then left for the next run to finish), and so is ``out`` if this created it and it
    is still empty; what a killed run (SIGKILL, power cut) left in ``out`` is deleted when the next run starts,
    after a move it had started is finished (see the module's notes). On Ctrl-C where ``out`` held no model, the
    last checkpoint saved in the hidden folder is moved in instead: there is nothing to protect, and hours of
    training are not thrown away.

    Raises:
        Busy: another run is writing a model into ``out``.
        MMRError: the block wrote no model.
        OSError: ``out`` cannot be written.
    """
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    busy = (f"--out {out} is being written by another mmr train or blend; run again when it is done, or choose "
            "another folder")
    try:
        with exclusive_lock(out, busy, busy=Busy):  # two runs' renames could leave one's config by the other's weights
            _finish_interrupted_move(out)
            had_model = (out / CONFIG_NAME).exists() or (out / WEIGHTS_NAME).exists()
            for name in (*MODEL_FILES, NEW_MODEL_NAME):
                remove_orphans(out / name)
            with scratch_folder(out / NEW_MODEL_NAME, keep=_move_unfinished) as new:
                try:
                    yield new
                except KeyboardInterrupt:
                    if not had_model and (new / CONFIG_NAME).is_file() and (new / WEIGHTS_NAME).is_file():
                        step = _log_cut_at_checkpoint(new)
                        _move_in(new, out)
                        logger.warning("interrupted: %s holds the last checkpoint saved%s", out,
                                       f", of step {step}" if step is not None else "")
                    raise
                _move_in(new, out)
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                out.rmdir()  # only if empty
        raise


def _log_cut_at_checkpoint(new: Path) -> int | None:
    """The step the checkpoint in ``new`` was saved at (its training notes), with the training log there cut to
    the lines up to it: the log runs on between checkpoints, and a model's log should not tell of steps its
    weights never took. None for a model without training notes."""
    try:
        step = json.loads((new / CONFIG_NAME).read_text(encoding="utf-8"))["training"]["saved_at_step"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    log = new / TRAIN_LOG_NAME
    if log.is_file():
        lines = log.read_text(encoding="utf-8").splitlines()
        atomic_write_text(log, "".join(f"{line}\n" for line in lines if _step_of(line) <= step))
    return step


def _step_of(line: str) -> float:
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):  # a line cut short by the interruption
        return float("inf")


def _move_in(new: Path, out: Path) -> None:
    """Rename the model files in ``new`` over those in ``out``, deleting the ones ``new`` lacks.

    Several renames cannot be one atomic step. The previous config goes first and the new one comes last, so that
    for the instant between them (a few renames in one folder) ``out`` holds no loadable model, never one model's
    config with another's weights; at every other instant it holds the whole old model or the whole new one.
    """
    if not (new / CONFIG_NAME).is_file() or not (new / WEIGHTS_NAME).is_file():
        raise MMRError(f"no model was written in {new}; {out} is left as it was")
    with _signals_held():
        names = [name for name in MODEL_FILES if (new / name).exists()]
        atomic_write_text(new / MOVE_NAME, json.dumps(names))  # from here on, the move is finished whatever happens
        _rename_in(new, out, names)


def _rename_in(new: Path, out: Path, names: list[str]) -> None:
    """The renames of :func:`_move_in`, of the new model whose files are ``names``. Run again after an
    interruption, it does what is left: a file no longer in ``new`` was renamed in already."""
    if (new / CONFIG_NAME).exists():
        (out / CONFIG_NAME).unlink(missing_ok=True)
    for name in (WEIGHTS_NAME, TRAIN_LOG_NAME, CONFIG_NAME):
        if (new / name).exists():
            os.replace(new / name, out / name)
        elif name not in names:
            (out / name).unlink(missing_ok=True)
    fsync_dir(out)


def _move_unfinished(new: Path) -> bool:
    """Whether ``new`` holds a model whose move into its folder started and did not end."""
    return (new / MOVE_NAME).is_file() and (new / CONFIG_NAME).is_file()


def _finish_interrupted_move(out: Path) -> None:
    """Finish the move into ``out`` that a dead run started (see the module's notes); a no-op if there is none.

    Raises:
        MMRError: that run's notes on the move cannot be read (its folder is left for a person to look at).
        OSError: ``out`` cannot be written.
    """
    if (out / CONFIG_NAME).exists():
        return  # no move was cut short: out holds a whole model (or one of ours moved in since)
    started = [left for left in orphans(out / NEW_MODEL_NAME) if left.is_dir() and _move_unfinished(left)]
    new = max(started, key=lambda left: (left / MOVE_NAME).stat().st_mtime, default=None)  # the latest move
    if new is None:
        return
    try:
        names = json.loads((new / MOVE_NAME).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MMRError(f"{new} holds a model whose move into {out} was cut short, but its {MOVE_NAME} cannot "
                       f"be read ({exc}); move its files into {out} by hand, then delete it") from exc
    if not (new / WEIGHTS_NAME).is_file() and not (out / WEIGHTS_NAME).is_file():
        return  # not a whole model: nothing to finish
    logger.warning("finishing the move of a new model into %s that a killed run started", out)
    with _signals_held():
        _rename_in(new, out, names)


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM for the block and deliver them after it, so that Ctrl-C cannot stop it half done.

    Python handlers, not a signal mask: the kernel gives a signal to any thread that does not block it (torch
    starts several), and Python would still raise KeyboardInterrupt in the main thread. Outside the main thread
    nothing is needed: Python runs signal handlers only there.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    held = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(signum) is not None:  # None: set outside Python, and could not be put back
            held[signum] = signal.signal(signum, lambda number, frame: caught.append(number))
    try:
        yield
    finally:
        for signum, handler in held.items():
            signal.signal(signum, handler)
        for signum in dict.fromkeys(caught):
            signal.raise_signal(signum)


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
