"""Near-duplicate images: resized, recompressed, slightly cropped or format-converted copies of one picture.

From the collection's stored vectors, never by re-reading images:

1. a k-NN graph: every stored vector is searched against the collection's index, ``block`` vectors at a
   time (so memory holds one block of queries, never all vectors), keeping neighbours scoring at least the
   threshold (cosine);
2. connected components of those pairs (union-find): copies of copies end up in one group;
3. per group, the files as they are now: a file gone or changed since it was ingested leaves its group (a changed
   file's stored vector shows a picture it may no longer hold: listing it as a copy to delete could delete the
   only copy of its new picture), and a path that names
   the same file as another member (a hard link, a folder reached through a symbolic link) is not a copy of it;
   then the copy to keep (:func:`keeper_rank`) and each copy's exact cosine to it.

Nothing is deleted here; :func:`.duplicate_review.organize_duplicates` only links the copies into a review
folder.
The default threshold depends on the model family (see :data:`DEFAULT_THRESHOLDS`): cosines between
copies of one image are not on the same scale for every model.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Sequence

import numpy as np
import numpy.typing as npt

from ..errors import CollectionError, QueryError
from ..images.formats import LOSSLESS_EXTENSIONS
from ..models.specs import ModelIdentity
from .catalog import Catalog
from .sealed import exact_cosines

if TYPE_CHECKING:
    from ..images.metadata import PhotoMetadata

logger = logging.getLogger(__name__)

Progress = Callable[[int, int], None]  # (done, total)
# queries (n, dim) and k -> (scores, ids), both (n, <=k), best first, no -1 padding
KnnSearch = Callable[[npt.NDArray[np.float32], int], "tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]"]
# ids -> (sorted ids found, their vectors); unknown ids are left out
VectorLoader = Callable[[Sequence[int]], "tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]"]

# Cosine at or above which two images count as copies, by model family. "shapes" (builtin:shapes) is
# measured by bench/duplicates.py (precision and recall >= 0.95 on its generated set); the CLIP and SigLIP
# values are not measured here (no pretrained weights offline): re-run bench/duplicates.py --model SPEC.
DEFAULT_THRESHOLDS = {"shapes": 0.95, "clip": 0.95, "siglip": 0.95}
DEFAULT_K = 10  # neighbours searched per image: a group larger than k+1 still joins up through chains
_RESCORE_MARGIN = 0.1  # neighbours this far below the threshold by the index's (possibly PQ) score are dropped
_BLOCK = 2048  # query vectors per index search (their neighbours' vectors are gathered too)
_RESULTS_PER_BLOCK = 1 << 21  # at most this many neighbours per search (12 bytes each): a large k takes smaller blocks


@dataclass(frozen=True)
class Copy:
    """One image of a duplicate group."""

    id: int  # catalog id
    path: str
    score: float  # cosine to the kept copy (1.0 for the kept copy itself)
    width: int  # pixels, as decoded at ingestion (0 when unknown)
    height: int
    bytes: int  # file size now (-1 when the file is gone)
    mtime_ns: int  # modification time now (0 when the file is gone)
    is_link: bool = False  # a symbolic link, or reached through one (a linked folder): never the copy to keep
    file_key: tuple[int, int] = (0, 0)  # (device, inode) now: two paths with one key are one file


@dataclass(frozen=True)
class Alias:
    """A path of a group's image that names a file the group already lists (a hard link, a linked folder)."""

    id: int  # catalog id of this path
    path: str
    same_as: str  # the member's path it names


@dataclass(frozen=True)
class DuplicateGroup:
    """Copies of one picture; the kept copy first, the others by decreasing score."""

    copies: tuple[Copy, ...]
    aliases: tuple[Alias, ...] = ()  # other names of members' files: deleting one would delete the member
    gone: tuple[str, ...] = ()  # members' paths whose file no longer exists (``mmr ingest --prune`` drops them)
    changed: tuple[str, ...] = ()  # members' paths whose file changed (size or time) since it was embedded

    @property
    def keep(self) -> Copy:
        """The copy to keep: see :func:`keeper_rank`."""
        return self.copies[0]

    @property
    def score(self) -> float:
        """The lowest cosine of a copy to the kept one: how alike the group's least similar member is."""
        return min(copy.score for copy in self.copies[1:])

    @property
    def paths(self) -> tuple[str, ...]:
        return tuple(copy.path for copy in self.copies)

    @property
    def scores(self) -> tuple[float, ...]:
        return tuple(copy.score for copy in self.copies)


