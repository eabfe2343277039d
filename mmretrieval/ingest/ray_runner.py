"""Ingestion on a Ray cluster (``mmr ingest --ray``): the same plan and the same answers as :mod:`.runner`.

Planning stays on the driver and is the single-machine runner's (:func:`.planning.plan`; with ``--prune``,
:func:`.planning.prune_vanished` before and after the embedding): only new, changed and transiently failed files
are ``pending``. Then Ray Data runs four operators with their own
resources, and its streaming executor applies backpressure between them::

    pending rows (id, path, size, mtime)      driver, a few blocks of files each
      -> decode_rows   CPU tasks               our torch-free decoder; a bad file is a row with its reason
      -> Embedder      actor pool              the model loaded once per actor; one GPU each, or CPU actors
      -> write_rows    I/O tasks               one result per batch: a sealed vector segment in the collection's
                                              format plus its rows, at a location every node reaches
    driver: commit each finished result into the catalog (idempotent), delete it, report progress

A result already written when a driver died is committed by the next run (``--ray`` or not) before it plans,
so a re-run resumes from the work that finished, counting it unchanged; rows still ``pending`` are simply decoded
again.
Ray retries tasks on dead workers and restarts dead actors (execution is at least once); the commit
(:mod:`.ray_commit`) makes that harmless. Connecting to the cluster is :mod:`.ray_connect`'s job. Only
these modules and the CLI's ``--ray`` import Ray.
"""

from __future__ import annotations

import logging
import math
import os
import re
from contextlib import ExitStack, contextmanager, suppress
import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Sequence

from ..collection.catalog import DTYPE_KEY, Catalog
from ..collection.segments import DEFAULT_DTYPE
from .. import errors
from ..errors import CollectionError, MMRError
from ..images.decode import DEFAULT_MAX_PIXELS
from ..images.preprocess import ImagePreparer
from ..models.specs import ModelIdentity
from .batches import RAY_OUTPUT_KEY, RAY_RESULTS_DIR, IngestSummary, chunked, skip_counts
from .ray_commit import CommitCounts, ResultCommitter, Tally
from .ray_segments import ResultDrop, short_retries
from .ray_connect import ray_connection
from .reader import FileDecoder
from .planning import plan_sources, prune_scope, prune_vanished, unmounted_folders

logger = logging.getLogger(__name__)

Progress = Callable[[int, int], None]  # (done, total)
RESULTS_PER_RUN = 20  # a run makes about this many results at least (progress steps, commits)
MIN_SEGMENT_ROWS = 64  # rows per result at least, whatever the run's size
STAGING_DIR = "ray-staging"  # results downloaded from a remote output location, inside the collection directory


