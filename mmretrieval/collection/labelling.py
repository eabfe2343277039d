"""Labelling a whole collection zero-shot, from its stored vectors (no image is decoded again).

Labels and their probabilities go into the catalog, where search filters on them; they can be exported
as CSV or JSON lines, and the images linked (or copied) into one folder per label.
"""

from __future__ import annotations

import csv
import logging
import numbers
import os
import re
import reprlib
import shutil
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Sequence

import numpy as np

from ..atomic import atomic_path, remove_orphans
from ..filled_folders import check_can_make_in, check_fillable_folder, folder_built_aside, name_within_limit
from ..errors import CollectionError, QueryError
from ..json_lines import json_line
from .label_sets import DEFAULT_SET, LabelSetWriter, declared_labels, scored_ids, sets
from ..models.label_text import few_warnings, normalise_labels
from ..models.prompt_templates import load_templates
from ..models.settings import MULTI_LABEL_THRESHOLD
from ..models.zeroshot import TextModel, ZeroShotClassifier, predict, refuse_lone_softmax_label

if TYPE_CHECKING:
    from .catalog import Catalog

logger = logging.getLogger(__name__)

_CHUNK = 4096  # vectors scored at a time, so a million-image collection never needs all of them in memory
_CHUNK_CELLS = 1 << 22  # at most this many (image, label) scores a chunk: fewer images a chunk for big vocabularies
_CHUNK_MIN = 64  # but never fewer images a chunk than this


@dataclass(frozen=True)
class LabelSummary:
    """The outcome of labelling a collection."""

    images: int  # images scored
    counts: dict[str, int]  # label -> images assigned it
    multi_label: bool
    threshold: float | None  # multi-label threshold; None for single-label
    label_set: str = DEFAULT_SET  # the label set the run wrote (see label_sets.py)
    unlabelled: int = 0  # images scored that reached no label's threshold (multi-label only)


def check_label_options(multi_label: bool, threshold: object) -> float | None:
    """The multi-label cutoff a run uses (:data:`MULTI_LABEL_THRESHOLD` when None is given; None for single-label),
    checked as the command line checks ``--threshold``.

    A single-label run gives each image its best label whatever its probability, so a threshold there would be
    ignored without a word: it is refused instead.

    Raises:
        QueryError: not a finite number, outside [0, 1], or given without ``multi_label``.
    """
    if threshold is None:
        value = None
    elif (isinstance(threshold, (bool, np.bool_)) or not isinstance(threshold, numbers.Real)
          or not 0 <= float(threshold) <= 1):  # NaN fails this too
        raise QueryError(f"threshold must be a probability from 0 to 1 (e.g. 0.3), got {threshold!r}")
    else:
        value = float(threshold)
    if not multi_label:
        if value is not None:
            raise QueryError(f"threshold applies with multi_label=True (got threshold={threshold!r}); without it "
                             "each image gets its best label whatever its probability")
        return None
    return MULTI_LABEL_THRESHOLD if value is None else value