@dataclass(frozen=True)
class LeftOut:
    """What a list of groups leaves out, for the notes under it."""

    aliases: int  # paths naming a file its group already lists (never copies: deleting one deletes that file)
    gone: int  # members' files gone since they were ingested
    changed: int = 0  # members' files changed since they were embedded

    @classmethod
    def of(cls, groups: Sequence[DuplicateGroup]) -> "LeftOut":
        return cls(aliases=sum(len(group.aliases) for group in groups), gone=sum(len(group.gone) for group in groups),
                   changed=sum(len(group.changed) for group in groups))


def default_threshold(identity: ModelIdentity) -> float:
    """The measured (or documented) default threshold for the family of the model that made the vectors."""
    text = f"{identity.spec} {identity.architecture}".lower()
    if identity.spec == "builtin:shapes" or "shapes" in identity.architecture:
        return DEFAULT_THRESHOLDS["shapes"]
    return DEFAULT_THRESHOLDS["siglip" if "siglip" in text else "clip"]


def similar_pairs(blocks: Iterable[tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]], total: int,
                  search: KnnSearch, load: VectorLoader, threshold: float, k: int = DEFAULT_K,
                  progress: Progress | None = None) -> Iterator[tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]]:
    """Pairs of ids whose exact cosine is at least ``threshold``, among each image's ``k`` nearest neighbours.

    The index only proposes neighbours; those within :data:`_RESCORE_MARGIN` of the threshold by its score are
    rescored exactly from the stored vectors, so a compressed (PQ) index's approximate scores decide nothing
    near the threshold. Yields one ``(a, b)`` pair of id arrays per block
    (a pair may come once from each side).

    Args:
        blocks: ``(ids, (n, dim) vectors)`` blocks covering the collection (bounded memory).
        total: how many vectors the blocks hold, for progress.
        search: the collection's k-NN search (see :data:`KnnSearch`).
        load: ids -> ``(ids found, vectors)``, for the neighbours' exact scores.
        threshold: cosine cut-off.
        k: neighbours per image (the image itself is one of the ``k + 1`` searched).
        progress: ``(done, total)`` after each block.

    Raises:
        CollectionError: k < 1.
    """
    if k < 1:
        raise CollectionError(f"k ({k}) must be at least 1: it is how many neighbours each image is compared with")
    done = 0
    for ids, vectors in blocks:
        if len(ids):
            approximate, neighbours = search(vectors, k + 1)
            near = approximate >= threshold - _RESCORE_MARGIN  # only these can be copies: fetch and rescore them
            rows, cols = np.nonzero((neighbours >= 0) & (neighbours != ids[:, None]) & near)
            candidates = neighbours[rows, cols]
            found, found_vectors = load(np.unique(candidates).tolist())
            position = np.searchsorted(found, candidates)
            present = (position < len(found)) & (found[np.minimum(position, len(found) - 1)] == candidates) \
                if len(found) else np.zeros(len(candidates), bool)
            rows, candidates, position = rows[present], candidates[present], position[present]
            scores = exact_cosines(vectors[rows], found_vectors[position])
            close = scores >= threshold
            yield ids[rows[close]], candidates[close]
        done += len(ids)
        if progress:
            progress(done, total)


def connected_groups(pairs: Iterable[tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]]) -> list[list[int]]:
    """Connected components (of two or more ids) of the pairs' graph, by union-find; each sorted, by first id."""
    parent: dict[int, int] = {}

    def root(node: int) -> int:
        parent.setdefault(node, node)
        while parent[node] != node:
            parent[node] = parent[parent[node]]  # path halving keeps the trees flat
            node = parent[node]
        return node

    for left, right in pairs:
        for a, b in zip(left.tolist(), right.tolist()):
            ra, rb = root(a), root(b)
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
    members: dict[int, list[int]] = {}
    for node in parent:
        members.setdefault(root(node), []).append(node)
    return sorted((sorted(group) for group in members.values() if len(group) > 1), key=lambda group: group[0])


