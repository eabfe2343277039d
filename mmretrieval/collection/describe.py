"""What ``mmr info`` shows: a collection's model, counts, index and storage, from the catalog's answers.

Nothing here loads vectors or the index: the index is described by a manifest the caller passes (the one it
holds, or the one saved on disk).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ..errors import CollectionError
from ..models.specs import ModelIdentity
from ..wording import counted
from .catalog import DTYPE_KEY, Catalog
from .compaction import Waste, catalog_space, waste
from .repair import lost_vectors
from .segment_files import DAMAGED, missing_manifest
from .index_manifest import Manifest
from .label_sets import vocabulary_sizes
from .records import CollectionInfo

logger = logging.getLogger(__name__)

# What `mmr info` shows for a collection with no usable saved index, when this process has not built one.
_NO_INDEX = Manifest(model_key="", dim=0, index_type="none", params={}, count=0, generation=-1)


def describe(directory: Path, catalog: Catalog, identity: ModelIdentity, manifest: Manifest | None,
             saved: Manifest | None) -> CollectionInfo:
    """The collection in ``directory`` as :class:`CollectionInfo`.

    Args:
        manifest: the index described (None: there is none to describe).
        saved: the index saved on disk, if any: the info says whether it is as new as the catalog.
    """
    manifest = manifest or _NO_INDEX
    vectors = catalog.vector_count()  # first: a closed collection says so here, not as a warning about segments
    sizes = {p.name: p.stat().st_size for p in sorted(directory.iterdir()) if p.is_file()}
    store = catalog.segments
    if store.exists:
        sizes["segments"] = sum(p.stat().st_size for p in store.directory.iterdir() if p.is_file())
    stored: Waste | None = None
    try:
        stored = waste(catalog)
    except CollectionError as exc:  # a segment file gone: the rest of the info still helps
        logger.warning("%s", exc)
    if vectors and not store.exists:
        logger.warning("%s", missing_manifest(store.directory))
    elif stored is not None:  # a file cut short (a file gone: waste said so)
        lost, damaged = lost_vectors(catalog)
        if lost:
            logger.warning("the vectors of %s are lost (%s); %s", counted(len(lost), "image"), ", ".join(damaged),
                           DAMAGED)
            stored = None  # the rows counted from the files' sizes are not what the catalog points at: unknown
    if saved is not None and saved.file and not (directory / saved.file).is_file():
        logger.warning("the saved index file %s is missing: a search rebuilds the index from the stored vectors, "
                       "and `mmr index` saves it again", saved.file)
        saved = None
    recall = round(manifest.recall, 4) if manifest.recall >= 0 else None  # None: not measured
    imported: dict[str, int] = {}
    for source, _, rows in catalog.segment_sources():
        imported[source] = imported.get(source, 0) + rows
    return CollectionInfo(
        directory=str(directory), model_spec=identity.spec, model_key=identity.key(),
        dim=identity.embed_dim, counts=catalog.counts_by_status(),
        vectors=vectors, index_type=manifest.index_type, index_params=manifest.params,
        index_vectors=manifest.count, generation=manifest.generation, bytes_on_disk=sizes,
        label_sets=vocabulary_sizes(catalog), labels=catalog.label_counts(), index_recall=recall,
        index_memory=manifest.memory_bytes,
        index_saved=saved is not None and saved.generation == catalog.generation,
        vector_dtype=store.dtype if store.exists else (catalog.get_meta(DTYPE_KEY) or ""),
        segments=len(store.segments()) if store.exists else 0,
        stored_rows=None if stored is None else stored.stored,
        waste_ratio=None if stored is None else round(stored.ratio, 4),
        catalog_free_bytes=catalog_space(catalog).free_bytes,
        imported=imported, drives=_drives(catalog))


def _drives(catalog: Catalog) -> dict[str, str]:
    """The folders where an ingest found a drive mounted, and whether one is mounted there now."""
    folders = (os.fsdecode(key.rstrip(os.sep.encode())) for key in catalog.mount_points_under(os.sep.encode()))
    return {folder: "mounted" if os.path.ismount(folder) else "not mounted" for folder in folders}
