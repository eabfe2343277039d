"""Lines for tools (JSON lines, TSV cells) that name files by what they are: a name that is not UTF-8 keeps its
bytes in JSON, and a name holding a tab or a line break is escaped in TSV, never changed into another name.

Python holds such a name as a str with surrogate escapes (``os.fsdecode``). ``json.dumps`` would write them as
lone surrogates, which is not valid UTF-8; replacing them with U+FFFD would name a file that does not exist.
"""

from __future__ import annotations

import json
import re
from typing import Any

_SURROGATE = re.compile("[\udc80-\udcff]")  # how os.fsdecode keeps the bytes of a name that is not UTF-8


def json_line(value: Any) -> str:
    """``value`` as one line of JSON that is valid UTF-8 whatever the file names in it: the undecodable bytes of a
    non-UTF-8 name (surrogate escapes in memory) are written as ``\\udcXX`` escapes, which Python reads back
    into the same str (``os.fsencode`` then gives the original bytes) and other tools show as U+FFFD."""
    return _SURROGATE.sub(lambda match: f"\\u{ord(match.group()):04x}", json.dumps(value, ensure_ascii=False))


_TSV_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def tsv_text(text: str) -> str:
    """``text`` as one TSV cell: where it holds a tab or a line break, those and its backslashes are written as
    ``\\t``, ``\\n``, ``\\r`` and ``\\\\``; any other text stays as it is. A name is never turned into another
    file's name (a tab made a space could name a file that exists); ``--json`` keeps such names whole."""
    if "\t" in text or "\n" in text or "\r" in text:
        return text.translate(_TSV_ESCAPES)
    return text