def describe_groups(groups: Sequence[Sequence[int]], catalog: Catalog,
                    prefer: Sequence[str] = ()) -> list[DuplicateGroup]:
    """Paths, sizes, the kept copy and each copy's exact cosine to it, from the catalog and the files; ``prefer``:
    folders whose copies are kept first (:func:`keeper_rank`)."""
    folders = preferred_folders(prefer)
    described, emptied = [], 0
    for group in groups:
        rows = catalog.rows(list(group))
        found, vectors = catalog.vectors(list(group), unit_length=False)  # as stored: exact_cosines divides
        by_id = dict(zip(found.tolist(), vectors))
        stated = [_stat_copy(rows[i].path, i, rows[i].width, rows[i].height) for i in group
                  if i in rows and i in by_id]  # a row removed since the search is left out
        gone = tuple(c.path for c in stated if c.bytes < 0)
        planned = catalog.stats_of(group)
        changed = tuple(c.path for c in stated if c.bytes >= 0 and _changed(c, planned.get(c.id)))
        present = [c for c in stated if c.bytes >= 0 and c.path not in changed]
        photos = catalog.photos([c.id for c in present])

        def rank(copy: Copy) -> tuple:  # used within this group only
            return keeper_rank(copy, photos.get(copy.id), folders)

        candidates, aliases = _one_path_per_file(present, rank)
        if len(candidates) < 2:  # copies of one file, or of files gone or changed: nothing to choose between
            emptied += bool(gone or changed)
            continue
        kept = max(candidates, key=rank)
        others = [c for c in candidates if c.id != kept.id]
        scores = exact_cosines(np.stack([by_id[c.id] for c in others]), by_id[kept.id])
        copies = [kept] + sorted((replace(c, score=float(score)) for c, score in zip(others, scores)),
                                 key=lambda c: (-c.score, c.id))
        described.append(DuplicateGroup(tuple(copies), aliases, gone, changed))
    if emptied:  # else a library whose copies were all deleted or edited since would only say "0 groups"
        groups_are, their = ("1 group of copies is", "its") if emptied == 1 else (f"{emptied} groups of copies are",
                                                                                  "their")
        logger.warning("%s not listed: all but one of %s files are gone or changed since they were ingested "
                       "(`mmr ingest --prune` drops the gone ones, and `mmr ingest` embeds the changed ones again)",
                       groups_are, their)
    return described


def _one_path_per_file(copies: list[Copy], rank: Callable[[Copy], tuple]) -> tuple[list[Copy], tuple[Alias, ...]]:
    """The copies with one path per file (the one ``rank`` puts highest), and the other paths as aliases:
    deleting a hard link or a file reached through a linked folder as "a copy" would delete the file itself."""
    by_file: dict[tuple[int, int], list[Copy]] = {}
    for copy in copies:
        by_file.setdefault(copy.file_key, []).append(copy)
    kept, aliases = [], []
    for names in by_file.values():
        chosen = max(names, key=rank)
        kept.append(chosen)
        aliases.extend(Alias(c.id, c.path, chosen.path) for c in names if c is not chosen)
    return sorted(kept, key=lambda c: c.id), tuple(sorted(aliases, key=lambda a: a.id))


def preferred_folders(prefer: Sequence[str | os.PathLike]) -> tuple[tuple[str, ...], ...]:
    """``prefer`` as :func:`keeper_rank` takes it: for each folder, its absolute path (``~`` expanded) and its real
    path (links resolved) where that differs, each ending in a separator.

    Raises:
        QueryError: one is not a folder here (a typo would keep other copies than the user meant, silently).
    """
    _real_folder.cache_clear()  # links may have changed since the last search (a server runs for weeks)
    folders = tuple(os.path.abspath(os.path.expanduser(os.fspath(folder))) for folder in prefer)
    for given, folder in zip(prefer, folders):
        if not os.path.isdir(folder):
            resolved = f" ({folder})" if folder != os.fspath(given) else ""
            raise QueryError(f"the folder to prefer {os.fspath(given)!r} is not a folder here{resolved}; nothing "
                             "was searched")
    return tuple(tuple(dict.fromkeys(os.path.join(form, "") for form in (folder, os.path.realpath(folder))))
                 for folder in folders)


def keeper_rank(copy: Copy, photo: "PhotoMetadata | None",
                prefer: Sequence[tuple[str, ...]] = ()) -> tuple[bool, int, int, int, int, bool, int, int]:
    """How much a copy deserves keeping, compared as a tuple (the largest is kept):

    1. a file, not a symbolic link or a path through one: a link's target is in the collection too, and deleting
       the target because the link was kept would leave a dangling link and no photo;
    2. under the first of the ``prefer`` folders (:func:`preferred_folders`) it is under, the earlier the better:
       the user's own word on where originals live (``--prefer ~/Pictures/library`` keeps those, and lists the
       copies in ~/Downloads); under it by the path it was ingested by or by real paths (a ``~/Pictures`` that
       links to a data disk: given either way, the preference held only for the way the collection was made);
    3. the most of what a photo library sorts by, from the file itself: an EXIF capture time, the camera, a GPS
       position (a camera original over an upscaled, converted or re-saved copy that lost them);
    4. the most pixels;
    5. the oldest: a copy is made from its original, so with the same pixels the older file is the source (a JPEG
       over its later PNG conversion, which holds nothing more; an original over its re-exported crop);
    6. a lossless format, then the largest file, then the lowest id.

    Pixels cannot tell an upscaled copy from its original (neither can this rank, from the catalog alone): where
    the upscaled copy kept the original's metadata, or the original had none, the upscaled copy is kept.
    """
    lossless = os.path.splitext(copy.path)[1].lower() in LOSSLESS_EXTENSIONS
    described = 0
    if photo is not None:
        described = sum((photo.taken_source not in (None, "mtime"), bool(photo.make or photo.model),
                         photo.latitude is not None))
    path = os.path.abspath(copy.path)
    real = os.path.join(_real_folder(os.path.dirname(path)), os.path.basename(path)) if prefer else path
    preferred = next((len(prefer) - i for i, forms in enumerate(prefer)
                      if path.startswith(forms) or real.startswith(forms)), 0)
    return (not copy.is_link, preferred, described, copy.width * copy.height, -copy.mtime_ns, lossless, copy.bytes,
            -copy.id)


