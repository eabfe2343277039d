"""Collection commands: label (zero-shot labelling of the whole collection) and info.

Results go to stdout (TSV, or JSON lines with ``--json``); progress bars and messages go to stderr.
"""

from __future__ import annotations

import argparse
import dataclasses

from ..errors import QueryError
from ..json_lines import tsv_pairs, tsv_text
from ..progress import TqdmProgress
from .common import (MULTI_LABEL_THRESHOLD, Once, add_collection_option, emit, json_line, labels_with_stdin,
                     multi_label_threshold, names_as_bytes, open_collection, path_prefix, probability, say)
from .photo_options import add_photo_filter_options, photo_filters


def register(subparsers) -> None:
    """Add ``label`` and ``info`` to the ``mmr`` parser."""
    _register_label(subparsers)
    _register_info(subparsers)


def _register_label(subparsers) -> None:
    parser = subparsers.add_parser(
        "label", help="label every image zero-shot; search can then filter by label",
        description="Score every embedded image (or those the filters select) against the labels, from the stored "
        "vectors (no image is decoded again), and save the result as a named label set. Prints the count per "
        "label; --out writes the labels the run assigned (.csv: a row per image and label; .jsonl: an object per "
        "image), --organize links the images into a folder per label. --remove NAME deletes a label set instead.")
    add_collection_option(parser, writer=True)
    parser.add_argument("--labels", action="append",
                        help="comma-separated labels (over several lines: one a line, commas kept), or @FILE "
                        "with one per line (@-: standard input) "
                        "(repeatable; required unless --remove)")
    parser.add_argument("--remove", metavar="NAME", help="delete label set NAME and its labels (other sets are kept)")
    parser.add_argument("--templates", default="default",
                        help="default, imagenet, none, a file (one {} per line), or one template such as "
                        "'a drawing of a {}.' (default: default)")
    parser.add_argument("--multi-label", action="store_true", help="score labels independently; keep all >= threshold")
    parser.add_argument("--threshold", type=probability,
                        help=f"with --multi-label: the probability cutoff (default {MULTI_LABEL_THRESHOLD})")
    parser.add_argument("--set", dest="label_set", default="default", metavar="NAME",
                        help="label set to write (default: 'default'); other sets are kept, and search --label "
                        "takes SET:LABEL or LABEL")
    parser.add_argument("--replace", action="store_true", help="replace the set if it exists (else: refused)")
    parser.add_argument("--out", help="export this run's labels to a .csv or .jsonl file")
    parser.add_argument("--organize", metavar="OUTDIR",
                        help="link the images of this run's label set into OUTDIR/<label>/ (a new or empty folder, "
                        "or one an earlier --organize filled: replaced)")
    parser.add_argument("--copy", action="store_true", help="with --organize: copy instead of linking")
    parser.add_argument("--json", action="store_true",
                        help="print the run's summary as one JSON object (label_set, images, counts, unlabelled...) "
                        "instead of label<TAB>count lines")
    parser.add_argument("--device", default="auto", help="where to run the text tower (default: auto)")
    parser.add_argument("--prefix", action=Once, type=path_prefix,
                        help="only label images in this folder (one that exists), or whose path starts with this text")
    add_photo_filter_options(parser)
    parser.set_defaults(handler=_label)


