"""``mmr ingest``: add images to a collection, on this machine or on Ray; a summary line (or JSON) at the end.

Exit status: 0 when something was embedded, reused, found unchanged or pruned; 2 when every file found failed
or was skipped; 1 when no image was found (see :func:`_ingest_status`).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import CollectionError
from ..progress import TqdmProgress
from ..wording import counted
from .common import (add_collection_option, add_model_options, add_null_option, at_least, json_line, open_collection,
                     positive_seconds, ray_address, say)

if TYPE_CHECKING:
    from ..ingest.batches import IngestSummary
    from ..ingest.ray_runner import RayIngestConfig
    from ..ingest.reader import PathStream
    from ..models.encoder import DualEncoder


def register(subparsers) -> None:
    """Add ``mmr ingest``."""
    parser = subparsers.add_parser(
        "ingest", help="add images to a collection (incremental, resumable)",
        description="Embed images from folders, files and .txt/.csv lists into a collection. Unchanged files are "
        "skipped; an interrupted run resumes where it stopped.")
    parser.add_argument("sources", nargs="+", metavar="SOURCE",
                        help="folder, image file, .txt/.csv list of paths, or - for a list on standard input (in a "
                        "list: one path per line, relative to the list's folder, or for - to the current one; blank "
                        "lines and lines starting with # skipped)")
    add_null_option(parser)
    add_collection_option(parser, writer=True, creates=True)
    add_model_options(parser, default=None, default_note="the collection's model; a new collection named by "
                      "--collection or $MMR_COLLECTION gets builtin:shapes, and the default collection needs --model")
    parser.add_argument("--batch-size", type=at_least(1), help="images per model call (default: 256 on CUDA, 32 on CPU)")
    parser.add_argument("--workers", type=at_least(0), help="decoding processes (default: CPU cores - 1; 0 decodes "
                        "in this process, without isolation)")
    parser.add_argument("--timeout", type=positive_seconds, default=60.0,
                        help="seconds one file may take to decode (default 60)")
    parser.add_argument("--prune", action="store_true", help="remove files that no longer exist from the collection "
                        "(not those under a folder where a drive was seen mounted and is not now)")
    parser.add_argument("--forget-mount", action="append", default=[], metavar="FOLDER",
                        help="with --prune: FOLDER had a drive mounted that is gone for good; prune its images too "
                        "(repeatable)")
    parser.add_argument("--checksum", action="store_true",
                        help="also compare the content of files whose size and modification time are unchanged, "
                        "and embed again those that changed (as rsync -c; reads every file)")
    parser.add_argument("--json", action="store_true",
                        help="also print the summary as one JSON object on stdout (embedded, unchanged, duplicates, "
                        "moved, pruned, and failed and skipped files by reason)")
    parser.add_argument("--max-pixels", type=at_least(1), default=None, metavar="N",
                        help="fail images with more pixels than this, a guard against decompression bombs (default "
                        "268402689, 16383x16383: any camera photo; a PNG or TIFF that large needs 1-3 GB per "
                        "decoding worker, so lower it on a small machine); files refused before are retried by a "
                        "run whose limit passes them")
    parser.add_argument("--device-decode", choices=("auto", "on", "off"), default="auto",
                        help="decode JPEGs on the model's device, other files on the CPU at the same time (auto: on "
                        "with a CUDA GPU)")
    parser.add_argument("--share-jpegs", choices=("on", "off"), default="on",
                        help="with device decoding, the CPU workers also decode the largest JPEGs while they have "
                        "room (default on)")
    parser.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS", type=ray_address,
                        help="decode and embed on Ray (pip install 'mmretrieval[ray]'): a local Ray with this "
                        "machine's cores and GPUs, or the cluster at ADDRESS (host:port, auto for the one `ray "
                        "start` made here, ray://host:10001; or $RAY_ADDRESS); --workers then caps decode tasks at "
                        "once. Give it after the sources, or as --ray=ADDRESS")
    parser.add_argument("--ray-output", metavar="DIR_OR_URI",
                        help="with --ray: where workers leave results, a folder every node reaches or a URI such as "
                        "s3://bucket/run (default: inside the collection, fine on one machine)")
    parser.set_defaults(handler=_ingest)


def _ray_config(args: argparse.Namespace) -> "RayIngestConfig | None":
    if args.ray is None:
        if args.ray_output:
            raise CollectionError("--ray-output needs --ray")
        return None
    from ..ingest.ray_runner import RayIngestConfig

    # The model and the decoders run in the cluster's workers, which choose their device (a GPU where the node
    # has one): this machine's options would be silently ignored.
    ignored = [flag for flag, given in (("--device", args.device != "auto"),
                                        ("--device-decode", args.device_decode != "auto"),
                                        ("--share-jpegs", args.share_jpegs != "on")) if given]
    if ignored:
        raise CollectionError(f"{', '.join(ignored)} cannot be used with --ray: the cluster's workers run the model "
                              "and the decoders, on their GPUs where nodes have them; leave it out")
    if args.workers == 0:
        raise CollectionError("--workers 0 (decode in this process) cannot be used with --ray; give the most decode "
                              "tasks at once across the cluster, or leave it out")
    quiet_ray_logs(args.verbose)
    return RayIngestConfig(address=args.ray or None, output=args.ray_output, decode_tasks=args.workers)


def quiet_ray_logs(verbose: bool) -> None:
    """Keep Ray's and Ray Data's console lines (the token notice, execution plans, "Progress bars disabled", and
    the tracebacks Ray Data logs as ERROR when a task or actor fails, which our one error line says) off stderr
    unless -v: our bar reports. Ray Data's log file under the Ray session keeps its lines.

    Ray Data installs its own console handler when imported (its logger at DEBUG, not propagating), so that
    handler's level is set after the import. Ray's notices in ``ray.init`` find no handler (init removes
    Ray's) and would reach Python's last-resort handler: the ``ray`` logger's level stops them first.
    """
    if verbose:
        return
    import ray.data  # noqa: F401  (imports ray too)

    logging.getLogger("ray").setLevel(logging.ERROR)
    for handler in logging.getLogger("ray.data").handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            handler.setLevel(logging.CRITICAL)


def _checked_sources(args: argparse.Namespace) -> "list[str | PathStream]":
    """The sources to ingest (standard input read, if named), refused before a new collection is announced."""
    from ..ingest.reader import refuse_missing, source_list, stdin_sources

    if args.forget_mount and not args.prune:  # Collection.ingest refuses it too, but after a new collection is made
        raise CollectionError("--forget-mount lets --prune reach the images of a drive that is not mounted; add "
                              "--prune")
    if args.prune and "-" in args.sources:
        raise CollectionError("--prune cannot take its files from standard input (-), which is read once; save the "
                              "list to a .txt file and pass that")
    sources = stdin_sources(args.sources, sys.stdin, null=args.null)
    if not args.prune:  # a prune refuses a missing source itself, saying that nothing was deleted
        refuse_missing(source_list(sources))
    return sources


def _ingest(args: argparse.Namespace) -> int:
    from ..collection.catalog import is_collection

    sources = _checked_sources(args)
    model = args.model
    demo = model is None and not Path(args.collection).expanduser().is_file() and not is_collection(args.collection)
    ray = _ray_config(args)  # refused options refuse before a collection is made
    # With --ray this process loads a new collection's model only to record it: on the CPU.
    device = "cpu" if ray is not None else args.device
    if args.dim is not None:
        from ..models.encoder import load_encoder

        if model is None:
            raise CollectionError("--dim needs --model: the dimension is chosen when a collection is created")
        model = load_encoder(model, device=device, dim=args.dim, precision=args.precision)
    with contextlib.ExitStack() as connected:
        # a cluster that cannot be reached is refused before a new collection is announced (then not made); a
        # local Ray (no address) starts only when there is something to embed
        if ray is not None and (ray.address or os.environ.get("RAY_ADDRESS")) and not is_collection(args.collection):
            from ..ingest.ray_connect import ray_connection

            connected.enter_context(ray_connection(ray.address))  # the ingest uses this connection
        summary = _ingest_into(args, sources, model, device, ray, demo)
    _say_summary(summary, args, on_ray=ray is not None)
    return _ingest_status(summary, args.sources)


def _ingest_into(args: argparse.Namespace, sources: "list[str | PathStream]", model: "str | DualEncoder | None",
                 device: str, ray: "RayIngestConfig | None", demo: bool) -> "IngestSummary":
    """Open (or make) the collection and ingest ``sources``; says what it made or did not make."""
    from ..collection.opening import DEFAULT_MODEL

    with TqdmProgress("index", unit="vec") as index_bar, \
            open_collection(args.collection, model=model, create=True, device=device, precision=args.precision,
                  index_progress=index_bar, writer="ingest", wait=args.wait) as collection:
        if demo:  # said once the collection is made: a folder refused as one (segments, no catalog) is not
            say(f"mmr ingest: a new collection with the bundled demo model {DEFAULT_MODEL}, which knows only coloured "
                "shapes; for photos choose one with --model (e.g. ViT-B-32:laion2b_s34b_b79k)")
        progress = TqdmProgress("ingest")
        try:
            with progress, TqdmProgress("hashing", unit="files") as hashed:
                summary = collection.ingest(sources, batch_size=args.batch_size, workers=args.workers,
                                            prune=args.prune, checksum=args.checksum, timeout_s=args.timeout,
                                            forget_mounts=args.forget_mount,
                                            progress=progress, hashed=hashed,
                                            ray=ray,
                                            device_decode={"auto": None, "on": True, "off": False}[args.device_decode],
                                            share_jpegs=args.share_jpegs == "on",
                                            **({"max_pixels": args.max_pixels} if args.max_pixels else {}))
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: say what is kept before main says "interrupted"
            _say_what_is_kept(progress.last)
            raise
        if args.model is None and collection.remove_if_unused():  # a first ingest that found no image
            say(f"mmr ingest: no collection was made at {collection.directory}: with no image in it, it would "
                "only have fixed the model to the demo one")
    return summary


def _say_summary(summary: "IngestSummary", args: argparse.Namespace, on_ray: bool) -> None:
    """The run's counts on stderr (and as JSON on stdout with --json), with what they leave to do."""
    skipped = f", skipped {summary.skipped_total} ({_by_reason(summary.skipped)})" if summary.skipped else ""
    moved = f", moved {summary.moved}" if summary.moved else ""  # renamed too: found where its old path is gone
    say(f"embedded {summary.embedded}, unchanged {summary.unchanged}, duplicates {summary.duplicates}{moved}, "
        f"pruned {summary.pruned}, failed {summary.failed_total} ({_by_reason(summary.failed) or 'none'})"
        f"{skipped}")
    if summary.moved > summary.pruned:  # a renamed folder's old paths, outside what was pruned
        say(f"mmr ingest: the old paths of the {counted(summary.moved, 'file')} moved here stay in the collection "
            "(with the same vectors) until an `mmr ingest --prune` over a folder that holds them: for a renamed "
            "folder, the folder above it")
    if summary.adopted:
        say(f"mmr ingest: {summary.adopted} imported images were found here: their vectors are kept, and their files' "
            "size, time, content hash and dates now recorded")
    if args.json:
        print(json_line(dataclasses.asdict(summary)), flush=True)
    if summary.embedded and not on_ray and args.precision == "auto" and sys.stderr.isatty() and \
            _bf16_unused(args.device):  # a tip for a person at a terminal, not for every line of a cron job's log
        say("tip: this CPU computes bf16 natively; --precision bf16 embeds about twice as fast, with vectors "
            "within ~2e-3 of float32's")


def _say_what_is_kept(last: tuple[int, int | None] | None) -> None:
    """After an interrupt: how many images the run had saved (each committed batch is kept), and that running
    the same command again goes on from there."""
    if last is None or not last[1]:  # planning, or the prune of a run with nothing to embed
        say("mmr ingest: stopped before any image was embedded (what was done is kept); run the same command again "
            "to finish")
    elif last[0] < last[1]:
        done, total = last
        say(f"mmr ingest: {done} of {total} images were done and saved before the interrupt; run the same command "
            f"again to do the {total - done} left")
    else:  # stopped in the prune or the index after the last batch
        say(f"mmr ingest: all {last[1]} images were done and saved; run the same command again to finish (a prune "
            "or the index was left)")


def _ingest_status(summary: "IngestSummary", sources: list[str]) -> int:
    """0 when some file was embedded, reused, found unchanged (a file that failed before and has not changed
    is unchanged: it is not retried) or held already under another path to it (an alias), or pruning removed
    something (the listed files that are gone included);
    2, as for any failed command, when every file found failed or was skipped in this run; 1 when no image file
    was found."""
    if summary.embedded or summary.unchanged or summary.duplicates or summary.moved or summary.skipped.get("alias"):
        if summary.skipped.get("alias"):  # files held under another path: nothing to do, as for unchanged ones
            say(f"mmr ingest: {summary.skipped['alias']} files are held already under another path to them (the "
                "collection ingested the folder a link here leads to, or a link to this folder)")
        return 0
    if summary.pruned and not summary.failed_total and set(summary.skipped) <= {"missing"}:
        return 0  # a list of files that are all gone now: --prune removed their rows, which was the job
    if summary.failed_total or summary.skipped_total:
        say("mmr ingest: every file failed or was skipped; `mmr info --failures` lists them with their reasons")
        return 2
    if summary.pruned:
        return 0
    say("mmr ingest: no image files found in " + ", ".join(sources))
    return 1


def _by_reason(counts: dict[str, int]) -> str:
    return ", ".join(f"{reason} {count}" for reason, count in counts.items())


def _bf16_unused(device: str) -> bool:
    """Whether ``device`` is a CPU with native bf16, which ``--precision auto`` leaves in float32."""
    from ..models.encoder import resolve_device
    from ..models.precision import native_bf16

    resolved = resolve_device(device)
    return resolved.type == "cpu" and native_bf16(resolved)
