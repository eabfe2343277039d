"""Query commands: search (text, images, filters alone, labels) and similar.

Results go to stdout (``score<TAB>path`` lines, JSON lines with ``--json``, or NUL-ended paths with ``--null``);
progress bars and messages go to stderr. File names that are not valid UTF-8 are written back as their original
bytes.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from ..errors import CollectionError, QueryError
from .common import (Once, add_collection_option, at_least, cosine, emit, open_collection, path_prefix, say,
                     warn_unread_query)
from .photo_options import add_photo_filter_options, hit_rows, photo_filters

_HIT_COLUMNS = ["score", "path"]


def register(subparsers) -> None:
    """Add ``search`` and ``similar`` to the ``mmr`` parser."""
    _register_search(subparsers)
    _register_similar(subparsers)


def _add_result_options(parser: argparse.ArgumentParser, search: bool) -> None:
    """The options ``search`` and ``similar`` share (``search``: the help of the options that mean more there)."""
    add_collection_option(parser)
    parser.add_argument("--device", default="auto", help="where to run the model (default: auto)")
    parser.add_argument("-k", type=at_least(1), default=10, help="number of results (default 10)")
    parser.add_argument("--threshold", type=cosine, action=Once, help="drop results scoring below this cosine "
                        + ("(for --label with no query: below this probability); default: none" if search
                           else "(default: none)"))
    parser.add_argument("--prefix", action=Once, type=path_prefix,
                        help="only images in this folder (one that exists), or whose path starts with this text")
    parser.add_argument("--label", action=Once,
                        help="only images labelled this by `mmr label`: LABEL (any set) or SET:LABEL (exactly, else "
                        "ignoring case)")
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="JSON lines instead of score<TAB>path"
                        + (" (taken_at<TAB>path when filters alone list images)" if search else "")
                        + ", with the capture time and camera")
    output.add_argument("--null", action="store_true", help="the paths alone, in order, each ended by a NUL byte "
                        "(for xargs -0: any file name passes whole)")
    parser.add_argument("--gps", action="store_true", help="with --json: add each photo's latitude and longitude")
    add_photo_filter_options(parser)


def _register_search(subparsers) -> None:
    parser = subparsers.add_parser(
        "search", help="find images by text and/or example images",
        description="Score = cosine with the normalised weighted sum of the positive terms minus the negative ones. "
        "Weights are written W:term, e.g. '2:golden retriever'. With --label and no query, lists that label's "
        "images, most probable first (score: the label's probability). With other filters and no query "
        "(--prefix, --after, --before, --camera, --near), lists the images that pass them, newest first by "
        "capture time, then the undated ones, as taken_at<TAB>path (JSON: score null).")
    parser.add_argument("text", nargs="?", help="what to look for (optionally weighted: '2:golden retriever')")
    parser.add_argument("--image", action="append", default=[], metavar="IMG", help="an example image (repeatable)")
    parser.add_argument("--not", dest="negatives", action="append", default=[], metavar="TEXT_OR_IMG",
                        help="text or image to move away from (repeatable)")
    parser.add_argument("--oldest", action="store_true", help="with filters and no query: oldest first (with "
                        "--label too, which then lists in capture order, not by probability)")
    _add_result_options(parser, search=True)
    parser.set_defaults(handler=_search)


def _search(args: argparse.Namespace) -> int:
    from ..collection.query import parse_query

    _check_gps(args)
    filtered = args.prefix or args.label or any(value is not None for value in photo_filters(args).values())
    if not (args.text or "").strip() and not args.image:  # "" or " " from a script's empty variable: no query
        if args.label and not args.negatives and not args.oldest:
            return _list_labelled(args)
        if filtered and not args.negatives:
            return _browse(args)  # with --label only when --oldest asks for capture order
        raise QueryError("a query needs at least one positive term (text or --image); with no query, --label LABEL "
                         "lists that label's images, most probable first, and --prefix, --after, --before, --camera "
                         "or --near the images that pass them, newest first")
    if args.oldest:
        raise QueryError("--oldest orders the images that filters alone list (no query); a query's results are "
                         "ordered by score")
    query = parse_query(args.text, args.image, args.negatives)
    _warn_of_a_path_as_text(args.text)
    with open_collection(args.collection, device=args.device) as collection:
        vector = collection.query_vector(query)
        warn_unread_query(collection, query)  # words past the model's context change nothing: say so
        hits = collection.search(vector, k=args.k, threshold=args.threshold, path_prefix=args.prefix, label=args.label,
                                 **photo_filters(args))
        rows = hit_rows(collection, hits, args.gps)
        if hits and query.is_single_text and not filtered:  # the queries the hint is calibrated for, as in the UI
            from ..collection.confidence import NoiseCalibration

            say(NoiseCalibration(collection).assess(vector, hits[0].score).message)
    return _print_hits(rows, args, "search")


def _list_labelled(args: argparse.Namespace) -> int:
    """``mmr search --label LABEL`` with no query: the label's images, most probable first (score: probability)."""
    with open_collection(args.collection) as collection:
        hits = collection.labelled(args.label, k=args.k, threshold=args.threshold, path_prefix=args.prefix,
                                   **photo_filters(args))
        rows = hit_rows(collection, hits, args.gps)
    return _print_hits(rows, args, "search")


