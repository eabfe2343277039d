"""Handlers of the Duplicates tab: review ``mmr duplicates`` groups beside the suggested keeper; export, never delete.

The groups come from ``Collection.duplicates`` (near-duplicates from the index's k-NN graph). The page
shows each group side by side, the kept copy first; the export lists every other copy (one path per
line, and a CSV with group, role, score and size), for the user to review and delete elsewhere.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import logging
import os
import uuid
from pathlib import Path
from typing import Any

import gradio as gr

from ..collection.duplicates import DuplicateGroup, LeftOut
from ..json_lines import tsv_text
from ..wording import counted
from .context import AppContext, user_errors
from .media import prune_exports
from .names import display_path, markdown_code

logger = logging.getLogger(__name__)

GROUPS_SHOWN = 40  # groups drawn on a page; the export has all of them
MOST_ALIKE, LEAST_ALIKE = "most alike first", "least alike first"
ORDERS = (MOST_ALIKE, LEAST_ALIKE)
REVIEW_PX = 160  # thumbnails in the review


class DuplicateHandlers:
    """Find near-duplicate groups and export the copies that are not the suggested keeper."""

    def __init__(self, ctx: AppContext):
        self.ctx = ctx

    @user_errors
    def duplicates(self, threshold: float | None = None, order: str = MOST_ALIKE, prefer: str | None = None,
                   progress: gr.Progress = gr.Progress()) -> tuple[str, str, list[str], list[DuplicateGroup]]:
        """Find the groups: the first page of them (HTML), a summary, the export (the other copies' paths in a
        .txt, every group in a .csv) and the groups themselves (kept for :meth:`page`; :meth:`first_page` sets
        the page control for them).

        ``threshold`` is a cosine in (0, 1]; 0 or None uses the model family's default. ``order`` is
        :data:`MOST_ALIKE` or :data:`LEAST_ALIKE` (the loose groups, which most need a look, first). ``prefer``:
        folders on the server whose copies are kept first, one a line (as ``mmr duplicates --prefer``).
        """
        folders = [line.strip() for line in (prefer or "").splitlines() if line.strip()]
        for folder in folders:
            if not os.path.isabs(os.path.expanduser(folder)):
                raise gr.Error(f"{display_path(folder)!r} is not an absolute path: type the full path of a folder on "
                               "the server (~/photos works too).", print_exception=False)
        finder = getattr(self.ctx.collection, "duplicates", None)
        if finder is None:
            raise gr.Error("This version of mmretrieval has no duplicate finder (mmr duplicates).",
                           print_exception=False)
        if threshold is not None and not 0 <= threshold <= 1:
            raise gr.Error(f"The threshold {threshold} must be a cosine between 0 and 1 (0: the model's default).",
                           print_exception=False)
        progress(0, desc="Searching every image's neighbours…")

        def report(done: int, total: int) -> None:
            progress((done, total), desc="Comparing images", unit="images")

        with self.ctx.lock:
            groups = finder(threshold=threshold or None, progress=report, prefer=folders)
            chosen = self.ctx.collection.duplicate_threshold(threshold or None)
        if not groups:
            return ("<p>No near-duplicates at this threshold.</p>",
                    "No near-duplicate groups found; lower the threshold to find looser copies.", [], [])
        others = sum(len(group.copies) - 1 for group in groups)
        export = self._export(groups)
        pages = _pages(len(groups))
        shown = (f"Showing {GROUPS_SHOWN} a page ({counted(pages, 'page')}; choose the order and the page above the "
                 "groups)" if pages > 1 else "Showing all")
        summary = (f"{counted(len(groups), 'group')} of near-duplicates; {counted(others, 'copy', 'copies')} "
                   f"besides the suggested keepers (a file, not a link; then {_preferred(folders)}the most capture "
                   "metadata, the highest resolution, the oldest, a lossless format, the largest file). "
                   f"{shown}. The export lists the "
                   "other copies for you to review: nothing is deleted from here.")
        summary += "".join(f"\n\n{line[0].upper()}{line[1:]}." for line in _left_out(groups))
        from ..collection.duplicates import chaining_note

        note = chaining_note(groups, chosen)
        if note:
            summary += f"\n\n{note[0].upper()}{note[1:]}."
        return self.page(groups, order, 1), summary, [str(path) for path in export], groups

    @staticmethod
    def first_page(groups: list[DuplicateGroup]) -> dict:
        """The page control after a search: page 1 of as many as ``groups`` fill."""
        return gr.update(value=1, maximum=_pages(len(groups)))

    @user_errors
    def page(self, groups: list[DuplicateGroup], order: str = MOST_ALIKE, page: float | None = 1) -> str | dict:
        """Page ``page`` (from 1; a page past the end shows the last) of ``groups`` in ``order``, as HTML; no change
        when there are none (the search's own message stays)."""
        if not groups:
            return gr.skip()
        if order not in ORDERS:
            raise gr.Error(f"Unknown order {order!r}; choose {' or '.join(ORDERS)}.", print_exception=False)
        ordered = groups if order == MOST_ALIKE else groups[::-1]  # the finder sorts them most alike first
        number = min(max(1, int(page or 1)), _pages(len(groups)))
        start = (number - 1) * GROUPS_SHOWN
        shown = ordered[start:start + GROUPS_SHOWN]
        numbers = [start + i + 1 if order == MOST_ALIKE else len(groups) - start - i for i in range(len(shown))]
        return self._review_html(shown, numbers)

    def _review_html(self, groups: list[DuplicateGroup], numbers: list[int]) -> str:
        """The groups side by side, each titled with its number in the export (most alike first)."""
        rows = []
        for number, group in zip(numbers, groups):
            cells = [self._cell(copy, keeper=index == 0) for index, copy in enumerate(group.copies)]
            rows.append(f'<div class="mmr-dup-group"><div class="mmr-dup-title">Group {number} · lowest similarity '
                        f'{group.score:.3f}</div><div class="mmr-dup-row">{"".join(cells)}</div></div>')
        # A grid that wraps: a row of copies that scrolled sideways hid most of a group on a phone.
        style = ("<style>.mmr-dup-row{display:grid;grid-template-columns:repeat(auto-fill,minmax(140px,1fr));"
                 "gap:10px;padding:4px 0 10px}"
                 ".mmr-dup-cell{min-width:0;max-width:180px;font-size:12px;border:2px solid transparent;"
                 "border-radius:6px;padding:3px;overflow-wrap:anywhere}.mmr-dup-cell.keep{border-color:#2ca02c}"
                 ".mmr-dup-cell img{max-width:100%;max-height:160px;display:block}"
                 ".mmr-dup-title{font-weight:600;margin-top:8px}"
                 ".mmr-dup-role{font-weight:600}.mmr-dup-folder{color:#666;overflow-wrap:anywhere}</style>")
        return style + "".join(rows)

    def _cell(self, copy: Any, keeper: bool) -> str:
        image = self.ctx.thumbnails.get(self.ctx.image_path, copy.id, max_side=REVIEW_PX)
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format="WEBP", quality=80)
        source = "data:image/webp;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
        size = f"{copy.width} × {copy.height} px" if copy.width else "size unknown"
        on_disk = f"{copy.bytes / 1024:.0f} KiB" if copy.bytes >= 0 else "file missing"
        role = "keep (suggested)" if keeper else f"copy · similarity {copy.score:.3f}"
        # copies often share a name in different folders: the folder is shown too, the whole path on hover
        path = Path(display_path(copy.path))
        name, folder, whole = (html.escape(text, quote=True) for text in (path.name, str(path.parent), str(path)))
        return (f'<div class="mmr-dup-cell{" keep" if keeper else ""}" title="{whole}">'
                f'<img src="{source}" alt="{name}"><div class="mmr-dup-role">{html.escape(role)}</div>'
                f'<div>{name}</div><div class="mmr-dup-folder">in {folder}</div>'
                f'<div>{size}, {on_disk}</div><div>id {copy.id}</div></div>')

    def _export(self, groups: list[Any]) -> tuple[Path, Path]:
        """A folder of ours with ``copies-to-review.txt`` (other copies' paths) and ``duplicates.csv`` (all).

        ``duplicates.csv`` names the true files byte for byte (a non-UTF-8 name as its own bytes).
        ``copies-to-review.txt`` has one path a line, as ``mmr duplicates`` prints it in TSV: a non-UTF-8 name as
        its own bytes, and a backslash, tab, line break or other control character in a name escaped
        (:func:`~mmretrieval.json_lines.tsv_text`: ``\\\\``, ``\\t``, ``\\n``, ``\\xHH``), which
        :func:`~mmretrieval.json_lines.tsv_unescape` reverses; a path without any is the name byte for byte.
        """
        prune_exports(self.ctx.export_dir)
        folder = self.ctx.export_dir / f"duplicates-{uuid.uuid4().hex[:8]}"
        folder.mkdir(parents=True)
        table = io.StringIO()
        writer = csv.writer(table)
        writer.writerow(["group", "role", "id", "path", "similarity_to_keeper", "width", "height", "bytes"])
        for number, group in enumerate(groups, 1):
            for index, copy in enumerate(group.copies):
                writer.writerow([number, "keep" if index == 0 else "copy", copy.id, copy.path, f"{copy.score:.6f}",
                                 copy.width, copy.height, copy.bytes])
        (folder / "duplicates.csv").write_text(table.getvalue(), encoding="utf-8", errors="surrogateescape")
        # one path a line: a name holding a line break or a backslash is escaped as `mmr duplicates` prints it
        others = "".join(f"{tsv_text(copy.path)}\n" for group in groups for copy in group.copies[1:])
        target = folder / "copies-to-review.txt"
        target.write_text(others, encoding="utf-8", errors="surrogateescape")
        return target, folder / "duplicates.csv"


