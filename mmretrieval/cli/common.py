"""Options and output helpers shared by the command modules."""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, Any, Callable, Iterable

from ..errors import CollectionError, QueryError
from ..json_lines import json_line, one_line, tsv_text
from ..models.settings import DEVICES, MULTI_LABEL_THRESHOLD, PRECISIONS

if TYPE_CHECKING:
    from ..collection.collection import Collection
    from ..collection.query import Query


def say(line: str) -> None:
    """Print ``line`` on stderr, the one way ``mmr`` prints a message (a summary, a note, a warning, an error): kept
    on one line whatever the file names, labels or set names in it hold, and a name that is not UTF-8 shown by its
    bytes, ``\\xNN`` (:func:`~mmretrieval.json_lines.one_line`), where printing would write a ``\\udcNN`` escape or
    fail. Results go to stdout instead, and progress bars are tqdm's."""
    print(one_line(line), file=sys.stderr, flush=True)


def labels_with_stdin(values: list[str]) -> list[Any]:
    """``--labels`` values with ``@-`` as standard input's byte stream, which
    :func:`~mmretrieval.models.label_text.parse_labels` reads as it reads ``@FILE``.

    Raises:
        QueryError: ``@-`` given twice, or no standard input to read.
    """
    if values.count("@-") > 1:
        raise QueryError("standard input given twice (--labels @-); it is read once")
    if "@-" in values and sys.stdin is None:
        raise QueryError("--labels @- reads labels from standard input, and this process has none")
    return [sys.stdin.buffer if value == "@-" else value for value in values]


def open_collection(directory: str, **options: Any) -> "Collection":
    """``Collection.open``, imported only when a command runs: ``mmr --help`` and the decoding workers (which
    import the running script) should not pay for torch."""
    from ..collection.collection import Collection

    return Collection.open(directory, **options)


def warn_unread_query(collection: "Collection", query: "Query", command: str = "search") -> None:
    """One line on stderr when the model reads only the beginning of one of ``query``'s texts (it cuts each to its
    context, so words past that change nothing: :func:`~mmretrieval.models.encoder.unread_note`)."""
    texts = [term.text for term in (*query.positives, *query.negatives) if term.text]
    if texts:  # an image-only query loads no text model for this
        from ..models.encoder import unread_note

        note = unread_note(collection.text_model(), texts)
        if note:
            say(f"mmr {command}: warning: {note}")


def add_model_options(parser: argparse.ArgumentParser, default: str | None = "builtin:shapes",
                      default_note: str = "") -> None:
    """``--model``, ``--device``, ``--precision`` and ``--dim``, the same everywhere (``default_note``: the help's
    words for a ``default`` of None)."""
    parser.add_argument(
        "--model", default=default,
        help="model spec: ARCH:PRETRAINED (open_clip registry), hf-hub:ORG/REPO, a local model directory, "
        f"or builtin:shapes (default: {default or default_note})",
    )
    parser.add_argument("--device", default="auto", help=f"{DEVICES} (default: auto)")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="number format of the model: auto (bf16 on CUDA, float32 on CPU), fp32, or bf16 (on "
                        "CPUs with AVX512-BF16 or AMX, about twice as fast as float32 with ViT-B-32; vectors agree "
                        "with float32's to ~2e-3)")
    parser.add_argument("--dim", type=int, default=None,
                        help="truncate vectors to this many dimensions and renormalise (Matryoshka-style; "
                        "warns unless the model was trained for it)")


def probability(text: str) -> float:
    """An argparse type: a number from 0 to 1."""
    value = _number(text, float)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be a probability from 0 to 1, got {text}")
    return value


def cosine(text: str) -> float:
    """An argparse type: a number from -1 to 1."""
    value = _number(text, float)
    if not -1.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be a cosine from -1 to 1, got {text}")
    return value


def multi_label_threshold(args: argparse.Namespace) -> float:
    """``--threshold`` (default :data:`MULTI_LABEL_THRESHOLD`), refused without ``--multi-label``, where every
    image gets its best label whatever its probability and the cutoff would be silently ignored."""
    if args.threshold is None:
        return MULTI_LABEL_THRESHOLD
    if not args.multi_label:
        raise QueryError("--threshold applies with --multi-label; without it each image gets its best label")
    return args.threshold


