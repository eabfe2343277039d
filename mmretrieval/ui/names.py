"""How file paths and other text are shown in the browser: as readable UTF-8, and as text, never as markup.

The catalog hands paths back as ``os.fsdecode`` of their stored bytes, so a name that is not valid UTF-8
(``caf\\xe9.png`` from a Latin-1 system) holds a lone surrogate (``'\\udce9'``). That string opens the right
file, but JSON, HTML, pandas and zip member names cannot encode it, and the whole response fails.

So the two uses are kept apart: whatever the browser *reads* (captions, hits, details, tables, download
names, messages quoting a path) goes through :func:`display_path`; whatever *opens* the file (thumbnails,
originals, the duplicates export) keeps the true path or the catalog id.

Text from users and from the file system (queries, labels, captions, file names) is shown in Markdown
components, which render raw HTML, images and links; :func:`markdown_text` and :func:`markdown_code` escape
it so that it reads as itself.
"""

from __future__ import annotations

import os
import re


def display_path(path: str | bytes | os.PathLike) -> str:
    """``path`` (or a message quoting one) as text for people: each undecodable byte shown as U+FFFD.

    The same replacement the library uses in files written for people (the labels CSV), so a name reads
    the same in the UI and in its exports. Valid names come back unchanged.
    """
    text = os.fspath(path)
    if isinstance(text, bytes):
        return text.decode("utf-8", "replace")
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate no file system name decodes to: nothing to recover
        raw = text.encode("utf-8", "replace")
    return raw.decode("utf-8", "replace")


# Characters that Markdown (CommonMark with GitHub's extensions) gives a meaning anywhere in a line: emphasis,
# code spans, links and images, raw HTML and entities, tables, strikethrough, and the backslash itself.
# CommonMark lets any ASCII punctuation be backslash-escaped, so "\<" is a literal "<". ("$$" is not here:
# Gradio finds LaTeX in the rendered text, after escapes are gone, so the layout turns LaTeX off instead.)
_MARKDOWN_SPECIAL = frozenset("\\`*_{}[]()#+!|<>~&")
# What a line may start with to become a list item, heading, quote or setext underline: escaped only there, so
# "scene-001.png" stays as it is mid-line (where "-" and "." mean nothing).
_LINE_START_SPECIAL = frozenset("-+=#>")
_LINE_BREAKS = frozenset("\r\n\v\f\x85\u2028\u2029")


def markdown_text(text: object) -> str:
    """``text`` (a query, a file name or path, a label) escaped to show as itself inside a Markdown line.

    Gradio's Markdown renders raw HTML, images and links: a query or a file name such as
    ``<img src=http://host/x.png>`` or ``[click](javascript:…)`` would otherwise become markup, and the browser
    would fetch the image. Every character Markdown reads as syntax is backslash-escaped (a ``<`` can then never
    open a tag), so are the ``:`` of ``http://`` and the ``.`` of ``www.`` (GitHub's autolinks), a line break
    becomes "↵" so the text cannot start a new block, and undecodable bytes show as U+FFFD (as
    :func:`display_path`). ``-`` and ``.`` are escaped only where a line's start would make them a list, so
    ``scene-001.png`` reads the same escaped or not. The result is for use inside a line, not a code span.
    """
    out = []
    for char in _readable(text):
        if char in _LINE_BREAKS:
            out.append("↵")
        elif char == "\t":
            out.append(" ")
        elif char in _MARKDOWN_SPECIAL:
            out.append("\\" + char)
        else:
            out.append(char)
    escaped = "".join(out)
    # GitHub's autolinks: "http://…" and "www.…" become links without any syntax; an escape breaks the match.
    escaped = re.sub(r"(?i)\b(https?|ftp)://", r"\1\\://", escaped)
    escaped = re.sub(r"(?i)\bwww\.", r"www\\.", escaped)
    if escaped[:1] in _LINE_START_SPECIAL:
        escaped = "\\" + escaped
    numbered = re.match(r"\d+(?=[.)])", escaped)  # "1. x" or "1) x" at a line's start is an ordered list
    if numbered:
        escaped = escaped[:numbered.end()] + "\\" + escaped[numbered.end():]
    return escaped


def markdown_code(text: object) -> str:
    """``text`` as a Markdown code span that shows it verbatim, backticks included.

    Inside a code span nothing is syntax (no HTML, no emphasis), but a backtick in the text would end a span
    fenced by one backtick; so the fence is one backtick longer than the longest run in the text. Empty text
    gives "" (an empty span cannot be written).
    """
    shown = "".join("↵" if char in _LINE_BREAKS else char for char in _readable(text))
    if not shown:
        return ""
    longest = max((len(run) for run in re.findall(r"`+", shown)), default=0)
    fence = "`" * (longest + 1)
    # A backtick next to the fence would lengthen it; a space on both sides would be stripped. A padding space
    # on each side (which CommonMark strips again) keeps both as they are.
    stripped = shown[0] == " " and shown[-1] == " " and shown.strip(" ")
    padded = f" {shown} " if shown[0] == "`" or shown[-1] == "`" or stripped else shown
    return f"{fence}{padded}{fence}"


def _readable(text: object) -> str:
    """A path, bytes or any value as text, undecodable bytes shown as U+FFFD."""
    return display_path(text if isinstance(text, (str, bytes, os.PathLike)) else str(text))
