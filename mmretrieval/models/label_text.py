"""Labels as people give them: typed text (comma-separated on one line, one a line over several), ``@FILE`` and
streams of one label a line,
or a Python iterable; deduplicated, with labels that differ only in case or Unicode normalisation made one, and text
that is not UTF-8 refused.
"""

from __future__ import annotations

import unicodedata
import warnings
from pathlib import Path
from typing import BinaryIO, Iterable, Sequence

from ..errors import MMRError, QueryError
from ..json_lines import bytes_escaped
from .inputs import listed

WARNINGS_SHOWN = 3  # labels merged (or renamed, by organize) warned about one by one; the rest in one line


def label_key(label: str) -> str:
    """How labels are compared: Unicode-normalised (NFC) and casefolded, as CLIP's lowercasing tokenizer reads them."""
    return unicodedata.normalize("NFC", label).casefold()


def few_warnings(messages: Sequence[str], rest: str) -> list[str]:
    """The warnings to give for ``messages``: the first :data:`WARNINGS_SHOWN`, then one line for the others
    (``rest`` with ``{count}``), so that a vocabulary of thousands does not print thousands of lines."""
    more = len(messages) - WARNINGS_SHOWN
    return [*messages[:WARNINGS_SHOWN], *([rest.format(count=more)] if more > 0 else [])]


def parse_labels(values: str | Sequence[str | BinaryIO], *, read_files: bool = True) -> list[str]:
    """Labels from text: comma-separated on one line, one a line over several (:func:`_typed_labels`: commas kept,
    ``# `` comment lines skipped); ``@FILE`` reads one label per line (UTF-8, a byte-order mark ignored; commas kept,
    so "Paris, France" is one label; blank lines and lines starting with ``#`` skipped), and so does a binary stream
    among ``values`` (the command line's ``@-`` passes its standard input). ``@-`` itself is the file named ``-``:
    only a caller that hands over a stream has it read.

    Order kept, duplicates dropped. Labels that differ only in case or in Unicode normalisation (an accent typed
    as one character or as a letter plus a combining mark) are one label, spelt as it first came, with a warning:
    CLIP's tokenizer lowercases, so "Circle" and "circle" would split one label's probability in two.

    ``read_files=False`` is for labels typed by someone who may not read this machine's files (the web UI): a
    label that starts with ``@`` is refused instead of naming a file to read.

    Raises:
        QueryError: no labels, an unreadable ``@FILE`` or stream, ``@`` where files are not read, or a label that
            is not UTF-8 text (:func:`check_utf8`).
    """
    if isinstance(values, str) or hasattr(values, "read"):
        values = [values]
    parts: list[str] = []
    files = []  # the @FILEs and streams read, for the message when they hold no label
    for value in values:
        if not read_files:
            if not isinstance(value, str):
                raise QueryError("labels typed here are text; a stream of labels is read only where files are")
            typed = _typed_labels(value)
            if any(part.strip().startswith("@") for part in typed):
                raise QueryError("a label cannot start with '@' here: that is how the command line names a file "
                                 "of labels, and files are not read from here")
        elif isinstance(value, str) and not value.startswith("@"):
            typed = _typed_labels(value)
        else:
            typed = [line for line in _label_file_text(value).splitlines() if not line.lstrip().startswith("#")]
            files.append(value[1:] if isinstance(value, str) else _stream_name(value))
        parts.extend(typed)
    labels = _one_per_case([label for label in (part.strip() for part in parts) if label], stacklevel=2)
    if not labels:
        read = f" ({', '.join(files)} held none, one a line)" if files else ""
        raise QueryError(f"no labels given{read}: pass e.g. --labels 'cat,dog,car' or --labels @labels.txt")
    return labels


def _typed_labels(text: str) -> list[str]:
    """Labels typed as text: one a line when the text has several lines, as in ``@FILE`` (a pasted class list keeps
    "tench, Tinca tinca" one label; a comment line, ``#`` then a space, skipped, while ``#sunset`` is a label),
    else separated by commas. A line holding a comma is kept whole with a warning: it may be a comma list that was
    meant to be split."""
    lines = text.strip().splitlines()
    if len(lines) < 2:
        return text.split(",")
    labels = [line for line in lines if line.strip() != "#" and not line.lstrip().startswith("# ")]
    with_commas = [label.strip() for label in labels if "," in label]
    if with_commas:
        warnings.warn(f"kept {with_commas[0]!r}{f' and {len(with_commas) - 1} more' if len(with_commas) > 1 else ''} "
                      "as one label: over several lines each line is one label (on one line, commas separate them)",
                      stacklevel=3)
    return labels