def _label(args: argparse.Namespace) -> int:
    from ..collection.labelling import check_export_path, check_organize_dir
    from ..models.label_text import parse_labels

    if args.remove is not None:
        return _remove_label_set(args)
    if not args.labels:
        raise QueryError("--labels is required: the labels to score, e.g. --labels 'cat,dog,car' (or --remove NAME "
                         "to delete a label set)")
    threshold = multi_label_threshold(args)  # refuses --threshold without --multi-label
    labels = parse_labels(labels_with_stdin(args.labels))  # @FILE and @- read here, before the run
    if args.out:  # before the run: a typo in a path must not leave a label set that a retry is refused
        check_export_path(args.out)
    if args.copy and not args.organize:
        raise QueryError("--copy needs --organize DIR: it copies the images there instead of linking them")
    if args.organize:
        check_organize_dir(args.organize)
    with open_collection(args.collection, device=args.device, writer="label", wait=args.wait) as collection:
        with TqdmProgress("labels", unit="label") as label_progress, TqdmProgress("label") as progress:
            summary = collection.label(labels, args.templates, multi_label=args.multi_label,
                                       threshold=threshold if args.multi_label else None,
                                       label_set=args.label_set, replace=args.replace, progress=progress,
                                       label_progress=label_progress, path_prefix=args.prefix, **photo_filters(args))
        if args.out:
            collection.export_labels(args.out, summary.label_set)
        if args.organize:
            organized = collection.organize(args.organize, copy=args.copy, label_set=summary.label_set)
            say(f"placed {organized.placed} files under {args.organize}")
            if organized.missing:
                say(f"skipped {organized.missing} source file(s) that are missing since ingestion (e.g. "
                    f"{organized.missing_examples[0]}); `mmr ingest FOLDER --prune` forgets those under FOLDER")
    if args.json:
        print(json_line(dataclasses.asdict(summary)))
    else:
        emit(({"label": label, "count": count} for label, count in summary.counts.items()), False,
             ["label", "count"])
    none = f", {summary.unlabelled} with no label above {summary.threshold}" if summary.multi_label else ""
    say(f"labelled {summary.images} images into set {summary.label_set!r}{none}")
    return 0


def _remove_label_set(args: argparse.Namespace) -> int:
    from ..collection.compaction import VACUUM_FREE_RATIO, catalog_space

    given = [option for option, value in (("--labels", args.labels), ("--out", args.out),
                                          ("--organize", args.organize), ("--replace", args.replace),
                                          ("--multi-label", args.multi_label), ("--prefix", args.prefix),
                                          *((f"--{name}", value) for name, value in photo_filters(args).items()))
             if value]
    if given:
        raise QueryError(f"--remove deletes a label set; it takes none of {', '.join(given)}")
    with open_collection(args.collection, writer="label", wait=args.wait) as collection:
        removed = collection.remove_label_set(args.remove)
        space = catalog_space(collection.catalog)
    say(f"removed label set {args.remove!r} ({removed:,} labels given to images)")
    if space.free_ratio >= VACUUM_FREE_RATIO:
        say(f"the catalog keeps {space.free_bytes / 2**20:.1f} MiB of free pages for reuse; `mmr compact` gives them "
            "back to the disk")
    return 0


def _register_info(subparsers) -> None:
    parser = subparsers.add_parser(
        "info", help="model, counts by status, index and sizes of a collection",
        description="Describe a collection: its model, images by status, index, labels and size on disk, as "
        "KEY<TAB>VALUE lines (or one JSON object); with --failures, every file that failed or was skipped. Values "
        "are TSV-escaped (\\\\, \\t, \\n, \\xHH); a set of counts (counts, label_sets, labels, imported, drives, "
        "bytes_on_disk) is one cell KEY=N, KEY=N, or -, whose names have ',' and '=' written \\x2c and \\x3d.")
    add_collection_option(parser)
    parser.add_argument("--json", action="store_true", help="one JSON object (with --failures: JSON lines)")
    parser.add_argument("--failures", action="store_true",
                        help="instead, list the files that failed or were skipped: path, reason and message, one "
                        "per line, failed ones first, each kind in the order met")
    parser.set_defaults(handler=_info)


def _info_cell(value: object) -> str:
    """A value of ``mmr info`` as a TSV cell: ``-`` for none (a recall not measured), yes/no for a truth."""
    if isinstance(value, dict):
        return tsv_pairs(value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    return "-" if value is None else tsv_text(str(value))


def _info(args: argparse.Namespace) -> int:
    from ..collection.import_writer import provenance

    with open_collection(args.collection) as collection:
        if args.failures:
            emit((dataclasses.asdict(failure) for failure in collection.failures()), args.json,
                 ["path", "reason", "message"])
            return 0
        info = collection.info().to_dict()
        info["imported"] = {source.source: source.rows for source in provenance(collection.catalog)}
    if args.json:
        print(json_line(info))
        return 0
    names_as_bytes()  # a folder name that is not UTF-8 as its own bytes, as the other TSV
    for key, value in info.items():  # every cell escaped, as `mmr search`'s: a folder's tab must not split a line
        print(f"{key}\t{_info_cell(value)}")
    return 0
