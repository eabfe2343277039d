"""Opening a collection folder: finding (or making) its catalog, and settling which model goes with it.

A collection remembers the identity of the model that made its vectors; a model asked for later must be that
model, or the open is refused with what to do instead (immich once left old photos unsearchable after a model
switch). The model is loaded here only when it is asked for by spec, or when a new collection records it.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from ..atomic import exclusive_lock
from ..errors import CatalogFull, CollectionBusy, CollectionError, ModelSpecError
from ..models.specs import ModelIdentity, ModelSpec
from .catalog import CATALOG_NAME, DTYPE_KEY, LOCK_NAME, Catalog, writer_busy
from .confidence import CACHE_NAME as CONFIDENCE_CACHE, OLD_CACHE_NAME as OLD_CONFIDENCE_CACHE
from .index_manifest import MANIFEST_NAME as INDEX_MANIFEST_NAME, read_manifest
from .segment_files import MANIFEST_NAME as SEGMENTS_MANIFEST, SEGMENTS_DIRNAME
from .segments import check_dtype

if TYPE_CHECKING:
    from ..models.encoder import DualEncoder

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "builtin:shapes"  # a new collection's model when none is asked for


@dataclass(frozen=True)
class OpenedFolder:
    """A collection folder's open catalog and model; the caller owns the catalog (and closes it)."""

    directory: Path  # absolute
    catalog: Catalog
    identity: ModelIdentity  # the model that made (or will make) the vectors
    encoder: DualEncoder | None  # loaded only when asked for by spec, or for a new collection
    made_now: bool  # this open made the folder


def open_folder(directory: str | bytes | os.PathLike, model: str | os.PathLike | DualEncoder | None, *, create: bool,
                device: str, read_only: bool, vector_dtype: str, precision: str, writer: str | None,
                wait: bool = False) -> OpenedFolder:
    """Open (or with ``create`` make) the catalog in ``directory`` and settle its model.

    Arguments as for :meth:`~mmretrieval.collection.collection.Collection.open`.

    Raises:
        CollectionError: no collection there (and ``create`` is false), a file where the folder should be,
            ``model`` is not the model that built it, or (with ``writer``) another writer is at work.
        ModelSpecError, ModelNotCachedError: the model cannot be loaded.
    """
    model = _model_argument(model)
    if not isinstance(directory, (str, bytes, os.PathLike)):
        raise CollectionError(f"a collection is a folder's path, got {directory!r}")
    directory = Path(os.fsdecode(directory)).expanduser().absolute()  # bytes too, as ingest's sources
    catalog_path = directory / CATALOG_NAME
    if directory.exists() and not directory.is_dir():
        raise CollectionError(f"{directory} is not a directory; a collection is a folder, "
                              "pass a new or existing collection folder as --collection")
    made_now = False
    existed = catalog_path.is_file()
    if existed and catalog_path.stat().st_size == 0:  # a failed copy or restore, as SQLite would take it: new
        refuse_orphaned_data(directory, "empty")
        refuse_foreign_files(directory)
    if not existed:
        if not create:
            refuse_orphaned_data(directory, "missing")
            raise CollectionError(f"no collection at {directory}; create one with "
                                  f"`mmr ingest SOURCE --collection {directory}` (in Python: "
                                  "Collection.open(..., create=True))")
        model, made_now = _make_folder(directory, model, device, vector_dtype, precision)
    writable = not read_only and os.access(directory, os.W_OK)
    try:
        catalog = _open_catalog(catalog_path, writable, reader=writer is None and existed)
    except BaseException:
        if made_now:
            _remove_made_folder(directory)
        raise
    try:
        if writable and catalog.get_meta(DTYPE_KEY) is None:
            check_dtype(vector_dtype)
            with catalog.transaction():
                catalog.set_meta(DTYPE_KEY, vector_dtype)
        if writer is not None and writable and not made_now and not wait:
            # fail now, before the model and index load for nothing; the writer's own lock still decides
            with exclusive_lock(directory / LOCK_NAME, writer_busy(directory, writer)):
                pass
        encoder, identity = _settle_model(catalog, model, create, device, precision, directory,
                                          record_moves=writer is not None and catalog.writable)
    except BaseException:
        catalog.close()
        if made_now:
            _remove_made_folder(directory)
        raise
    return OpenedFolder(directory, catalog, identity, encoder, made_now)