def normalise_labels(labels: str | Iterable[str]) -> list[str]:
    """The labels of the Python API: one string is parsed as typed (:func:`parse_labels`, ``@FILE`` included);
    any other iterable (a list, a tuple, a generator) holds one label per item, each stripped, and goes through
    the same checks: order kept, duplicates dropped, labels that differ only in case or Unicode normalisation made
    one with a warning, text that is not UTF-8 refused.
    An item is a label as it is: a comma or a leading ``@`` in it is part of it ("Paris, France").

    Args:
        labels: one string of labels as typed (comma-separated on one line, one a line over several), or an
            iterable of labels.

    Returns:
        The labels, at least one.

    Raises:
        QueryError: an item that is not a ``str``, is blank or is not UTF-8 text, no labels, or ``labels`` neither a
            string nor an iterable.
    """
    if isinstance(labels, str):
        return parse_labels(labels)
    stripped = []
    for index, label in enumerate(listed(labels, (str,), "label", "a str")):
        if not label.strip():
            raise QueryError(f"label {index} is empty ({label!r}); drop it or name the label")
        stripped.append(label.strip())
    if not stripped:
        raise QueryError("no labels given: pass e.g. ['cat', 'dog', 'car']")
    return _one_per_case(stripped, stacklevel=3)


def _one_per_case(labels: Iterable[str], *, stacklevel: int) -> list[str]:
    """``labels`` in order without duplicates; labels that differ only in case or Unicode normalisation are one,
    spelt as it first came, with a warning: CLIP's tokenizer lowercases, so "Circle" and "circle" would split one
    label's probability in two, and "café" typed with a combining accent is the same word (stored apart, a
    ``--label`` filter would find only one of them). ``stacklevel`` is the warning's, counted from the caller of
    this function.

    Raises:
        QueryError: a label that is not UTF-8 text (:func:`check_utf8`).
    """
    kept: dict[str, str] = {}  # normalised, casefolded label -> its first spelling, in the order labels came
    merged = []  # a warning for each label merged into an earlier one
    for label in labels:
        check_utf8(label, "label")
        first = kept.setdefault(label_key(label), label)
        if label.casefold() != first.casefold():  # the same characters written apart: escaped, so that it shows
            merged.append(f"labels {first!r} and {ascii(label)} differ only in Unicode normalisation (an accent as "
                          f"one character or as a combining mark) or case: kept {first!r} as one label")
        elif label != first:
            merged.append(f"labels {first!r} and {label!r} differ only in case: kept {first!r} as one label")
    for message in few_warnings(merged, "{count} more labels differ only in case or Unicode normalisation from an "
                                        "earlier one, and were merged into it likewise"):
        warnings.warn(message, stacklevel=stacklevel + 1)
    return list(kept.values())


def check_utf8(text: str, what: str, error: type[MMRError] = QueryError) -> str:
    """``text``, if it is text that UTF-8 can hold. A command-line argument in another encoding (a Latin-1 terminal,
    say) reaches Python with each byte that is not UTF-8 as a lone surrogate (``\\udcff``): SQLite refuses to store
    that, and a tokenizer reads it as some other character.

    Args:
        what: what ``text`` is, for the message ("label", "label set name").
        error: the exception type to raise.

    Raises:
        error: ``text`` holds such a character; the message shows it with its bytes escaped (``'r\\xffed'``).
    """
    if any("\ud800" <= char <= "\udfff" for char in text):
        shown = bytes_escaped(text)
        raise error(f"{what} '{shown}' is not UTF-8 text: it holds bytes that are not characters (shown as \\x..), "
                    "as a terminal or file in another encoding passes them; type it again in UTF-8")
    return text


def _stream_name(stream: BinaryIO) -> str:
    name = getattr(stream, "name", "a stream")
    return "standard input" if name == "<stdin>" else str(name)


def _label_file_text(value: str | BinaryIO) -> str:
    """The text of ``@FILE``, or of a binary stream, as UTF-8 without a byte-order mark."""
    name = value[1:] if isinstance(value, str) else _stream_name(value)
    if isinstance(value, str) and not name:
        raise QueryError("'@' names no file: write @FILE for a file of labels, one a line (@- reads standard input)")
    try:
        if isinstance(value, str):
            return Path(name).read_text(encoding="utf-8-sig")
        return value.read().decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise QueryError(f"cannot read labels from {name}: {exc}") from exc