def label_collection(catalog: "Catalog", encoder: TextModel, labels: Iterable[str] | str,
                     templates: str | Sequence[str],
                     *, multi_label: bool, threshold: float | None = None, label_set: str = DEFAULT_SET,
                     replace: bool = False, progress: Callable[[int, int], None] | None = None,
                     label_progress: Callable[[int, int], None] | None = None,
                     ids: Sequence[int] | None = None) -> LabelSummary:
    """Score every embedded image (or only those in ``ids``, a filter's) against ``labels`` (the labels, one per
    item of any iterable, or one string of them as :func:`~mmretrieval.models.label_text.parse_labels` takes it;
    either way checked by :func:`~mmretrieval.models.label_text.normalise_labels`) and store the assigned ones, and
    which images were scored, as label set ``label_set``.

    Assignments go to the catalog chunk by chunk (memory stays bounded by one chunk of vectors); the set
    replaces a stored set of the same name only when ``replace`` is true, and other sets are never touched.

    Args:
        templates: templates with one ``{}`` each, or one string: a template set's name (``default``,
            ``imagenet``, ``none``), a template file, or a single template ("a drawing of a {}.").
        threshold: with ``multi_label``, the cutoff (a probability; None: :data:`MULTI_LABEL_THRESHOLD`); see
            :func:`check_label_options`.
        progress: called with ``(images scored, images)`` after each chunk.
        label_progress: called with ``(labels embedded, labels)`` while a large vocabulary is embedded.

    Raises:
        QueryError: no labels, a label that is blank or not a ``str``, one label scored by a softmax, unknown or
            bad templates, a bad threshold or one without ``multi_label``.
        CollectionError: a bad set name, or the set exists and ``replace`` is false.
    """
    cutoff = check_label_options(multi_label, threshold)
    names = normalise_labels(labels)  # a list is checked and deduplicated as a typed string is
    refuse_lone_softmax_label(names, is_sigmoid=encoder.is_sigmoid, multi_label=multi_label)
    prompts = load_templates(templates) if isinstance(templates, str) else tuple(templates)
    writer = LabelSetWriter(catalog, label_set, names, multi_label=multi_label, threshold=cutoff, replace=replace)
    classifier = ZeroShotClassifier.build(encoder, names, prompts, progress=label_progress)
    all_ids = catalog.vector_ids() if ids is None else np.asarray(ids, dtype=np.int64)
    all_ids.sort()
    counts, unlabelled = {name: 0 for name in names}, 0
    kept = MULTI_LABEL_THRESHOLD if cutoff is None else cutoff  # (single-label keeps each image's best label: unused)
    # Scores are float64 while they are made (several N x labels arrays): 4,096 images by 20,000 labels took 2 GB.
    rows = min(_CHUNK, max(_CHUNK_MIN, _CHUNK_CELLS // len(names)))
    for start in range(0, len(all_ids), rows):
        ids, vectors = catalog.vectors(all_ids[start:start + rows].tolist())
        probabilities = classifier.probabilities(vectors, multi_label=multi_label)
        chunk = [(image_id, p.label, p.probability)
                 for image_id, predictions in zip(ids.tolist(), predict(probabilities, names, multi_label=multi_label,
                                                                        threshold=kept))
                 for p in predictions]
        writer.add(chunk)
        writer.add_scored(ids.tolist())
        for _, name, _ in chunk:
            counts[name] += 1
        unlabelled += len(ids) - len({image_id for image_id, _, _ in chunk})
        if progress:
            progress(min(start + rows, len(all_ids)), len(all_ids))
    writer.commit()
    logger.info("labelled %d images into label set %r", len(all_ids), writer.name)
    return LabelSummary(images=len(all_ids), counts=counts, multi_label=multi_label, threshold=cutoff,
                        label_set=writer.name, unlabelled=unlabelled)


_PAGE = 10_000  # images read per query when exporting or organizing
MISSING_EXAMPLES = 5  # missing files named in the result of organize (the rest are counted)


def _labelled_rows(catalog: "Catalog", label_set: str | None
                   ) -> tuple[bool, Iterator[tuple[int, str, tuple[tuple[str, float], ...]]]]:
    """Whether the images are exactly those the set scored, and the images, in id order, with their labels best
    first: those of ``label_set`` by their own names, or (None) of every set, ``SET:LABEL`` outside the default one.

    The images are those ``label_set`` (None: any set) scored, labelled or not; where that is not recorded (a set
    made before it was, see :func:`~.label_sets.scored_ids`), every embedded image, as then. Read a page at a time:
    at 10 M images the ids (80 MB) and one page are in memory, not every path and label."""
    scored = scored_ids(catalog, label_set)
    ids = catalog.vector_ids() if scored is None else scored  # both sorted

    def rows() -> Iterator[tuple[int, str, tuple[tuple[str, float], ...]]]:
        for start in range(0, len(ids), _PAGE):
            page = ids[start:start + _PAGE].tolist()
            found = catalog.rows(page)
            labels = catalog.labels_of(page, label_set)
            yield from ((i, found[i].path, labels.get(i, ())) for i in page if i in found)

    return scored is not None, rows()


def check_export_path(path: str | os.PathLike) -> Path:
    """``path`` if labels can be exported there (checked before a labelling run, so a typo costs no run).

    Raises:
        CollectionError: not a .csv or .jsonl name, or its folder does not exist.
    """
    path = Path(path)
    if path.suffix.lower() not in (".csv", ".jsonl"):
        raise CollectionError(f"cannot export labels to {path}: use a .csv or .jsonl file name")
    if not path.absolute().parent.is_dir():
        raise CollectionError(f"cannot export labels to {path}: folder {path.absolute().parent} does not exist")
    if path.is_dir():
        raise CollectionError(f"cannot export labels to {path}: it is a folder; name a .csv or .jsonl file")
    check_can_make_in(path.absolute().parent, f"export labels to {path}")  # where its temporary is written
    return path


ORGANIZED_BY = "mmr label --organize"  # the marker of a folder that organize filled: a re-run replaces it
FOLDER_NAME_BYTES = 255  # the longest file name ext4, APFS and btrfs allow: a label's folder is cut to fit


def check_organize_dir(out_dir: str | os.PathLike) -> Path:
    """``out_dir`` if images can be organized into it: a new name, an empty folder, or one that an earlier
    :func:`organize` filled (checked before a labelling run, so a typo costs no run).

    Raises:
        CollectionError: it is a file, or a folder holding anything else.
    """
    return check_fillable_folder(out_dir, ORGANIZED_BY, _placed_here)


def export_labels(catalog: "Catalog", path: Path, label_set: str | None = None) -> int:
    """Write ``path`` for ``label_set`` (None: every set), streamed into a temporary file renamed over ``path`` at
    the end; returns rows (.csv) or images (.jsonl) written.

    The images are those the set scored (None: any set), labelled or not: .csv has a row (id, path, label,
    probability) per assignment, and one with an empty label and probability for a scored image that got no label
    (a multi-label cutoff that none of its labels reached), so that it can be joined to ground truth; .jsonl has
    an object per image whose ``labels`` list is then ``[]``. A set made before mmretrieval recorded which images
    it scored lists, as it did then, every embedded image in .jsonl (``[]`` for those without a label, scored or
    not) and only the assignments in .csv.

    A file name that is not UTF-8 is written so that the file can be found again, as the command line's TSV and
    ``--json`` output write it: the CSV holds its original bytes (so the CSV works as a list file), JSON lines its
    ``\\udcXX`` escapes (valid UTF-8; ``os.fsencode(json.loads(line)["path"])`` gives the bytes back).

    Raises:
        CollectionError: another suffix, or ``path`` cannot be written.
    """
    path = check_export_path(path)
    remove_orphans(path)
    count = 0
    try:
        with atomic_path(path) as temporary, \
                open(temporary, "w", encoding="utf-8", errors="surrogateescape", newline="") as handle:
            exactly_scored, rows = _labelled_rows(catalog, label_set)
            if path.suffix.lower() == ".csv":
                writer = csv.writer(handle)
                writer.writerow(["id", "path", "label", "probability"])
                for image_id, image_path, pairs in rows:
                    if not pairs and exactly_scored:
                        writer.writerow([image_id, image_path, "", ""])
                        count += 1
                    writer.writerows([image_id, image_path, label, f"{p:.6f}"] for label, p in pairs)
                    count += len(pairs)
            else:
                for image_id, image_path, pairs in rows:
                    record = {"id": image_id, "path": image_path,
                              "labels": [{"label": label, "probability": round(p, 6)} for label, p in pairs]}
                    handle.write(json_line(record) + "\n")
                    count += 1
    except OSError as exc:
        raise CollectionError(f"cannot write labels to {path}: {exc.strerror or exc}; "
                              "check that its folder exists and is writable") from exc
    return count


@dataclass(frozen=True)
class Organized:
    """The outcome of :func:`organize`."""

    placed: int  # links or copies made
    missing: int = 0  # labelled images skipped because their file no longer exists
    missing_examples: tuple[str, ...] = ()  # the first few of them (an unmounted drive makes millions)
    folders: dict[str, str] = field(default_factory=dict)  # label -> its folder's name, for the labels placed


def organize(catalog: "Catalog", out_dir: str | os.PathLike, copy: bool = False,
             label_set: str | None = None) -> Organized:
    """Place each image labelled in ``label_set`` (None: in any set, ``SET:LABEL`` outside the default one) in
    ``out_dir/<folder>/<id>-<name>`` as a symlink (or a copy), ``<folder>`` being its label's folder name
    (:func:`label_folders`: one folder per label, decided before anything is placed).

    The folder is filled aside and then takes the place of ``out_dir`` (:func:`~mmretrieval.filled_folders.folder_built_aside`):
    a re-run replaces what an earlier one placed (no link stays under a label the image lost), and an
    interrupted run leaves ``out_dir`` as it was. Images whose file has gone since ingestion are skipped,
    counted, and the first few named in the result.

    Raises:
        CollectionError: ``out_dir`` holds files that organize did not place, or cannot be written.
    """
    placed, missing, examples = 0, 0, []
    if label_set is None:
        declared = declared_labels(catalog)
    else:
        declared = [label for found in sets(catalog) if found.name == label_set for label in found.labels]
    folders = _LabelFolders(declared)  # every label's folder named before any image is placed
    used: dict[str, str] = {}  # label -> folder, for the labels placed
    renamed: list[str] = []  # why a label's folder is not named as it reads, for each such label placed
    try:
        with folder_built_aside(out_dir, ORGANIZED_BY, _placed_here) as folder:
            _, rows = _labelled_rows(catalog, label_set)
            for image_id, image_path, pairs in rows:
                if not pairs:
                    continue
                if not os.path.exists(image_path):
                    missing += 1
                    if len(examples) < MISSING_EXAMPLES:
                        examples.append(image_path)
                    continue
                for label, _ in pairs:
                    if label not in used:
                        used[label], why = folders.of(label), folders.why_renamed(label)
                        if why:
                            renamed.append(why)
                    _place(folder / used[label], image_id, image_path, copy)
                    placed += 1
    except OSError as exc:
        raise CollectionError(f"cannot organize into {out_dir}: {exc}") from exc
    for why in few_warnings(renamed, "{count} more labels got another folder than their own name (too long, or "
                                     "the name another label's folder has)"):
        logger.warning("%s", why)
    return Organized(placed, missing, tuple(examples), used)


def _place(folder: Path, image_id: int, image_path: str, copy: bool) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / name_within_limit(f"{image_id}-", os.path.basename(image_path))
    if os.path.lexists(target):
        target.unlink()
    if copy:
        shutil.copy2(image_path, target)
    else:
        target.symlink_to(os.path.abspath(image_path))


def _placed_here(inside: tuple[str, ...], entry: os.DirEntry) -> bool:
    """Whether :func:`organize` made this entry: ``<label>/<id>-<name>``, a link or a copy."""
    return (len(inside) == 2 and re.match(r"\d+-", inside[1]) is not None
            and (entry.is_symlink() or entry.is_file(follow_symlinks=False)))


def label_folders(labels: Iterable[str]) -> dict[str, str]:
    """The folder :func:`organize` gives each of ``labels``, one per label: the label with each of
    ``/ \\ : * ? " < > |`` and control characters as ``_``, spaces and dots at either end dropped (``_`` if nothing
    is left), cut to fit a file name (255 bytes); a label whose folder name a label before it has already (as a
    case-insensitive file system compares names) gets ``-2`` (``-3``, ...) after it: ``a/b`` goes into ``a_b``
    and a later ``a_b`` into ``a_b-2``."""
    folders = _LabelFolders(())
    return {label: folders.of(label) for label in labels}


class _LabelFolders:
    """Folder names given to labels, each label its own, decided in the order labels are first named (the set's
    labels, in the order it was run with, come first, so that a re-run gives each the same folder)."""

    def __init__(self, labels: Iterable[str]):
        self._of: dict[str, str] = {}
        self._owner: dict[str, str] = {}  # a folder name as a case-insensitive file system compares it -> its label
        for label in labels:
            self.of(label)

    def of(self, label: str) -> str:
        """``label``'s folder name (given it now if it has none yet)."""
        if label not in self._of:
            base, number = _folder_name(label), 1
            name = _cut(base, FOLDER_NAME_BYTES)
            while _compared(name) in self._owner:
                number += 1
                name = _cut(base, FOLDER_NAME_BYTES - len(f"-{number}")) + f"-{number}"
            self._of[label], self._owner[_compared(name)] = name, label
        return self._of[label]

    def why_renamed(self, label: str) -> str | None:
        """Why ``label``'s folder is not named as the label reads once cleaned (:func:`label_folders`): too long,
        or another label's folder has that name; None if it is."""
        base, name = _folder_name(label), self.of(label)
        shortened = _cut(base, FOLDER_NAME_BYTES)
        if name == base:
            return None
        if name == shortened:
            return (f"label {_shown(label)} is too long for a folder name ({len(os.fsencode(base))} bytes, at most "
                    f"{FOLDER_NAME_BYTES}): its folder is named by its first {len(name)} characters")
        return (f"labels {_shown(self._owner[_compared(shortened)])} and {_shown(label)} make the same folder name "
                f"({_shown(shortened)}): the images labelled {_shown(label)} go into {_shown(name)}")


def _cut(name: str, limit_bytes: int) -> str:
    """``name`` cut to at most ``limit_bytes`` bytes, a whole character at a time (a label has no extension to
    keep, unlike the file names :func:`~mmretrieval.filled_folders.name_within_limit` shortens)."""
    if len(os.fsencode(name)) <= limit_bytes:
        return name
    name = name[:limit_bytes]  # a character takes a byte at least
    while len(os.fsencode(name)) > limit_bytes:
        name = name[:-1]
    return name.rstrip(" .")  # as the uncut name: no space or dot at the end


def _compared(name: str) -> str:
    """A folder name as a case- and normalisation-insensitive file system (APFS, NTFS) compares it."""
    return unicodedata.normalize("NFC", name).casefold()


def _shown(text: str) -> str:
    """``text`` quoted for a message, its middle left out past 60 characters."""
    shorter = reprlib.Repr()
    shorter.maxstring = 60
    return shorter.repr(text)


def _folder_name(label: str) -> str:
    name = re.sub(r"[\\/:*?\"<>|\x00-\x1f]", "_", label).strip(" .")
    return name or "_"
