"""Collection commands: search, similar, index, compact, label, info (ingest has its own module).

Results go to stdout (``score<TAB>path`` lines, or JSON lines with ``--json``); progress bars and messages go
to stderr. File names that are not valid UTF-8 are written back as their original bytes.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from contextlib import ExitStack
from typing import TYPE_CHECKING, Any

from ..errors import CollectionError, QueryError
from ..json_lines import tsv_pairs, tsv_text
from ..collection.sizing import INDEX_TYPES
from ..progress import TqdmProgress
from .common import (MULTI_LABEL_THRESHOLD, Once, add_collection_option, at_least, cosine, emit, json_line,
                     labels_with_stdin, multi_label_threshold, names_as_bytes, open_collection, path_prefix,
                     probability, ray_address, say, warn_unread_query)
from .ingest_cmd import quiet_ray_logs
from .photo_options import add_photo_filter_options, hit_rows, photo_filters

if TYPE_CHECKING:
    from ..ingest.ray_index import RayIndexFill

_HIT_COLUMNS = ["score", "path"]


def register(subparsers) -> None:
    """Add the collection subcommands to the ``mmr`` parser."""
    _register_search(subparsers)
    _register_similar(subparsers)
    _register_index(subparsers)
    _register_compact(subparsers)
    _register_check(subparsers)
    _register_label(subparsers)
    _register_info(subparsers)


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
    from ..collection.places import vanished

    # what a prune would drop (URIs: imported); a file in a folder that cannot be read now is not known to be gone
    gone = sum(not is_uri(row["path"]) and vanished(os.fsencode(row["path"]), "ok") for row in rows)
    if gone:
        which = "one of these files no longer exists" if gone == 1 else f"{gone} of these files no longer exist"
        say(f"mmr {command}: {which} where the collection has {'it' if gone == 1 else 'them'} (`mmr ingest --prune` "
            "drops those of the folders it ingests)")
    return 0 if rows else 1


def _register_index(subparsers) -> None:
    parser = subparsers.add_parser(
        "index", help="rebuild the collection's FAISS index (another type or parameters)",
        description="Build the collection's FAISS index again, of another type or with other parameters; "
        "searches keep using the old one until the new one is saved. Without options the index is sized from "
        "the number of vectors and --memory-budget, and its search parameters tuned to --recall-target.")
    add_collection_option(parser, writer=True)
    parser.add_argument("--type", default="auto", choices=("auto",) + INDEX_TYPES,
                        help="flat (exact), ivf, hnsw or ivfpq (OPQ + IVF-PQ, compressed, re-ranked exactly); "
                        "auto picks by size and --memory-budget (default)")
    parser.add_argument("--nlist", type=int, help="ivf, ivfpq: inverted lists (default: about 4 x sqrt(vectors), "
                        "a power of two)")
    parser.add_argument("--nprobe", type=int, help="ivf, ivfpq: lists probed per query (default: tuned)")
    parser.add_argument("--hnsw-m", type=int, help="hnsw: graph degree (default 32)")
    parser.add_argument("--ef-search", type=int, help="hnsw: search breadth (default: tuned)")
    parser.add_argument("--pq-m", type=int, help="ivfpq: bytes per vector code (default: the largest that fits "
                        "--memory-budget, at most dimensions / 4)")
    parser.add_argument("--rerank", type=int, help="candidates re-scored exactly per query (default: tuned, from "
                        "40 for ivf and 200 for ivfpq)")
    parser.add_argument("--memory-budget", type=_size, metavar="SIZE",
                        help="most memory the index may take, e.g. 2G or 500M (default: a quarter of RAM)")
    parser.add_argument("--recall-target", type=float,
                        help="recall@10 that nprobe / efSearch are tuned to reach (default 0.95)")
    parser.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS", type=ray_address,
                        help="ivf, ivfpq: add the vectors in parallel Ray tasks (a local Ray with this machine's "
                        "cores, or the cluster at ADDRESS or $RAY_ADDRESS); flat and hnsw are built here anyway")
    parser.add_argument("--ray-work", metavar="DIR",
                        help="with --ray: a folder every node reaches, for the shards while they are merged "
                        "(default: inside the collection, fine on one machine)")
    parser.add_argument("--json", action="store_true", help="also print what was built as one JSON object on stdout: "
                        "index_type, params, count, recall (null: not measured), memory_bytes, note")
    parser.set_defaults(handler=_index)


def _size(text: str) -> int:
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    number, unit = text.strip().upper().rstrip("B"), ""
    if number and number[-1] in units:
        number, unit = number[:-1], number[-1]
    try:
        value = int(float(number) * units[unit])
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size; write e.g. 2G, 500M or 800000000") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"a memory budget must be positive, got {text!r}")
    return value


def _index(args: argparse.Namespace) -> int:
    if args.ray is None and args.ray_work:
        raise CollectionError("--ray-work needs --ray")
    with TqdmProgress("index", unit="vec") as index_bar, ExitStack() as stack, \
            open_collection(args.collection, index_progress=index_bar, writer="index", wait=args.wait) as collection:
        ray_fill = None
        if args.ray is not None:  # who adds the vectors to the trained index changes, nothing else
            ray_fill = _ray_fill(args, str(collection.directory),
                                 stack.enter_context(TqdmProgress("adding on Ray", unit="vec")))
        manifest = collection.rebuild_index(args.type, nlist=args.nlist, nprobe=args.nprobe,
                                            hnsw_m=args.hnsw_m, ef_search=args.ef_search, pq_m=args.pq_m,
                                            rerank=args.rerank, memory_budget_bytes=args.memory_budget,
                                            recall_target=args.recall_target, fill=ray_fill)
    if ray_fill and manifest.index_type not in ("ivf", "ivfpq"):
        say(f"note: a {manifest.index_type} index has no inverted lists to add in parallel; built in this "
            "process, without Ray")
    params = " ".join(f"{key}={value}" for key, value in manifest.params.items())
    recall = f", recall@10 {manifest.recall:.3f}" if manifest.recall >= 0 else ""
    say(f"built {manifest.index_type} index over {manifest.count} vectors {params}".rstrip()
        + f" ({manifest.memory_bytes / 2**20:.1f} MiB{recall})")
    if manifest.note and args.type in ("auto", manifest.index_type):  # else rebuild_index warned of it already
        say(f"note: {manifest.note}")
    if args.recall_target is not None and manifest.index_type == "flat":
        say(f"note: a flat index is exact; --recall-target {args.recall_target:g} is kept for the ivf, hnsw or ivfpq "
            "index that later rebuilds choose as the collection grows")
    if args.json:
        print(json_line({"index_type": manifest.index_type, "params": manifest.params, "count": manifest.count,
                         "recall": round(manifest.recall, 4) if manifest.recall >= 0 else None,
                         "memory_bytes": manifest.memory_bytes, "note": manifest.note or None}))
    return 0


def _ray_fill(args: argparse.Namespace, collection_dir: str, progress: TqdmProgress) -> "RayIndexFill":
    from ..ingest.ray_index import RayIndexFill

    quiet_ray_logs(args.verbose)
    work_dir = args.ray_work or os.path.join(collection_dir, "ray-index")
    return RayIndexFill(work_dir, address=args.ray or None, progress=progress, clean_stale=args.ray_work is None)


def _register_compact(subparsers) -> None:
    parser = subparsers.add_parser("compact", help="reclaim the space of deleted and replaced vectors",
                                   description="Rewrite vector segments that hold dead rows (pruned or re-embedded "
                                   "files), then the catalog when over a tenth of it is free pages (removed label "
                                   "sets, pruned files). Safe to interrupt; writers compact segments on their own "
                                   "past 30% waste.")
    add_collection_option(parser, writer=True)
    parser.add_argument("--min-waste", type=probability, default=0.0,
                        help="only segments with more than this share of dead rows (default 0: any)")
    parser.add_argument("--json", action="store_true", help="also print the summary as one JSON object on stdout")
    parser.set_defaults(handler=_compact)


def _compact(args: argparse.Namespace) -> int:
    from ..collection.compaction import VACUUM_FREE_RATIO

    with open_collection(args.collection, writer="compact", wait=args.wait) as collection, \
            TqdmProgress("compacting", unit="vectors") as progress:
        summary = collection.compact(args.min_waste, progress=progress)
    if summary.segments_rewritten:
        say(f"compacted {summary.segments_rewritten} segments into {summary.segments_written}: "
            f"{summary.rows_copied} vectors kept, {summary.rows_reclaimed} dead rows reclaimed, "
            f"{_bytes_text(summary.bytes_freed)} freed")
    elif not summary.catalog_bytes_freed:
        share = f" over {args.min_waste:.0%} of its rows" if args.min_waste else ""
        say(f"nothing to compact: no segment holds dead rows{share}, and the catalog's free pages are under "
            f"{VACUUM_FREE_RATIO:.0%} of it")
    if summary.catalog_bytes_freed:
        say(f"catalog rewritten without its free pages: {_bytes_text(summary.catalog_bytes_freed)} smaller")
    if args.json:
        print(json_line(dataclasses.asdict(summary)))
    return 0


def _register_check(subparsers) -> None:
    parser = subparsers.add_parser(
        "check", help="read the whole collection back and report damage (exit 1 if any)",
        description="Read the catalog (SQLite's quick_check), every segment of vectors (the sealed ones against "
        "their sha256; every row: a unit vector, and the image the catalog says) and the saved index back, and "
        "print each problem as FILE<TAB>PROBLEM (or JSON lines with where, problem, images). Exits 1 when it "
        "finds damage. Reads every vector once: about 10 GB at 10 M images, in 64 MiB blocks.")
    add_collection_option(parser, writer=True)
    parser.add_argument("--repair", action="store_true",
                        help="as the collection's writer, set the images whose vectors are damaged to be embedded "
                        "again by the next `mmr ingest` (labels kept); a damaged catalog needs a backup")
    parser.add_argument("--json", action="store_true", help="JSON lines instead of FILE<TAB>PROBLEM")
    parser.set_defaults(handler=_check)


def _check(args: argparse.Namespace) -> int:
    if args.wait and not args.repair:  # a plain check reads beside a writer: there is nothing to wait for
        raise CollectionError("--wait is for --repair, which writes; a check alone reads beside a running writer")
    with open_collection(args.collection, writer="check --repair" if args.repair else None,
                         wait=args.wait) as collection, TqdmProgress("checking", unit="vec") as progress:
        report = collection.check(repair=args.repair, progress=progress)
    emit((dataclasses.asdict(problem) for problem in report.problems), args.json, ["where", "problem"])
    damaged = len(report.damaged_ids)
    found = f"problems found: {len(report.problems)}" if report.problems else "no damage found"
    read = (f"the catalog, the saved index and {report.vectors:,} vectors (segments: {report.segments})"
            if report.complete else "what could be read (the rest was not: see the problems)")
    say(f"checked {read}: {found}" + (f"; images whose vectors are damaged: {damaged:,}" if damaged else ""))
    if damaged:
        say("those images are set to be embedded again: run `mmr ingest` on their folders" if args.repair else
            "`mmr check --repair` sets them to be embedded again by the next `mmr ingest`")
    return 1 if report.problems else 0


def _bytes_text(count: int) -> str:
    """Bytes in the unit that shows them (50 KB freed read "0.0 MiB freed")."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} bytes"


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
        "are TSV-escaped (\\\\, \\t, \\n, \\xHH); a set of counts (counts, label_sets, labels, imported) is one "
        "cell KEY=N, KEY=N, or -, whose names have ',' and '=' written \\x2c and \\x3d.")
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