@functools.lru_cache(maxsize=10_000)
def _real_folder(folder: str) -> str:
    """``folder`` with its links resolved (a copy's file itself is not followed: a link is no original); cached for
    one search (:func:`preferred_folders` clears it)."""
    return os.path.realpath(folder)


def _changed(copy: Copy, planned: tuple[int, int, str] | None) -> bool:
    """Whether ``copy``'s file may no longer be the picture its vector shows: its row is to be embedded again
    (an ingest planned it, and was killed or is still running), or the file differs in size or time from the row
    (an imported row, stored with neither, cannot tell)."""
    if planned is None:
        return False
    size, mtime_ns, status = planned
    return status != "ok" or ((size, mtime_ns) != (0, 0) and (size, mtime_ns) != (copy.bytes, copy.mtime_ns))


def _stat_copy(path: str, image_id: int, width: int | None, height: int | None) -> Copy:
    try:
        stat = os.stat(path)
    except OSError:
        return Copy(image_id, path, 1.0, width or 0, height or 0, -1, 0)
    absolute = os.path.abspath(path)
    through_link = os.path.realpath(absolute) != absolute  # the file itself, or a folder on its way, is a link
    return Copy(image_id, path, 1.0, width or 0, height or 0, stat.st_size, stat.st_mtime_ns, through_link,
                (stat.st_dev, stat.st_ino))


def find_duplicates(catalog: Catalog, search: KnnSearch, threshold: float, k: int = DEFAULT_K,
                    progress: Progress | None = None, prefer: Sequence[str] = ()) -> list[DuplicateGroup]:
    """Groups of near-duplicate images among the catalog's stored vectors, largest score first.

    Args:
        catalog: where the vectors, paths and sizes are.
        search: k-NN over the collection's index.
        threshold: cosine at or above which two images are copies (``default_threshold`` gives the family's).
        k: neighbours searched per image.
        progress: ``(done, total)`` while searching.
        prefer: folders whose copies are kept first, in order (:func:`keeper_rank`).

    Raises:
        CollectionError: a threshold outside (0, 1], or k < 1.
    """
    if not 0 < threshold <= 1:
        raise CollectionError(f"duplicate threshold {threshold} must be a cosine in (0, 1]; e.g. 0.95")
    total = catalog.vector_count()
    block = max(1, min(_BLOCK, _RESULTS_PER_BLOCK // (k + 1)))
    stored = functools.partial(catalog.vectors, unit_length=False)  # scored as a search scores its hits
    pairs = similar_pairs(catalog.iter_vectors(block), total, search, stored, threshold, k, progress)
    groups = connected_groups(pairs)
    logger.info("%d near-duplicate groups among %d images at threshold %.3f", len(groups), total, threshold)
    described = describe_groups(groups, catalog, prefer)
    described.sort(key=lambda group: (-group.score, group.keep.id))
    return described


def chaining_note(groups: Sequence[DuplicateGroup], threshold: float) -> str | None:
    """What chaining did, when some group holds members less alike than ``threshold`` to its kept copy; else None.

    Groups are connected components: a copy of a copy joins even when it is further from the kept one than the
    threshold. That is right for a chain of re-saves and crops, and wrong at a low threshold, where unrelated
    images link up step by step into one large group. No rule tells the two apart from the scores alone, so the
    note gives the user the facts to judge: how many groups chained, how far, and the largest group's size.
    """
    loose = [group.score for group in groups if group.score < threshold - 1e-6]  # scores are rounded to 1e-6
    if not loose:
        return None
    largest = max(len(group.copies) for group in groups)
    return (f"{len(loose)} of {len(groups)} groups joined images less alike than {threshold:.3f} to their kept copy "
            f"through chains of neighbours (cosine down to {min(loose):.3f}; the largest group has {largest} "
            "images); if those are not copies, raise the threshold to split them")
