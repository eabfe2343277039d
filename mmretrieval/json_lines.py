"""Lines for tools (JSON lines, TSV cells) that name files by what they are: a name that is not UTF-8 keeps its
bytes in JSON, and a name holding a backslash, a tab or a line break is escaped in TSV (reversibly), never changed
into another name.

Python holds such a name as a str with surrogate escapes (``os.fsdecode``). ``json.dumps`` would write them as
lone surrogates, which is not valid UTF-8; replacing them with U+FFFD would name a file that does not exist.
"""

from __future__ import annotations

import json
import re
from typing import Any, Mapping

# How os.fsdecode keeps the bytes of a name that is not UTF-8; DEL, the C1 controls and Unicode's line and
# paragraph separators, which JSON may leave raw but str.splitlines() would break a line at (\x85, \u2028...);
# and the bidirectional overrides and isolates, which reorder a name shown in a terminal (see _CONTROL).
_JSON_ESCAPED = re.compile(r"[\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\udc80-\udcff]")


def json_line(value: Any) -> str:
    """``value`` as one line of JSON that is valid UTF-8 whatever the file names in it: the undecodable bytes of a
    non-UTF-8 name (surrogate escapes in memory) are written as ``\\udcXX`` escapes, which Python reads back
    into the same str (``os.fsencode`` then gives the original bytes) and other tools show as U+FFFD. The
    characters that JSON may leave raw but ``str.splitlines()`` breaks at (``\\x85``, ``\\u2028``, ``\\u2029``)
    are written as ``\\uXXXX`` escapes too, so that any reader sees one line, and so are the bidirectional
    overrides and isolates (U+202A-202E, U+2066-2069), so that a terminal shows each name in its own order."""
    return _JSON_ESCAPED.sub(lambda match: f"\\u{ord(match.group()):04x}", json.dumps(value, ensure_ascii=False))


# Control characters (C0, DEL, C1) and Unicode's line and paragraph separators: every character that
# str.splitlines() breaks a line at is among them, and none of them belongs raw in a cell or on a terminal; and
# the bidirectional embeddings, overrides and isolates, which make a terminal show a name in another order
# ("photo\u202egnp.exe" reads as "photoexe.png"), as Trojan Source showed for code (CVE-2021-42574).
_CONTROL = r"\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069"
_TSV_SPECIAL = re.compile(rf"[\\{_CONTROL}]")
_MESSAGE_SPECIAL = re.compile(f"[{_CONTROL}]")
_SURROGATE = re.compile("[\ud800-\udfff]")  # lone surrogates: a non-UTF-8 name's bytes (\udc80-\udcff) or worse
_SHORT_ESCAPES = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"}
_TSV_ESCAPE = re.compile(r"\\(x[0-9a-f]{2}|u[0-9a-f]{4}|[\\tnr])?")  # what tsv_text writes, for tsv_unescape


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    short = _SHORT_ESCAPES.get(char)
    if short is not None:
        return short
    return f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}"


def tsv_text(text: str) -> str:
    """``text`` as one TSV cell, escaped in the manner of PostgreSQL's COPY text format, so that the cell is one
    line and reads back as exactly ``text`` (:func:`tsv_unescape`): a backslash is always written ``\\\\``, a tab
    and the line breaks ``\\t``, ``\\n``, ``\\r``, and every other control character (among them the other
    characters ``str.splitlines()`` breaks at: ``\\x0b``, ``\\x0c``, ``\\x1c``-``\\x1e``, ``\\x85``), the
    Unicode separators ``\\u2028``, ``\\u2029`` and the bidirectional controls ``\\u202a``-``\\u202e``,
    ``\\u2066``-``\\u2069`` as ``\\xHH`` or ``\\uHHHH``; any other text stays as it is. A
    name is never turned into another file's name (a tab made a space could name a file that exists), and two
    names never give one cell; ``--json`` keeps such names whole.

    The undecodable bytes of a non-UTF-8 name (surrogate escapes) are left as they are, for stdout to write as
    the name's own bytes.
    """
    return _TSV_SPECIAL.sub(_escape, text)


def tsv_unescape(cell: str) -> str:
    """The text that :func:`tsv_text` wrote as ``cell``.

    Raises:
        ValueError: ``cell`` holds a backslash that does not start one of :func:`tsv_text`'s escapes.
    """
    def unescape(match: re.Match[str]) -> str:
        escape = match.group(1)
        if escape is None:
            raise ValueError(f"{cell!r} is not a TSV cell: a backslash at {match.start()} starts no escape "
                             "(\\\\, \\t, \\n, \\r, \\xHH, \\uHHHH)")
        if len(escape) > 1:
            return chr(int(escape[1:], 16))
        return {"t": "\t", "n": "\n", "r": "\r"}.get(escape, escape)

    return _TSV_ESCAPE.sub(unescape, cell)


def tsv_pairs(pairs: Mapping[Any, Any]) -> str:
    """``pairs`` as one TSV cell ``KEY=VALUE, KEY=VALUE`` (``mmr info``'s labels, imported folders, counts), ``-``
    when empty (no entry is: each holds ``=``). Each key and value is written as :func:`tsv_text` writes it, with
    its commas and equals signs written ``\\x2c`` and ``\\x3d`` too, so the only ``, `` and ``=`` left are the
    separators: split on them, then :func:`tsv_unescape` each part."""
    def part(value: Any) -> str:
        return tsv_text(str(value)).replace(",", "\\x2c").replace("=", "\\x3d")

    return ", ".join(f"{part(key)}={part(value)}" for key, value in pairs.items()) or "-"


def one_line(message: str) -> str:
    """``message`` for a person, kept on one line: its control characters (line breaks, tabs, the terminal's
    escape sequences) written as :func:`tsv_text` writes them, so a file name holding a line break cannot split
    an error in two; the bytes of a name that is not UTF-8 are written ``\\xNN`` (stderr would show ``\\udcNN``).
    Backslashes are left as they are (a name quoted with ``repr`` reads as written): this is for reading, not for
    tools to parse."""
    return bytes_escaped(_MESSAGE_SPECIAL.sub(_escape, message))


def bytes_escaped(text: str) -> str:
    """``text`` with the bytes of a name that is not UTF-8 (surrogate escapes, as ``os.fsdecode`` keeps them)
    written ``\\xNN``, and any other lone surrogate ``\\uXXXX``: text that UTF-8 can hold (SQLite, a message),
    and that shows which bytes they were."""
    def escape(match: re.Match[str]) -> str:
        code = ord(match.group())
        return f"\\x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"\\u{code:04x}"

    return _SURROGATE.sub(escape, text)