def _preferred(folders: list[str]) -> str:
    """The preference in the summary's list of rules: "one in /a, else in /b; then " (or "" with none)."""
    if not folders:
        return ""
    return "one in " + ", else in ".join(markdown_code(display_path(folder)) for folder in folders) + "; then "


def _pages(groups: int) -> int:
    return max(1, -(-groups // GROUPS_SHOWN))


def _left_out(groups: list[DuplicateGroup]) -> list[str]:
    """What the groups leave out, and names the list shows escaped: one sentence each."""
    left_out = LeftOut.of(groups)
    escaped = sum(tsv_text(path) != path for group in groups for path in group.paths[1:])  # the list's names
    notes = []
    if left_out.aliases:
        verb = "names" if left_out.aliases == 1 else "name"
        notes.append(f"{counted(left_out.aliases, 'path')} {verb} a file its group already shows (a hard link, or a "
                     "folder reached through a link): not shown as copies, since deleting one deletes that file")
    if left_out.gone:
        verb = "is" if left_out.gone == 1 else "are"
        notes.append(f"{counted(left_out.gone, 'file')} of these groups {verb} gone since ingested, left out (`mmr "
                     "ingest --prune` drops them)")
    if left_out.changed:
        verb = "has" if left_out.changed == 1 else "have"
        notes.append(f"{counted(left_out.changed, 'file')} of these groups {verb} changed since embedded, left out: "
                     "their stored vectors may show another picture (`mmr ingest` embeds them again)")
    if escaped:
        verb = "holds" if escaped == 1 else "hold"
        notes.append(f"{counted(escaped, 'path')} in the list {verb} a backslash, a tab, a line break or another "
                     "control character, written with backslash escapes (\\\\, \\t, \\n, \\xHH); the CSV has "
                     "them whole")
    return notes