@dataclass(frozen=True)
class RayIngestConfig:
    """How to run one ingestion on Ray."""

    address: str | None = None  # cluster to join (host:port, ray://host:10001, auto); None: $RAY_ADDRESS or local
    output: str | None = None  # where workers write results: a folder all nodes reach, or s3://…; None: collection
    batch_size: int | None = None  # images per model call; None: 256 with GPUs, 32 on CPU actors
    embed_actors: int | None = None  # model actors; None: one per GPU in the cluster, else 1
    embed_cpus: float = 1.0  # CPUs each CPU-only model actor reserves (its torch threads)
    decode_tasks: int | None = None  # decode tasks at once across the cluster; None: as many as free CPUs allow
    # memory each decode task reserves: a 50-megapixel photo decodes to 150 MB, a JPEG at any size far less
    # (draft mode); a PNG or TIFF at the 268-megapixel limit needs ~1 GB, 3 GB with transparency
    decode_memory_mb: int = 512
    timeout_s: float | None = 60.0  # a file decoding longer is failed (decode_timeout); None: no isolation
    files_per_task: int = 256  # files per decode task (one Ray block)
    segment_rows: int = 4096  # most rows per result segment (and per catalog commit); a run of fewer than 20x as
    # many files makes ~20 smaller results, so that progress shows and an interrupted run keeps most of its work
    prune: bool = False  # delete rows of files that no longer exist
    checksum: bool = False  # also hash files whose size and time are unchanged (see IngestConfig)
    forget_mounts: tuple[str, ...] = ()  # with prune: folders where a drive was seen mounted (see IngestConfig)
    precision: str = "auto"  # the model actors' number format: auto, fp32 or bf16 (models.precision)
    max_pixels: int = DEFAULT_MAX_PIXELS  # refuse images with more pixels (decompression bombs)

    def __post_init__(self) -> None:
        for name in ("batch_size", "embed_actors", "decode_tasks", "decode_memory_mb", "files_per_task",
                     "segment_rows"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise CollectionError(f"Ray ingest option {name} must be at least 1, got {value}")
        if self.embed_cpus <= 0:
            raise CollectionError(f"Ray ingest option embed_cpus must be above 0, got {self.embed_cpus}")


def run_ray_ingest(catalog: Catalog, identity: ModelIdentity, sources: Sequence[str], config: RayIngestConfig,
                   collection_dir: str, progress: Progress | None = None,
                   hashed: Progress | None = None) -> IngestSummary:
    """Bring the catalog up to date with ``sources``, decoding and embedding on Ray.

    Args:
        catalog: the collection's catalog; the caller holds the collection's ingest lock.
        identity: the collection's model; every embed actor loads it and checks its key.
        sources: folders, image files, and ``.txt``/``.csv`` list files (paths as every node sees them).
        config: cluster address, output location, batch and actor sizes, prune.
        collection_dir: the collection's folder (default output location, staging of downloaded results).
        progress: called with ``(0, total)`` before Ray starts, then ``(done, total)`` after each committed
            result.

    Returns:
        The same counts the single-machine runner returns for the same files.

    Raises:
        CollectionError: Ray is not installed or the cluster cannot be reached; a source does not exist;
            the output location cannot be used.
    """
    scope = prune_scope(sources, catalog, config.forget_mounts) if config.prune else None  # refuses first
    target = config.address or os.environ.get("RAY_ADDRESS")
    with ExitStack() as joined:
        if target and catalog.is_empty():  # a first run that cannot join its cluster plans nothing, so leaves no
            joined.enter_context(ray_connection(target))  # collection; the run goes on in this connection
        drop = ResultDrop(_absolute(config.output or os.path.join(collection_dir, RAY_RESULTS_DIR)),
                          os.path.join(collection_dir, STAGING_DIR))
        drop.prepare()
        joined.callback(_remove_empty_folders, collection_dir)  # after a failed run too, once empty
        if config.output:  # a later plain ingest commits what a killed run leaves there (commit_left_results)
            with catalog.transaction():
                catalog.set_meta(RAY_OUTPUT_KEY, drop.uri)
        leftovers = Tally({})
        _commit_left(drop, catalog, leftovers)  # a killed run's finished work first, as a plain ingest commits it:
        if leftovers.rows:                      # its rows are then unchanged, not counted as embedded by this run
            logger.info("committed %d rows that an interrupted --ray run had finished", leftovers.rows)
        planned = plan_sources(catalog, sources, config.checksum, hashed, pruning=scope is not None,
                               max_pixels=config.max_pixels)
        skipped = planned.skipped
        pruned = prune_vanished(catalog, scope, skipped, not_ok_only=True)  # never decode a file that is gone
        committer = ResultCommitter(catalog)
        tally = Tally(skip_counts(skipped, planned.aliases))
        tally.add(CommitCounts(duplicates=planned.copies - planned.moved))  # stored while planning (not in the total)
        total = catalog.pending_count()
        config = _sized(config, total)
        report = _reporter(tally, total, progress)
        report(CommitCounts())  # the bar shows the total while Ray starts (10-30 s); its clock starts at a result
        if total:
            dtype = catalog.get_meta(DTYPE_KEY) or DEFAULT_DTYPE
            with ray_connection(config.address) as gpus, ours_unwrapped():
                dataset = build_dataset(catalog.pending_files(), identity, drop, dtype, config, gpus)
                for record in dataset.iter_rows():
                    _commit_one(drop, committer, record["result"], report)
                logger.info("Ray execution statistics:\n%s", dataset.stats())
            _commit_all(drop, committer, report)  # copies written by retried tasks: committed already, removed
        if left := catalog.pending_count():
            logger.warning("%d files got no result from Ray; they stay pending and the next run retries them", left)
        if config.output:
            _forget_output(catalog)  # every result there is committed and removed
        pruned += prune_vanished(catalog, scope, skipped)  # the rest, once moved files have reused their vectors
        return dataclasses.replace(tally.summary(planned.unchanged, pruned), adopted=planned.adopted,
                                   moved=planned.moved, unmounted=unmounted_folders(scope))


def commit_left_results(catalog: Catalog, collection_dir: str) -> int:
    """Commit the results a killed ``--ray`` run finished, in the collection's own results folder or in the
    ``--ray-output`` location it recorded; returns the rows committed.

    A plain ``mmr ingest`` calls this first: it would otherwise decode those files again and leave the results
    there for good. A recorded location that cannot be read now (a bucket offline) is left for a later run, with
    a warning. Imports nothing of Ray (the results are Parquet and the collection's own segments).
    """
    staging = os.path.join(collection_dir, STAGING_DIR)
    tally = Tally({})
    results = os.path.join(collection_dir, RAY_RESULTS_DIR)
    if os.path.isdir(results):
        _commit_left(ResultDrop(results, staging), catalog, tally)
    if elsewhere := catalog.get_meta(RAY_OUTPUT_KEY):
        try:
            _commit_left(ResultDrop(short_retries(elsewhere), staging), catalog, tally)
        except (CollectionError, OSError) as exc:
            logger.warning("cannot read the results an interrupted --ray run left in %s (%s); they stay there, and "
                           "the next ingest tries again", elsewhere, exc)
        else:
            _forget_output(catalog)
    if tally.rows:
        logger.info("committed %d rows that an interrupted --ray run had finished", tally.rows)
    _remove_empty_folders(collection_dir)
    return tally.rows


def _remove_empty_folders(collection_dir: str) -> None:
    """Remove the results and staging folders once empty (a walkthrough found them left in every collection)."""
    for folder in (RAY_RESULTS_DIR, STAGING_DIR):
        with suppress(OSError):  # not empty (a result a retried task wrote late, or one left for later), or gone
            os.rmdir(os.path.join(collection_dir, folder))


# The last line of a traceback that Ray carries as text only: an error of ours raised in an actor's __init__
# (the weights on a node differ, bf16 on a CPU without it) reaches the driver as an ActorDiedError whose message
# holds the actor's traceback, not the exception itself.
_OURS_IN_TEXT = re.compile(r"mmretrieval\.errors\.(\w+): (.+)")


@contextmanager
def ours_unwrapped() -> Iterator[None]:
    """Raise an error of ours that Ray wrapped (a task's ``RayTaskError``, an actor's ``ActorDiedError``) as
    itself, so the user reads its one line rather than Ray's traceback around it; other errors pass as they are."""
    try:
        yield
    except MMRError:
        raise
    except Exception as exc:
        ours = _ours_within(exc)
        if ours is None:
            raise
        raise ours from exc


def _ours_within(exc: BaseException) -> MMRError | None:
    """The error of ours that ``exc`` wraps: as an object (causes, a ``RayTaskError``'s ``cause``), else as the
    last ``mmretrieval.errors.NAME: message`` line of its text."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [exc]
    while pending:
        candidate = pending.pop()
        if candidate is None or id(candidate) in seen:
            continue
        seen.add(id(candidate))
        if isinstance(candidate, MMRError):
            return candidate
        inner = getattr(candidate, "cause", None)  # (not __context__: an error met while handling ours is another)
        pending += [candidate.__cause__, inner if isinstance(inner, BaseException) else None]
    lines = str(exc).rstrip().splitlines()
    found = _OURS_IN_TEXT.fullmatch(lines[-1]) if lines else None  # ours only if the traceback ends with it
    if found is None:
        return None
    name, message = found.groups()
    kind = getattr(errors, name, None)
    try:
        return kind(message) if isinstance(kind, type) and issubclass(kind, MMRError) else CollectionError(message)
    except TypeError:  # a kind made with more than a message (ImageDecodeError, SettingError)
        return CollectionError(message)


def _commit_left(drop: ResultDrop, catalog: Catalog, tally: Tally) -> None:
    if drop.remove_unsealed():
        logger.info("removed half-written results left by an interrupted run")
    _commit_all(drop, ResultCommitter(catalog), tally.add)


def _forget_output(catalog: Catalog) -> None:
    with catalog.transaction():
        catalog.set_meta(RAY_OUTPUT_KEY, "")


def _sized(config: RayIngestConfig, pending: int) -> RayIngestConfig:
    """``config`` with results of at most 1/:data:`RESULTS_PER_RUN` of ``pending`` rows (at least
    :data:`MIN_SEGMENT_ROWS`): one 4,096-row result for a run of 600 files would show no progress until the end
    and lose everything to a Ctrl-C."""
    rows = max(MIN_SEGMENT_ROWS, math.ceil(pending / RESULTS_PER_RUN))
    return config if rows >= config.segment_rows else dataclasses.replace(config, segment_rows=rows)


def _reporter(tally: Tally, total: int, progress: Progress | None) -> Callable[[CommitCounts], None]:
    def report(counts: CommitCounts) -> None:
        tally.add(counts)
        if progress:
            progress(tally.rows, total)

    return report


def _commit_one(drop: ResultDrop, committer: ResultCommitter, name: str,
                report: Callable[[CommitCounts], None]) -> None:
    counts = committer.commit(drop.read(name))
    report(counts)  # at once: a Ctrl-C in the removal below said fewer images were saved than were (128 of 192)
    drop.remove(name)  # only after the commit: a driver killed in between commits it again, as a no-op
    if counts.stale:
        logger.debug("result %s: %d rows already committed or planned again since", name, counts.stale)


def _commit_all(drop: ResultDrop, committer: ResultCommitter, report: Callable[[CommitCounts], None]) -> None:
    for name in drop.finished():
        _commit_one(drop, committer, name, report)


def _absolute(location: str) -> str:
    return location if "://" in location else os.path.abspath(os.path.expanduser(location))


def build_dataset(pending: Iterable[tuple[int, bytes, int, int]], identity: ModelIdentity, drop: ResultDrop,
                  dtype: str, config: RayIngestConfig, gpus: float) -> Any:
    """The Ray Data pipeline over ``pending`` ``(id, path key, size, mtime_ns)`` rows (a stream, read once);
    iterating it yields one ``{result, rows}`` per result.

    Each block of ``files_per_task`` rows goes to Ray's object store as it is read (~90 bytes a file, spilled
    to disk when the store fills), so the driver never holds the to-do list: 10 M files are ~0.9 GB there.
    """
    import pyarrow as pa
    import ray
    import ray.data

    from .ray_stages import Embedder, decode_rows, write_rows

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # the caller's progress callback reports committed rows instead
    blocks = []
    for chunk in chunked(pending, config.files_per_task):
        ids, paths, sizes, mtimes = zip(*chunk)
        blocks.append(ray.put(pa.table({"image_id": pa.array(ids, pa.int64()), "path": pa.array(paths, pa.binary()),
                                        "size": pa.array(sizes, pa.int64()), "mtime_ns": pa.array(mtimes, pa.int64())})))
    dataset = ray.data.from_arrow_refs(blocks)
    # Its own operator (a memory reservation the embed actors lack keeps Ray from fusing the two, which would
    # decode inside the model actors and leave a GPU idle while they do).
    decode_pool = ray.data.TaskPoolStrategy(size=config.decode_tasks) if config.decode_tasks else None
    dataset = dataset.map_batches(decode_rows, fn_kwargs={"preparer": ImagePreparer(identity.preprocess),
                                                          "timeout_s": config.timeout_s,
                                                          "decode": FileDecoder(config.max_pixels)},
                                  batch_size=None, batch_format="numpy", compute=decode_pool, num_cpus=1,
                                  memory=config.decode_memory_mb * 1024**2)
    use_gpus = gpus >= 1
    actors = config.embed_actors or (int(gpus) if use_gpus else 1)
    dataset = dataset.map_batches(
        Embedder, fn_constructor_kwargs={"identity_json": identity.to_json(), "device": "cuda" if use_gpus else "cpu",
                                         "precision": config.precision},
        compute=ray.data.ActorPoolStrategy(size=actors), batch_size=config.batch_size or (256 if use_gpus else 32),
        batch_format="numpy", num_gpus=1 if use_gpus else 0, num_cpus=0 if use_gpus else config.embed_cpus)
    return dataset.map_batches(write_rows, fn_kwargs={"drop": drop, "dtype": dtype}, batch_size=config.segment_rows,
                               batch_format="numpy", num_cpus=0)