def _browse(args: argparse.Namespace) -> int:
    """``mmr search`` with filters and no query: the images that pass them, newest first (``--oldest``: oldest
    first), then the undated ones; taken_at<TAB>path, as there is no score."""
    if args.threshold is not None:
        raise QueryError("--threshold drops results by score, and images listed by filters alone have none")
    with open_collection(args.collection) as collection:
        hits = collection.browse(k=args.k, path_prefix=args.prefix, label=args.label, oldest_first=args.oldest,
                                 **photo_filters(args))
        rows = hit_rows(collection, hits, args.gps)
    return _print_hits(rows, args, "search", columns=["taken_at", "path"], none="no image passes these filters")


def _warn_of_a_path_as_text(text: str | None) -> None:
    """A query that names an image file is still read as text (rclip takes it as the image): say how to search by
    the image, since the text of a path finds nothing like it."""
    if text and os.path.isfile(os.path.expanduser(text)):
        say(f"mmr search: warning: the query {text!r} is read as text, though it names a file; to search by that "
            f"image use --image {text} (or mmr similar {text})")


def _check_gps(args: argparse.Namespace) -> None:
    if args.gps and not args.json:
        raise QueryError("--gps adds latitude and longitude to JSON results; add --json")


def _register_similar(subparsers) -> None:
    parser = subparsers.add_parser(
        "similar", help="find images like an image (a path, or a catalog id with --id)",
        description="The collection's images most like IMAGE (cosine of their embeddings), best first, as "
        "score<TAB>path. IMAGE may be any image file; when the collection holds it (the same path, or --id), it is "
        "left out of its own results. Exits with 1 when nothing is found (none above --threshold, or filters that "
        "allow no image).")
    parser.add_argument("image", metavar="IMAGE", help="image file, or catalog id with --id")
    parser.add_argument("--id", action="store_true", help="IMAGE is a catalog id")
    _add_result_options(parser, search=False)
    parser.set_defaults(handler=_similar)


def _similar(args: argparse.Namespace) -> int:
    _check_gps(args)
    image = args.image
    if args.id:
        try:
            image = int(args.image)
        except ValueError:
            raise CollectionError(f"with --id, IMAGE is a catalog id (a whole number), not {args.image!r}; "
                                  "leave out --id to search by an image file") from None
    with open_collection(args.collection, device=args.device) as collection:
        hits = collection.similar(image, k=args.k, threshold=args.threshold, path_prefix=args.prefix, label=args.label,
                                  **photo_filters(args))
        rows = hit_rows(collection, hits, args.gps)
    return _print_hits(rows, args, "similar")


def _print_hits(rows: list[dict[str, Any]], args: argparse.Namespace, command: str,
                columns: list[str] = _HIT_COLUMNS,
                none: str = "an empty collection, or the threshold and filters left none") -> int:
    """Print the hits; exit status 1, with a line on stderr saying so, when there are none. A hit whose file is
    gone since it was ingested is printed all the same (its vector is stored), with a note to prune."""
    if args.null:
        sys.stdout.buffer.write(b"".join(os.fsencode(row["path"]) + b"\0" for row in rows))
        sys.stdout.buffer.flush()
    else:
        emit(rows, args.json, columns)
    if not rows:
        say(f"mmr {command}: no results ({none})")
    from ..collection.catalog import is_uri
    from ..collection.pruning import vanished

    # what a prune would drop (URIs: imported); a file in a folder that cannot be read now is not known to be gone
    gone = sum(not is_uri(row["path"]) and vanished(os.fsencode(row["path"]), "ok") for row in rows)
    if gone:
        which = "one of these files no longer exists" if gone == 1 else f"{gone} of these files no longer exist"
        say(f"mmr {command}: {which} where the collection has {'it' if gone == 1 else 'them'} (`mmr ingest --prune` "
            "drops those of the folders it ingests)")
    return 0 if rows else 1