def _make_folder(directory: Path, model: str | DualEncoder | None, device: str, vector_dtype: str,
                 precision: str) -> tuple[DualEncoder, bool]:
    """Make a new collection's folder, its model loaded first (a model that fails to load leaves no empty
    collection); returns the model and whether the folder is new (else it was there, empty or not ours)."""
    refuse_orphaned_data(directory, "missing")
    refuse_foreign_files(directory)
    check_dtype(vector_dtype)
    if model is None or isinstance(model, str):
        model = _load(model or DEFAULT_MODEL, device=device, precision=precision)
    made_now = not directory.exists()
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CollectionError(f"cannot create the collection folder {directory}: {exc.strerror}") from exc
    return model, made_now


def refuse_orphaned_data(directory: Path, catalog_state: str) -> None:
    """Refuse to start a catalog in a folder that holds a lost catalog's vectors or index (``catalog_state``:
    ``missing``, ``empty``, or what else is wrong with it, for the message).

    The catalog says which image each stored vector is; a new one would number the images afresh, so an old
    index would name the wrong images, and the old segments would be removed as an interrupted write's
    leftovers (a walkthrough saw both after moving a catalog away and ingesting again).

    Raises:
        CollectionError: ``segments/`` or an index manifest is there.
    """
    found = [name for name, there in ((f"{SEGMENTS_DIRNAME}/", _holds_segments(directory / SEGMENTS_DIRNAME)),
                                      (INDEX_MANIFEST_NAME, read_manifest(directory) is not None)) if there]
    if found:
        raise CollectionError(
            f"the catalog of {directory} is {catalog_state}, but the folder still holds {' and '.join(found)} from "
            f"one: those vectors cannot be used without the catalog that says which image each is. Restore "
            f"{CATALOG_NAME} from a backup, or start over: move the folder away and ingest into a new --collection "
            "(nothing was changed)")


def refuse_foreign_files(directory: Path) -> None:
    """Refuse to start a catalog in a folder holding files that are not a collection's under the names a
    collection rewrites or removes: saving an index replaces ``index.json`` and removes every other
    ``index-*.faiss``, and the match hint's cache replaces ``confidence.npz`` (a folder of another tool's FAISS
    indexes, passed as ``--collection``, would lose them).

    Raises:
        CollectionError: naming the files.
    """
    names = (INDEX_MANIFEST_NAME, CONFIDENCE_CACHE, OLD_CONFIDENCE_CACHE)
    try:
        found = sorted(path.name for path in directory.iterdir()
                       if path.name in names or (path.name.startswith("index-") and path.name.endswith(".faiss")))
    except OSError:  # none yet, or not listable: making the catalog there says what is wrong
        return
    if found:
        shown = ", ".join(found[:3]) + (f" and {len(found) - 3} more" if len(found) > 3 else "")
        cache = (f" ({CONFIDENCE_CACHE} is the match hint's cache, maybe of a collection removed from there: "
                 "delete it to go on)" if set(found) <= {CONFIDENCE_CACHE, OLD_CONFIDENCE_CACHE} else "")
        raise CollectionError(
            f"{directory} holds {shown}, which a new collection there would overwrite or remove; pass a new or "
            f"empty folder as --collection (nothing was changed){cache}")


