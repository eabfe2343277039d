"""``mmr import``: add precomputed embeddings (clip-retrieval's output layout) to a collection.

The summary goes to stderr as one line (and to stdout as one JSON object with ``--json``); the progress bar
counts vectors.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict

from ..progress import TqdmProgress
from ..wording import counted, per_second
from .common import add_collection_option, json_line, say


def register(subparsers) -> None:
    """Add ``import`` to the ``mmr`` parser."""
    parser = subparsers.add_parser(
        "import", help="add precomputed embeddings (clip-retrieval output) without re-embedding",
        description="Import img_emb/img_emb_N.npy + metadata/metadata_N.parquet shards (clip-retrieval's output "
        "layout). Nothing of a shard lands unless all of it passes the checks (dimension, row counts, finite "
        "non-zero vectors, paths); a re-run skips imported shards and known paths. Needs pyarrow (pip install 'mmretrieval[import]').")
    parser.add_argument("directory", metavar="DIR",
                        help="folder holding img_emb/ and metadata/ (clip-retrieval's output), or another "
                        "collection's folder (same model)")
    add_collection_option(parser, writer=True, creates=True)
    parser.add_argument("--model", default=None,
                        help="the model that made the embeddings (needed to create a collection; an existing "
                        "collection must have been built with the same model)")
    parser.add_argument("--root", help="resolve relative image_path values against this folder (default: DIR, "
                        "refused when none of the first 100 in the first 1,000 rows of the first shard that has "
                        "any names a file there; clip-retrieval writes them relative to the folder it ran in)")
    parser.add_argument("--device", default="cpu", help="where to load the model (only its identity is used, but its "
                        "weights are loaded for their hash; default cpu)")
    parser.add_argument("--no-index", dest="update_index", action="store_false",
                        help="leave the index for a later `mmr index` (importing several folders in a row: build it "
                        "once, at the end); until then every search catches up in memory, slowly")
    parser.add_argument("--json", action="store_true", help="also print the summary as one JSON object on stdout")
    parser.set_defaults(handler=_import)


def _import(args: argparse.Namespace) -> int:
    from ..collection.catalog import is_collection
    from ..collection.collection import Collection
    from ..collection.imports import collection_model, exported_model, import_embeddings, import_source
    from ..errors import CollectionError

    source = import_source(args.directory)  # a mistyped folder is the first thing to hear about, before --model
    model = args.model
    if model is None and not is_collection(args.collection):
        # Only the model that made the vectors may record them; the demo model, the default elsewhere, never did.
        recorded = exported_model(source) or collection_model(source)
        if recorded is None:
            raise CollectionError(f"--model is needed to create {args.collection}: name the model that made the "
                                  "embeddings (clip-retrieval's output does not record it)")
        model = recorded.spec
        say(f"creating {args.collection} with the model these vectors record: {model} (where that spec does not "
            "load here, pass --model with one that loads the same weights)")

    with TqdmProgress("index", unit="vec") as index_bar, Collection.open(
            args.collection, model=model, create=True, device=args.device, index_progress=index_bar,
            writer="import", wait=args.wait) as collection:
        with TqdmProgress("import", unit="vec") as progress:
            def landed(done: int, total: int) -> None:  # the bar closes at the last shard, before the index update
                progress(done, total)
                if done == total:
                    progress.finish()

            summary = import_embeddings(collection, args.directory, root=args.root, progress=landed,
                                        update_index=args.update_index)
    if args.json:
        print(json_line(asdict(summary)))
    index = f"index updated in {summary.index_s:.1f} s" if args.update_index else "index left for `mmr index`"
    say(f"imported {counted(summary.rows_added, 'vector')} ({counted(summary.shards_added, 'shard')} read) in "
        f"{summary.elapsed_s:.1f} s ({per_second(summary.rows_added, summary.elapsed_s)}), skipped "
        f"{counted(summary.rows_known, 'known path')} and {counted(summary.shards_skipped, 'already imported shard')}"
        f", renormalised {summary.renormalised:,}; {index}")
    return 0
