"""Upkeep commands: index (build the FAISS index afresh), compact (reclaim dead rows), check (read it all back).

Summaries and problems go to stdout with ``--json`` (``check``: ``FILE<TAB>PROBLEM`` lines); progress bars and
messages go to stderr.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from contextlib import ExitStack
from typing import TYPE_CHECKING

from ..errors import CollectionError
from ..collection.index_manifest import MANIFEST_NAME as INDEX_MANIFEST
from ..collection.sizing import INDEX_TYPES
from ..progress import TqdmProgress
from ..wording import counted
from .common import add_collection_option, emit, json_line, open_collection, probability, ray_address, say
from .ingest_cmd import quiet_ray_logs

if TYPE_CHECKING:
    from ..ingest.ray_index import RayIndexFill


def register(subparsers) -> None:
    """Add ``index``, ``compact`` and ``check`` to the ``mmr`` parser."""
    _register_index(subparsers)
    _register_compact(subparsers)
    _register_check(subparsers)


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
        "finds damage. Reads every vector once: about 10 GB at 10 M images, in blocks of 32,768 rows (~96 MiB at "
        "512-d).")
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
    index = "the saved index" if (collection.directory / INDEX_MANIFEST).is_file() else "no saved index (none yet)"
    read = (f"the catalog, {index} and {counted(report.vectors, 'vector')} (segments: {report.segments})"
            if report.complete else "what could be read (the rest was not: see the problems)")
    say(f"checked {read}: {found}" + (f"; images whose vectors are damaged: {damaged:,}" if damaged else ""))
    if damaged and not args.repair:
        say("`mmr check --repair` sets those whose files are here to be embedded again by the next `mmr ingest`")
    elif damaged:
        say(f"{'all' if report.reset == damaged else f'{report.reset:,} of them'} set to be embedded again: run "
            "`mmr ingest` on their folders" if report.reset else "none of them set to be embedded again: their files "
            "are not here (see the warning above)")
    return 1 if report.problems else 0


def _bytes_text(count: int) -> str:
    """Bytes in the unit that shows them (50 KB freed read "0.0 MiB freed")."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} bytes"