class Once(argparse.Action):
    """Store an option's value, refusing the option given twice: filters do not combine, and keeping only the
    last one (argparse's way) would quietly drop the other."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        if getattr(namespace, self.dest, None) is not None:
            parser.error(f"{option_string} given twice; give it once (filters of different kinds combine)")
        setattr(namespace, self.dest, values)


def path_prefix(text: str) -> str:
    """``--prefix``: a folder that exists matches the images inside it only (``photos/2024`` not
    ``photos/2024-old/``); other text is a prefix of the path as it is (``photos/IMG_``)."""
    if text and not text.endswith(os.sep) and os.path.isdir(text):
        return text + os.sep
    return text


def ray_address(text: str) -> str:
    """``--ray [ADDRESS]``: a cluster address (host:port, auto, ray://host:10001), never a file or folder here, which
    ``mmr ingest --ray photos`` would have taken for one (the option's value is optional, so it takes the next
    word)."""
    if text and ":" not in text and text != "auto" and os.path.exists(os.path.expanduser(text)):
        raise argparse.ArgumentTypeError(f"{text!r} is a {'folder' if os.path.isdir(text) else 'file'} here, taken "
                                         "as the cluster's address; put --ray last, or write --ray=ADDRESS "
                                         "(host:port, auto, ray://host:10001)")
    return text


def at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number no smaller than ``minimum``."""
    def parse(text: str) -> int:
        value = _number(text, int)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {text}")
        return value
    return parse


def positive_seconds(text: str) -> float:
    """An argparse type: a duration in seconds above 0."""
    value = _number(text, float)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a number of seconds above 0, got {text}")
    return value


def _number(text: str, kind: type) -> Any:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a {'whole ' if kind is int else ''}number: {text!r}") from None
    if value != value:  # NaN compares false with everything, so every range check would let it through
        raise argparse.ArgumentTypeError(f"not a number: {text!r}")
    return value


def add_null_option(parser: argparse.ArgumentParser) -> None:
    """``--null``: the paths on standard input (the source ``-``) end with NUL, as ``find -print0`` writes. (No
    ``-0``: an option that looks like a negative number makes argparse read ``--timeout -5`` as two options.)"""
    parser.add_argument("--null", action="store_true",
                        help="with -: each path on standard input ends with NUL, not a newline (find -print0), and "
                        "is taken exactly as it is")


def add_collection_option(parser: argparse.ArgumentParser, writer: bool = False, creates: bool = False) -> None:
    """``--collection DIR``, defaulting to ``$MMR_COLLECTION``, else the default collection (resolved when the
    command runs: :func:`collection_or_default`); for a ``writer`` command, ``--wait`` too. ``creates``: the command
    makes a collection that does not exist (ingest, import)."""
    parser.add_argument(
        "--collection", metavar="DIR",
        help="collection directory (default: $MMR_COLLECTION, else the default collection in the user data "
        "folder, ~/.local/share/mmretrieval/collection on Linux)",
    )
    parser.set_defaults(collection_creates=creates)
    if writer:
        parser.add_argument("--wait", action="store_true",
                            help="wait for another process writing the collection to finish (default: exit 75 "
                            "at once)")


def collection_or_default(args: argparse.Namespace) -> None:
    """Give ``args`` the default collection where it names none; a command that does not create one needs it to
    exist.

    Raises:
        CollectionError: no collection named, and no default collection yet.
    """
    if getattr(args, "collection", "") is not None or not hasattr(args, "collection_creates"):
        return
    if os.environ.get("MMR_COLLECTION"):
        args.collection = os.environ["MMR_COLLECTION"]
        args.collection_from_env = True  # an error about "--collection" is about this, see named_collection
        return
    from ..cache import default_collection_dir
    from ..collection.catalog import is_collection

    default = default_collection_dir()
    if not is_collection(default):
        if not args.collection_creates:
            raise CollectionError(f"no --collection given, and the default collection {default} does not exist yet: "
                                  "`mmr ingest FOLDER --model SPEC` makes it, or name one with --collection DIR (or "
                                  "$MMR_COLLECTION)")
        if getattr(args, "model", None) is None and args.command == "ingest":
            # the demo model knows coloured shapes only: a library ingested with it by default is useless and
            # binds the collection to it
            raise CollectionError(f"the default collection {default} is made with the model you name: add --model, "
                                  "e.g. --model ViT-B-32:laion2b_s34b_b79k (the bundled demo model knows only "
                                  "coloured shapes; --collection DIR makes a collection of it)")
        say(f"mmr {args.command}: the default collection is {default} (--collection DIR or $MMR_COLLECTION names "
            "another)")
    args.collection = str(default)


def named_collection(message: str, args: argparse.Namespace) -> str:
    """``message``, saying where the collection it blames on ``--collection`` was named when that was
    ``$MMR_COLLECTION``."""
    if getattr(args, "collection_from_env", False) and "--collection" in message:
        return f"{message} (the collection is $MMR_COLLECTION's: {args.collection})"
    return message


def emit(rows: Iterable[dict[str, Any]], as_json: bool, columns: list[str]) -> int:
    """Print rows as JSON lines or TSV (``columns`` in order, no header); returns how many were printed.

    In TSV a file name that is not UTF-8 is written as its original bytes (JSON escapes it: :func:`json_line`).
    """
    names_as_bytes()
    count = 0
    for row in rows:
        if as_json:
            print(json_line(row))
        else:
            print("\t".join(_cell(row.get(column)) for column in columns))
        count += 1
    sys.stdout.flush()
    return count


def names_as_bytes() -> None:
    """Let stdout write a file name that is not UTF-8 (its surrogate escapes) as its original bytes, whatever the
    locale's error handler, so that TSV output names the real file."""
    reconfigure = getattr(sys.stdout, "reconfigure", None)
    if reconfigure is not None:
        reconfigure(errors="surrogateescape")


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "" if value is None else tsv_text(str(value))