def _holds_segments(folder: Path) -> bool:
    """Whether ``folder`` holds a collection's segments: their manifest, or vector files (``000001.vec``)."""
    try:
        return any(entry.name == SEGMENTS_MANIFEST or entry.name.endswith((".vec", ".ids"))
                   for entry in folder.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError:  # cannot be listed: it may hold vectors, so it is not started afresh either
        return True


def _remove_made_folder(directory: Path) -> None:
    """Remove the folder this open made and could not make a catalog in (a full disk, a file size limit), so
    that it does not stand in the way of the corrected re-run; another process's first use of the same new
    folder holds its lock, and the folder is kept then."""
    try:
        with exclusive_lock(directory / LOCK_NAME, "busy"):
            shutil.rmtree(directory, ignore_errors=True)
    except (CollectionBusy, OSError):
        logger.debug("kept %s after its catalog failed to open", directory, exc_info=True)


def _open_catalog(path: Path, writable: bool, reader: bool) -> Catalog:
    """The catalog, writable if asked. On a full disk (where SQLite cannot make the file a writable open needs
    beside it) a ``reader`` gets it read-only instead, as on a read-only disk: searching needs no space.

    Raises:
        CatalogFull: the disk is full, and this is a writer, or the catalog cannot be read without space either.
    """
    try:
        return Catalog(path, writable=writable)
    except CatalogFull as full:
        if not (writable and reader):
            raise
        try:
            catalog = Catalog(path, writable=False)
        except CollectionError:
            raise full from None
        logger.warning("%s; opened it read-only for now: searches work, writes are refused", full)
        return catalog


def _settle_model(catalog: Catalog, model: str | DualEncoder | None, create: bool, device: str, precision: str,
                  directory: Path, record_moves: bool) -> tuple[DualEncoder | None, ModelIdentity]:
    """The model asked for (loaded) checked against the stored identity, or recorded as it for a new catalog.

    With ``record_moves`` (a writer), the same model found under another spec (its folder moved) is recorded
    under the new one: the recorded spec is where readers load it from, and the old place may be gone.
    """
    stored_json = catalog.get_meta("model_identity")
    stored = ModelIdentity.from_json(stored_json) if stored_json else None
    if stored is None:
        refuse_orphaned_data(directory, "without the model it was made with")
    if stored is None and model is None:
        if not create:
            raise CollectionError(f"{directory} has no model recorded yet: a first ingest may be creating it now "
                                  "(try again in a moment); otherwise run mmr ingest with --model SPEC")
        model = DEFAULT_MODEL
    if stored is not None and isinstance(model, str):
        refuse_another_builtin(stored, model, directory)  # before a model that cannot be the one loads (downloads)
    encoder = _load(model, device=device, precision=precision) if isinstance(model, str) else model
    if stored is None:
        with catalog.transaction():
            catalog.set_meta("model_identity", encoder.identity.to_json())
        return encoder, encoder.identity
    if encoder is None:
        return encoder, stored
    check_same_model(stored, encoder.identity, directory)
    if record_moves and encoder.identity.spec != stored.spec:
        moved = replace(stored, spec=encoder.identity.spec)  # the key leaves the spec out: it stays the same
        with catalog.transaction():
            catalog.set_meta("model_identity", moved.to_json())
        logger.warning("the model recorded for %s moved from %s to %s; recorded %s", directory, stored.spec,
                       moved.spec, moved.spec)
        return encoder, moved
    return encoder, stored


def load_recorded_encoder(identity: ModelIdentity, directory: Path, *, device: str,
                          precision: str) -> DualEncoder:
    """Load the model a collection recorded, checked to still be the model that made its vectors.

    Args:
        identity: the collection's recorded model identity.
        directory: the collection folder (named in messages).
        device: where to run the model.
        precision: its number format (:mod:`mmretrieval.models.precision`).

    Returns:
        The encoder, its vectors truncated to the recorded dimension.

    Raises:
        ModelSpecError: the recorded model directory or checkpoint file is gone (the message says how to record
            where it went), or the spec cannot be loaded otherwise.
        ModelNotCachedError, CheckpointError: as for :func:`~mmretrieval.models.encoder.load_encoder`.
        CollectionError: the spec now loads other weights than those that made the vectors.
    """
    missing = _missing_model_path(identity.spec)
    if missing is not None:
        raise ModelSpecError(
            f"{missing} does not exist; if it moved, run "
            f"`mmr ingest SOURCE --collection {directory} --model NEW_PLACE` once to record its new place")
    encoder = _load(identity.spec, device=device, dim=identity.embed_dim, precision=precision)
    check_same_model(identity, encoder.identity, directory)
    return encoder


def _model_argument(model: object) -> str | DualEncoder | None:
    """``model`` as a spec (a path made a string) or a loaded encoder.

    Raises:
        ModelSpecError: anything else.
    """
    if model is None or isinstance(model, str):
        return model
    if isinstance(model, os.PathLike):
        return os.fspath(model)
    from ..models.encoder import DualEncoder  # an object was given: whoever made it has imported torch

    if isinstance(model, DualEncoder):
        return model
    raise ModelSpecError(f"model must be a model spec (such as 'ViT-B-32:openai', 'builtin:shapes' or a model folder) "
                         f"or a loaded DualEncoder, got {type(model).__name__} {model!r:.60}")


def _load(spec: str, **settings: object) -> DualEncoder:
    """:func:`~mmretrieval.models.encoder.load_encoder`, imported when a model is needed: commands that need none
    (info, duplicates, export, index) never import torch."""
    from ..models.encoder import load_encoder

    return load_encoder(spec, **settings)


def _missing_model_path(spec: str) -> str | None:
    """The model folder or checkpoint file a recorded spec names, if that is no longer there."""
    try:
        parsed = ModelSpec.parse(spec)
    except ModelSpecError:
        return None  # load_encoder says what is wrong with it
    if parsed.kind == "local" and not Path(parsed.name).is_dir():
        return f"model directory {parsed.name}"
    if parsed.kind == "registry" and parsed.pretrained and os.path.isabs(parsed.pretrained) \
            and not os.path.exists(parsed.pretrained):
        return f"checkpoint file {parsed.pretrained}"
    return None


def refuse_another_builtin(stored: ModelIdentity, asked: str, directory: Path) -> None:
    """Refuse, before it loads, a spec that cannot name the stored model: a bundled model where a hub or registry
    model was used, or the other way round (other specs may name the same weights: ``hf-hub:`` and ``ARCH:TAG``
    alike, or a folder holding a copy, so only their loaded identities tell).

    Raises:
        CollectionError: as :func:`check_same_model` words it.
    """
    try:
        wanted, recorded = ModelSpec.parse(asked), ModelSpec.parse(stored.spec)
    except ModelSpecError:
        return  # the load says what is wrong with it
    kinds = (wanted.kind, recorded.kind)
    on_disk = "local" in kinds or any(spec.kind == "registry" and spec.pretrained and os.path.isabs(spec.pretrained)
                                      for spec in (wanted, recorded))  # a folder or file may hold a bundled model
    if "builtin" in kinds and not on_disk and wanted != recorded:
        raise CollectionError(_another_model(stored, asked, directory))


def check_same_model(stored: ModelIdentity, asked: ModelIdentity, directory: Path) -> None:
    """Refuse a model other than the one that made the collection's vectors.

    Raises:
        CollectionError: the identity keys differ; the message names both models and what to do.
    """
    if stored.key() == asked.key():
        return
    if stored.spec == asked.spec and stored.embed_dim != asked.embed_dim:
        raise CollectionError(
            f"collection {directory} holds {stored.embed_dim}-d vectors of {stored.spec}, you asked for "
            f"{asked.embed_dim}-d ones (--dim): leave out --dim to use the collection's dimension, or ingest into a "
            "new --collection directory")
    if stored.spec == asked.spec:  # nobody asked for another model: the weights at the recorded place changed
        raise CollectionError(changed_weights_message(stored, directory, f" (key {asked.key()})"))
    raise CollectionError(_another_model(stored, f"{asked.spec} (key {asked.key()}, {asked.embed_dim}-d)", directory))


def changed_weights_message(stored: ModelIdentity, directory: Path, new_key: str = "") -> str:
    """What to say when the place a collection's model was recorded from now holds other weights."""
    return (f"collection {directory} was built with the weights {stored.spec} held then (key {stored.key()}); "
            f"{stored.spec} now loads other weights{new_key}: re-ingest into a new collection, or point "
            "--model at the old weights when ingesting")


def _another_model(stored: ModelIdentity, asked: str, directory: Path) -> str:
    """What to say when the model ``asked`` for is not the one that made the collection's vectors."""
    return (f"collection {directory} was built with {stored.spec} (key {stored.key()}, {stored.embed_dim}-d), "
            f"you asked for {asked}; leave out --model to use the collection's own model, or ingest into a new "
            "--collection directory")
