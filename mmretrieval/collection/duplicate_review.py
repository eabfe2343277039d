"""A review folder for near-duplicate groups (``mmr duplicates --organize``): each group's copies linked side by
side, the suggested keeper marked. Symlinks only: nothing is moved, copied or deleted.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from ..errors import CollectionError
from ..filled_folders import check_fillable_folder, folder_built_aside, name_within_limit
from .duplicates import DuplicateGroup

REVIEWED_BY = "mmr duplicates --organize"  # the marker of a review folder: a re-run replaces it


def check_review_dir(out_dir: str | os.PathLike) -> Path:
    """``out_dir`` as a path that :func:`organize_duplicates` may fill: a new name, an empty folder, or an earlier
    review folder (replaced: two runs' groups never mix, with two ``keep-`` files in one group folder).

    Raises:
        CollectionError: it is a file, or a folder that holds anything else.
    """
    return check_fillable_folder(out_dir, REVIEWED_BY, _linked_here)


def _linked_here(inside: tuple[str, ...], entry: os.DirEntry) -> bool:
    """Whether :func:`organize_duplicates` made this entry: a link in a group's folder."""
    return len(inside) == 2 and inside[0].isdigit() and entry.is_symlink()


def organize_duplicates(groups: Sequence[DuplicateGroup], out_dir: str | os.PathLike) -> int:
    """Link each group into ``out_dir/NNNNN/``: ``keep-<id>-<name>`` and ``<id>-<name>`` for the other copies.

    Symlinks only: no image is moved, copied or deleted. Returns the number of links made. The groups are linked
    into a hidden sibling folder that then takes the place of ``out_dir``
    (:func:`~mmretrieval.filled_folders.folder_built_aside`), so an interrupted run leaves ``out_dir`` as it was.

    Raises:
        CollectionError: ``out_dir`` holds files of anything but an earlier review (:func:`check_review_dir`),
            or cannot be written.
    """
    made = 0
    try:
        with folder_built_aside(out_dir, REVIEWED_BY, _linked_here) as partial:
            for number, group in enumerate(groups, start=1):
                folder = partial / f"{number:05d}"
                folder.mkdir()
                for copy in group.copies:
                    prefix = f"{'keep-' if copy.id == group.keep.id else ''}{copy.id}-"
                    link = folder / name_within_limit(prefix, os.path.basename(copy.path))
                    link.symlink_to(os.path.abspath(copy.path))
                    made += 1
    except OSError as exc:
        raise CollectionError(f"cannot write the review folder {out_dir}: {exc}") from exc
    return made
