"""User data sets for training and evaluation: labelled folders and captioned image sets.

- Labelled folder (ImageFolder layout): ``ROOT/<class name>/<image>``, images anywhere below their class folder.
- Captioned set: a folder of images with sidecar captions (``cat.jpg`` + ``cat.txt``, one caption per
  line), or a CSV with ``path`` (or ``image``/``filepath``) and ``caption`` (or ``text``/``title``) columns;
  relative paths in a CSV are relative to the CSV's folder.

A folder is walked by the ingest walk (:func:`~mmretrieval.ingest.reader.discover`), so an evaluation sees the
images ``mmr classify`` and ``mmr ingest`` would see there: hidden files and folders (``.thumbnails/``, macOS
``._IMG_0001.jpg`` forks) passed over, files without an extension sniffed, RAW files found, and a folder link
followed only when it stays inside the folder and leads to a folder the walk does not otherwise reach.

Text files may start with a UTF-8 byte-order mark (spreadsheet programs save CSVs with one); it is not text.
A CSV need not be UTF-8 throughout, as the lists ``mmr ingest`` reads: a path keeps its bytes, and an undecodable
byte in a caption becomes U+FFFD. One image named by paths written differently (``a.jpg``, ``./a.jpg``,
``/set/a.jpg``) is one image with all their captions (not through ``..`` or a link: the same file then counts
twice). An image without a caption (no sidecar, a blank one, empty caption cells) is handed to ``on_skipped``;
one that is missing or does not decode is the evaluation's and the trainer's to count and skip; a CSV row with a
caption but an empty path cell is refused, naming its line: it names no file to count, and only the CSV's author
knows which image was meant.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from ..errors import MMRError
from ..ingest.batches import Skipped, SourceFile
from ..ingest.lists import CAPTION_COLUMNS, PATH_COLUMNS, csv_columns
from ..ingest.reader import discover


@dataclass(frozen=True)
class CaptionedImage:
    """An image file and its captions (at least one)."""

    path: Path
    captions: tuple[str, ...]


@dataclass(frozen=True)
class LabelledImage:
    """An image file and the index of its class."""

    path: Path
    label: int


def _walk(folder: Path, on_skipped: Callable[[Skipped], None] | None) -> Iterator[Path]:
    """The image files the ingest walk finds under ``folder`` (absolute paths); what it passes over and reports
    (a link leading outside, a folder already walked, a broken link) goes to ``on_skipped``."""
    for found in discover([folder]):
        if isinstance(found, SourceFile):
            yield Path(found.path)
        elif on_skipped is not None:
            on_skipped(found)


def read_labelled_folder(root: str | Path, on_skipped: Callable[[Skipped], None] | None = None,
                         ) -> tuple[list[str], list[LabelledImage]]:
    """Class names (sorted subfolder names) and every image below them, found as ``mmr classify ROOT`` finds them.

    A hidden subfolder is not a class. A subfolder that is a link is a class when the walk follows it, by classify's
    rule: one leading outside ROOT, or to a folder the walk reaches under its real path (another class, or a folder
    inside one), is passed over and handed to ``on_skipped``, as classify names it; otherwise its images would be
    a second copy under another label, or not ROOT's. A class folder without images stays a class, a label the
    others' images may be mistaken for. Images directly in ROOT belong to no class: each is handed to
    ``on_skipped`` (reason ``no_class``) and not used.

    Args:
        root: the labelled folder, ``ROOT/<class name>/<image>``.
        on_skipped: called with each entry the walk passes over and reports (links, unreadable folders), and
            each image directly in ROOT.

    Raises:
        MMRError: the folder is missing or cannot be listed, has fewer than two class subfolders (with one class
            every guess is right: a score of 1.0 that means nothing), or no images in them.
    """
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise MMRError(f"{root} is a file, not a labelled folder (ROOT/<class>/<image>); a CSV of captions goes "
                       "to --captions")
    if not root.is_dir():
        raise MMRError(f"labelled folder {root} does not exist")
    top = Path(os.path.abspath(root))  # the walk names what it finds under this path, links unresolved
    images: dict[str, list[Path]] = {}
    passed_over: set[str] = set()

    def skipped(entry: Skipped) -> None:
        parts = Path(entry.path).relative_to(top).parts
        if parts:  # not ROOT itself (reported when it cannot be listed): that is no class folder
            passed_over.add(parts[0])
        if on_skipped is not None:
            on_skipped(entry)

    for path in _walk(top, skipped):
        parts = path.relative_to(top).parts
        if len(parts) > 1:
            images.setdefault(parts[0], []).append(path)
        elif on_skipped is not None:  # an image put in ROOT by mistake: said, not dropped unseen
            on_skipped(Skipped(str(path), "no_class", "directly in the labelled folder, in no class subfolder "
                                                      "(ROOT/<class>/<image>)"))
    try:
        classes = sorted(d.name for d in root.iterdir()
                         if d.is_dir() and not d.name.startswith(".") and d.name not in passed_over)
    except OSError as exc:
        raise MMRError(f"cannot list the labelled folder {root}: {exc.strerror or exc}") from exc
    if len(classes) < 2:
        raise MMRError(f"{root} has {len(classes) or 'no'} class subfolder{'' if len(classes) == 1 else 's'}"
                       f"{f' ({classes[0]})' if classes else ''}; zero-shot accuracy needs two or more "
                       "(ROOT/<class>/<image>; images directly in ROOT are not used)")
    items = [LabelledImage(path, i) for i, name in enumerate(classes) for path in images.get(name, [])]
    if not items:
        raise MMRError(f"{root} has no images in class subfolders (expected ROOT/<class>/<image>)")
    return classes, items


def read_captioned(source: str | Path, on_skipped: Callable[[Skipped], None] | None = None,
                   ) -> list[CaptionedImage]:
    """Images with captions from a folder with sidecar ``.txt`` files or from a CSV.

    A folder is walked as ``mmr classify`` walks one; what the walk passes over and reports goes to
    ``on_skipped``, and so does each image without a caption (reason ``no_caption``). A CSV's rows are taken as
    they are: a file one names that is missing is the evaluation's to count and name.

    Raises:
        MMRError: missing source, unknown CSV columns, a CSV row with a caption and no path, or no captioned
            images.
    """
    source = Path(source)
    uncaptioned = on_skipped or (lambda skipped: None)
    if source.is_dir():
        items = []
        for path in _walk(source, on_skipped):
            sidecar = path.with_suffix(".txt")
            if not sidecar.is_file():
                uncaptioned(Skipped(str(path), "no_caption", f"no {sidecar.name} beside it"))
                continue
            lines = [ln.strip() for ln in sidecar.read_text(encoding="utf-8-sig", errors="replace").splitlines()]
            captions = tuple(ln for ln in lines if ln)
            if captions:
                items.append(CaptionedImage(path, captions))
            else:
                uncaptioned(Skipped(str(path), "no_caption", f"{sidecar.name} is blank"))
    elif source.is_file() and source.suffix.lower() == ".csv":
        items = _read_caption_csv(source, uncaptioned)
    elif not source.exists():
        raise MMRError(f"captioned set {source} does not exist; pass a folder with sidecar .txt captions or a .csv")
    else:
        raise MMRError(f"captioned set {source} is neither a folder nor a .csv file")
    if not items:
        raise MMRError(f"{source} holds no captioned images (sidecar .txt files or a CSV with path,caption)")
    return items


def _read_caption_csv(path: Path, uncaptioned: Callable[[Skipped], None]) -> list[CaptionedImage]:
    try:
        return _parse_caption_csv(path, uncaptioned)
    except (OSError, csv.Error) as exc:
        raise MMRError(f"cannot read {path} as a CSV: {exc}") from exc


def _parse_caption_csv(path: Path, uncaptioned: Callable[[Skipped], None]) -> list[CaptionedImage]:
    folder = os.path.abspath(path.parent)
    # surrogateescape: a path's bytes survive (os.fsencode gives them back), a caption's become U+FFFD below
    with open(path, newline="", encoding="utf-8-sig", errors="surrogateescape") as f:
        reader = csv.DictReader(f)
        path_col, caption_col = csv_columns(reader.fieldnames)
        if path_col is None or caption_col is None:
            raise MMRError(f"{path}: need a path column ({'/'.join(PATH_COLUMNS)}) and a caption column "
                           f"({'/'.join(CAPTION_COLUMNS)}); found {', '.join(reader.fieldnames or []) or 'none'}")
        grouped: dict[Path, list[str]] = {}
        blank: dict[Path, int] = {}  # images named only with an empty caption, and the line of the first
        for row in reader:
            cell = (row[path_col] or "").strip()
            text = (row[caption_col] or "").strip().encode("utf-8", "surrogateescape").decode("utf-8", "replace")
            if not cell and text:  # Path("") would be the CSV's own folder
                raise MMRError(f"{path}, line {reader.line_num}: the {path_col} cell is empty (caption {text!r}); "
                               "fill in the image's path or delete the row")
            if not cell:
                continue
            image = Path(folder) / cell  # "a.png", "./a.png" and "/set/a.png" alike ("x/../" kept: x may be a link)
            if text:
                grouped.setdefault(image, []).append(text)
            else:
                blank.setdefault(image, reader.line_num)
    for image, line in blank.items():
        if image not in grouped:
            uncaptioned(Skipped(str(image), "no_caption", f"its caption in {path} line {line} is empty"))
    return [CaptionedImage(p, tuple(c)) for p, c in grouped.items()]
