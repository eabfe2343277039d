"""``mmr duplicates``: groups of near-identical images in a collection, one group per line.

TSV: ``score<TAB>kept path<TAB>other path…`` (score = the lowest cosine of a copy to the kept one);
``--json``: one object per group with ``paths`` (kept copy first), ``scores`` (cosine to the kept copy), ``keep``,
``ids``, ``aliases``, ``gone`` and ``changed``; ``--null``: only the copies to review, each path ended by a NUL byte, for
``xargs -0``. ``--organize DIR`` links each group into ``DIR/NNNNN/``; nothing is ever deleted.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING

from ..progress import TqdmProgress
from ..json_lines import tsv_text
from ..wording import counted
from .common import add_collection_option, at_least, emit, names_as_bytes, say

if TYPE_CHECKING:
    from ..collection.duplicates import DuplicateGroup


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``mmr duplicates``."""
    parser = subparsers.add_parser(
        "duplicates", help="find near-duplicate images (resized, recompressed, cropped, converted copies)",
        description="Group near-identical images by their stored vectors (a k-NN graph, then connected pairs at or "
        "above the threshold). The kept copy is a file (not a link to one), under the first --prefer folder it is "
        "under, with the most capture metadata (EXIF time, camera, GPS), then the most pixels, then the oldest, then "
        "a lossless format (PNG, TIFF...), then the largest file. A file gone or changed since it was ingested, and "
        "a second name of a file in the group (a hard link, a linked folder), is never listed as a copy. Nothing is "
        "deleted. Prints one group per line (TSV: the group's lowest score, then its paths, the kept one first); "
        "exits with 1 when no group is found, as grep does.")
    add_collection_option(parser)
    parser.add_argument("--threshold", type=float,
                        help="cosine at or above which two images are copies (default: the model family's, "
                        "see the README)")
    parser.add_argument("-k", type=at_least(1), default=10, help="neighbours searched per image (default 10)")
    parser.add_argument("--prefer", action="append", default=[], metavar="FOLDER",
                        help="keep the copies under FOLDER, where originals live (repeatable: the first folder "
                        "before the next); e.g. --prefer ~/Pictures/library lists the copies in ~/Downloads")
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="JSON lines with paths, scores, keep, aliases, gone and "
                        "changed")
    output.add_argument("--null", action="store_true",
                        help="print only the copies to review (every group's paths but the kept one), each ended "
                        "by a NUL byte, for `xargs -0` (any file name, as its bytes)")
    parser.add_argument("--organize", metavar="DIR",
                        help="link each group's copies into DIR/NNNNN/ for review (a new or empty folder, or an "
                        "earlier review folder: replaced)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Find the groups, print them, optionally link them for review; exit 1 when there are none."""
    from ..collection.collection import Collection
    from ..collection.duplicate_review import check_review_dir, organize_duplicates
    from ..collection.duplicates import chaining_note

    if args.organize:
        check_review_dir(args.organize)  # before the search, not after it
    with Collection.open(args.collection) as collection:
        with TqdmProgress("duplicates") as progress:
            groups = collection.duplicates(args.threshold, k=args.k, progress=progress, prefer=args.prefer)
        note = chaining_note(groups, collection.duplicate_threshold(args.threshold))
    # Linked before the list is printed: a `--null | xargs` acts on the list, which must not come when this fails.
    made = organize_duplicates(groups, args.organize) if args.organize else 0
    names_as_bytes()
    if args.json:
        rows = ({"paths": list(g.paths), "scores": [round(s, 6) for s in g.scores], "keep": g.keep.path,
                 "ids": [c.id for c in g.copies],
                 "aliases": [{"path": a.path, "same_as": a.same_as, "id": a.id} for a in g.aliases],
                 "gone": list(g.gone), "changed": list(g.changed)} for g in groups)
        emit(rows, True, [])
    elif args.null:
        for group in groups:
            sys.stdout.buffer.write(b"".join(os.fsencode(path) + b"\0" for path in group.paths[1:]))
        sys.stdout.buffer.flush()
    else:
        for group in groups:
            print("\t".join([f"{group.score:.4f}", *(tsv_text(path) for path in group.paths)]))
        sys.stdout.flush()
    if args.organize:
        say(f"linked {counted(made, 'file')} of {counted(len(groups), 'group')} under {args.organize}")
    extra = sum(len(g.copies) - 1 for g in groups)
    say(f"{counted(len(groups), 'group')}, {counted(extra, 'extra copy', 'extra copies')}")
    for line in _notes(groups, tsv=not (args.json or args.null)):
        say(f"mmr duplicates: {line}")
    if note:
        say(f"mmr duplicates: {note} (--threshold)")
    return 0 if groups else 1


def _notes(groups: list[DuplicateGroup], tsv: bool) -> list[str]:
    """What was left out of the groups, and (``tsv``: the output is TSV) names that it shows escaped."""
    from ..collection.duplicates import LeftOut

    left_out = LeftOut.of(groups)
    escaped = sum(tsv_text(path) != path for group in groups for path in group.paths) if tsv else 0
    notes = []
    if left_out.aliases:
        one = left_out.aliases == 1
        notes.append(f"{counted(left_out.aliases, 'path')} {'names' if one else 'name'} a file "
                     f"{'its' if one else 'their'} group already lists (a hard link, or a folder "
                     "reached through a symbolic link): not listed as copies, since deleting one deletes that file "
                     "(--json lists them as aliases)")
    if left_out.gone:
        one = left_out.gone == 1
        notes.append(f"{counted(left_out.gone, 'file')} of these groups {'is' if one else 'are'} gone since "
                     f"{'it was' if one else 'they were'} ingested: left out (`mmr ingest --prune` drops "
                     f"{'it' if one else 'them'} from the collection)")
    if left_out.changed:
        one = left_out.changed == 1
        notes.append(f"{counted(left_out.changed, 'file')} of these groups changed since "
                     f"{'it was' if one else 'they were'} embedded: left out, since stored vectors may show another "
                     f"picture (`mmr ingest` embeds {'it' if one else 'them'} again; --json lists "
                     f"{'it' if one else 'them'} as changed)")
    if escaped:
        notes.append(f"{counted(escaped, 'path')} {'holds' if escaped == 1 else 'hold'} a backslash, a tab, a line "
                     "break or another control character: TSV shows such names with backslash escapes (\\\\, "
                     "\\t, \\n, \\xHH); --null or --json give the names whole")
    return notes
