"""The Search tab's boxes as the collection takes them, and the words its status line says them in: filters, dates,
image ids, the number of results, the threshold. Plain values in; errors as ``gr.Error`` in the page's own words.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import gradio as gr

from ..errors import QueryError
from .context import folder_prefix
from .names import display_path, markdown_text

MAX_K = 200  # most results one search (one page) returns
DEFAULT_K = 24  # results when the k box is left empty (the box's initial value too)
ECHO_CHARS = 120  # most characters of a query the status line repeats


@dataclass(frozen=True)
class SearchFilters:
    """The label, folder, date and camera filters of one search, as the collection takes them and in words."""

    arguments: dict[str, str]  # keyword arguments of Collection.search / similar
    words: tuple[str, ...]  # each filter as the status line says it (Markdown, escaped)
    names: tuple[str, ...]  # which filters are set ("label", "folder", "date", "camera"), for the empty-result hint

    @property
    def among(self) -> str:
        """" among images labelled 'x' and under /p" for the status line, or ""."""
        return (" among images " + " and ".join(self.words)) if self.words else ""


def search_filters(label: str | None, folder: str | None, after: str | None = None, before: str | None = None,
             camera: str | None = None) -> SearchFilters:
    """The label, folder, date and camera filters as search keyword arguments and as words for the status line.

    Dates are checked by the collection (``2024``, ``2024-06``, ``2024-06-01`` or an ISO datetime).

    Raises:
        gr.Error: a folder that is not an absolute path.
    """
    arguments, words, names = {}, [], []
    if (label or "").strip():
        arguments["label"] = label.strip()
        words.append(f"labelled {markdown_text(repr(label.strip()))}")
        names.append("label")
    prefix = folder_prefix(folder)
    if prefix:
        arguments["path_prefix"] = prefix
        words.append(f"under {markdown_text(display_path(prefix))}")
        names.append("folder")
    check_dates(after, before)
    for key, value, word, name in (("after", after, "taken from", "date"), ("before", before, "taken before", "date"),
                                   ("camera", camera, "from a camera matching", "camera")):
        if (value or "").strip():
            arguments[key] = value.strip()
            words.append(f"{word} {markdown_text(repr(value.strip()))}")
            if name not in names:
                names.append(name)
    return SearchFilters(arguments, tuple(words), tuple(names))


def check_dates(after: str | None, before: str | None) -> None:
    """The date boxes' errors in the page's own words ("Taken from", not the command line's --after).

    Raises:
        gr.Error: a box that holds no date, or a range that no photo can fall in.
    """
    from ..collection.filters import Filters, parse_date

    boxes = {"after": ("Taken from", (after or "").strip()), "before": ("Taken before", (before or "").strip())}
    for label, text in boxes.values():
        if text:
            try:
                parse_date(text, f"“{label}”")
            except QueryError as exc:
                raise gr.Error(f"{exc}.", print_exception=False) from None
    if boxes["after"][1] and boxes["before"][1]:
        try:
            Filters.of(after=boxes["after"][1], before=boxes["before"][1])
        except QueryError:
            raise gr.Error(f"“Taken from” {boxes['after'][1]!r} is not earlier than “Taken before” "
                           f"{boxes['before'][1]!r}: no photo can match (“Taken before” leaves out its own date: June "
                           "2024 is from 2024-06, before 2024-07).", print_exception=False) from None


def no_results_hint(filters: SearchFilters, threshold: float | None) -> str:
    """What to change when a search found nothing: the filters and the threshold that are set, and only those."""
    fixes = []
    if filters.names:
        which = " and ".join(filters.names)
        fixes.append(f"widen or clear the {which} filter{'s' if len(filters.names) > 1 else ''}")
    if threshold is not None:
        fixes.append(f"lower the score threshold (now {threshold:.2f}; −1 turns it off)")
    if not fixes:
        return "The collection holds nothing else to show: ingest a folder on the Collection tab."
    hint = " or ".join(fixes)
    folder = filters.arguments.get("path_prefix")
    missing = (f" There is no folder {markdown_text(display_path(folder))} on the server now."
               if folder and not os.path.isdir(folder) else "")  # a typo, as Duplicates would say
    return hint[0].upper() + hint[1:] + "." + missing


NO_THRESHOLD = "The score threshold is not used: images listed by filters alone have no score."


def taken_span(taken: list[str | None]) -> str:
    """When the listed images were taken, for the status line: "taken between 2023-02-05 and 2023-06-11", "taken on
    1965-07-04", with "(and N undated)" where some have no date."""
    days = sorted({when[:10] for when in taken if when})
    undated = sum(when is None for when in taken)
    if not days:
        return "all undated"
    span = f"taken on {days[0]}" if len(days) == 1 else f"taken between {days[0]} and {days[-1]}"
    return span + (f" (and {undated} undated)" if undated else "")


def echo(text: str) -> str:
    """A query as the status line repeats it: quoted, cut to ``ECHO_CHARS`` characters, escaped for Markdown."""
    shown = text if len(text) <= ECHO_CHARS else text[:ECHO_CHARS].rstrip() + "…"
    return markdown_text(repr(shown))


def image_id_of(value: float | str | None, missing: str) -> int:
    """The catalog id in ``value``: a number (the API) or the Image id box's text.

    Raises:
        gr.Error: ``missing`` when there is no id; a readable refusal for text that is not a number and for a
            number that is not a whole one from 1 (1.5 is refused, never rounded to another image).
    """
    if isinstance(value, str):
        typed = value.strip()
        try:
            value = float(typed) if typed else None
        except ValueError:
            raise gr.Error(f"{typed!r} is not an image id: type a whole number from 1, as search results and the "
                           "details panel show them.", print_exception=False) from None
    if value is None:
        raise gr.Error(missing, print_exception=False)
    if not math.isfinite(value) or value != int(value) or value < 1:
        raise gr.Error(f"{value:g} is not an image id: ids are whole numbers from 1, as search results and the "
                       "details panel show them.", print_exception=False)
    return int(value)


def results_wanted(k: float | None) -> tuple[int, str]:
    """How many results to fetch for the k box's value, and a note for the status line when it was capped.

    An empty box means the default: the API sends None, and the page's slider sends its minimum, 0.
    """
    if k is None or math.isnan(k) or k < 1:
        return DEFAULT_K, ""
    if k != int(k):  # rounded, 2.5 gave 2 results without a word
        raise gr.Error(f"k = {k:g}: the number of results is a whole number, e.g. {math.ceil(k)}.",
                       print_exception=False)
    if k > MAX_K:
        return MAX_K, f"k = {k:g} is more than one search returns: showing the best {MAX_K}."
    return int(k), ""


def threshold_of(threshold: float | None) -> float | None:
    return None if threshold is None or threshold <= -1 else float(threshold)
