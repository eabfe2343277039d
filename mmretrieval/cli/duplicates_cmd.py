"""``mmr duplicates``: groups of near-identical images in a collection, one group per line.

TSV: ``score<TAB>kept path<TAB>other path…`` (score = the lowest cosine of a copy to the kept one);
``--json``: one object per group with ``paths`` (kept copy first), ``scores`` (cosine to the kept copy)
and ``keep``. ``--organize DIR`` links each group into ``DIR/NNNNN/``; nothing is ever deleted.
"""

from __future__ import annotations

import argparse
import sys

from ..progress import TqdmProgress
from .common import add_collection_option, emit, names_as_bytes


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``mmr duplicates``."""
    parser = subparsers.add_parser(
        "duplicates", help="find near-duplicate images (resized, recompressed, cropped, converted copies)",
        description="Group near-identical images by their stored vectors (a k-NN graph, then connected pairs at or "
        "above the threshold). The kept copy is a file (not a link to one) with the most pixels, then "
        "the most capture metadata (EXIF time, camera, GPS), then a lossless format (PNG, TIFF...), then the largest "
        "file, then the oldest. Nothing is deleted. Prints one group per line (TSV: the group's lowest score, "
        "then its paths, the kept one first); exits with 1 when no group is found, as grep does.")
    add_collection_option(parser)
    parser.add_argument("--threshold", type=float,
                        help="cosine at or above which two images are copies (default: the model family's, "
                        "see the README)")
    parser.add_argument("-k", type=int, default=10, help="neighbours searched per image (default 10)")
    parser.add_argument("--json", action="store_true", help="JSON lines with paths, scores and keep")
    parser.add_argument("--organize", metavar="DIR",
                        help="link each group's copies into DIR/NNNNN/ for review (a new or empty folder, or an "
                        "earlier review folder: replaced)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Find the groups, print them, optionally link them for review; exit 1 when there are none."""
    from ..collection.collection import Collection
    from ..collection.duplicates import chaining_note, check_review_dir, organize_duplicates

    if args.organize:
        check_review_dir(args.organize)  # before the search, not after it
    with Collection.open(args.collection) as collection:
        with TqdmProgress("duplicates") as progress:
            groups = collection.duplicates(args.threshold, k=args.k, progress=progress)
        note = chaining_note(groups, collection.duplicate_threshold(args.threshold))
    names_as_bytes()
    if args.json:
        rows = ({"paths": list(g.paths), "scores": [round(s, 6) for s in g.scores], "keep": g.keep.path,
                 "ids": [c.id for c in g.copies]} for g in groups)
        emit(rows, True, [])
    else:
        for group in groups:
            print("\t".join([f"{group.score:.4f}", *(p.replace("\t", " ").replace("\n", " ") for p in group.paths)]))
        sys.stdout.flush()
    if args.organize:
        made = organize_duplicates(groups, args.organize)
        print(f"linked {made} files of {len(groups)} groups under {args.organize}", file=sys.stderr)
    print(f"{len(groups)} groups, {sum(len(g.copies) - 1 for g in groups)} extra copies", file=sys.stderr)
    if note:
        print(f"mmr duplicates: {note} (--threshold)", file=sys.stderr)
    return 0 if groups else 1
