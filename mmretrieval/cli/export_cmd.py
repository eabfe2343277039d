"""``mmr export``: write a collection's vectors and paths as clip-retrieval's output layout.

The summary goes to stderr as one line (and to stdout as one JSON object with ``--json``); the progress bar
counts vectors.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict

from ..progress import TqdmProgress
from ..wording import counted, per_second
from .common import add_collection_option, at_least, json_line, open_collection, say


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``export`` to the ``mmr`` parser."""
    parser = subparsers.add_parser(
        "export", help="write the embedded images' vectors as clip-retrieval output (img_emb/ + metadata/)",
        description="Write every embedded image, in catalog id order, as OUT/img_emb/img_emb_N.npy (unit vectors) "
        "and OUT/metadata/metadata_N.parquet (image_path, caption when there are captions, id, width, height, "
        "taken_local, taken_source, camera_make, camera_model, and labels when the collection is labelled), row "
        "for row: what clip-retrieval's clip index and clip back, "
        "autofaiss, pandas and `mmr import` read. OUT appears only once complete. In a shard holding a file name "
        "that is not UTF-8, image_path is a binary column of the names' bytes. Needs pyarrow "
        "(pip install 'mmretrieval[import]').")
    parser.add_argument("out", metavar="OUT",
                        help="folder to write: a new or empty one, or an earlier export (replaced)")
    add_collection_option(parser)
    parser.add_argument("--dtype", choices=("float16", "float32"), default="float16",
                        help="number format of the vectors written (default float16, as clip-retrieval writes "
                        "them and as collections store them)")
    parser.add_argument("--shard-rows", type=at_least(1), default=1_000_000,
                        help="vectors per shard (default 1,000,000: 1 GB of 512-d float16)")
    parser.add_argument("--json", action="store_true", help="also print the summary as one JSON object on stdout")
    parser.set_defaults(handler=_export)


def _export(args: argparse.Namespace) -> int:
    from ..collection.exports import check_export_folder, export_embeddings

    check_export_folder(args.out)  # before opening the collection, not after it
    with open_collection(args.collection) as collection, TqdmProgress("export", unit="vec") as progress:
        summary = export_embeddings(collection, args.out, dtype=args.dtype, shard_rows=args.shard_rows,
                                    progress=progress)
    if args.json:
        print(json_line(asdict(summary)))
    binary = (f"; image_path holds bytes in {counted(summary.binary_path_shards, 'shard')} (names that are not "
              "UTF-8)" if summary.binary_path_shards else "")
    say(f"exported {counted(summary.rows, summary.dtype + ' vector')} in {counted(summary.shards, 'shard')} to "
        f"{summary.out} in {summary.elapsed_s:.1f} s ({per_second(summary.rows, summary.elapsed_s)}){binary}")
    return 0
