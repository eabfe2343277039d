"""Handlers of the Label and Collection tabs: the actions that read or change the whole collection."""

from __future__ import annotations

import dataclasses
import itertools
import logging
import uuid
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from ..models.settings import MULTI_LABEL_THRESHOLD
from ..wording import counted
from .label_input import NO_LABELS, given_labels
from .charts import bar_chart
from .context import AppContext, check_template_set, user_errors
from .media import prune_exports
from .names import display_path, markdown_code, markdown_text

logger = logging.getLogger(__name__)

FAILURES_SHOWN = 1000  # rows of the failed-files table: the browser gets a page, never a 10 M-row table
SAMPLES_PER_LABEL = 4  # sample images shown for each label after labelling
SAMPLED_LABELS = 50  # labels that get samples: the most common (the CSV and the table have every label)


class CollectionHandlers:
    """Info, ingest and label over one :class:`AppContext`."""

    def __init__(self, ctx: AppContext):
        self.ctx = ctx

    # -- info ------------------------------------------------------------------------------------------------
    @user_errors
    def collection_info(self) -> tuple[str, pd.DataFrame]:
        """The collection's model, counts and index, as Markdown, and its failed files with reasons."""
        with self.ctx.lock:
            info = self.ctx.collection.info()
            failures = [(display_path(f.path), f.reason, display_path(f.message))
                        for f in itertools.islice(self.ctx.collection.failures(), FAILURES_SHOWN)]
        table = pd.DataFrame(failures, columns=["path", "reason", "message"])
        return describe_collection(info), table

    # -- ingest ----------------------------------------------------------------------------------------------
    @user_errors
    def ingest(self, folder: str, progress: gr.Progress = gr.Progress()) -> tuple[str, str, pd.DataFrame]:
        """Ingest a folder on the server into the collection, with a live progress bar.

        Returns the ingest summary, then the refreshed info and failures (as :meth:`collection_info`).
        """
        if not self.ctx.allow_ingest:
            raise gr.Error("Ingesting from the browser is off because this app is reachable from other "
                           "machines; run `mmr ingest` on the server instead.", print_exception=False)
        typed = (folder or "").strip()
        if not typed:
            raise gr.Error("Type the path of a folder on this machine to ingest.", print_exception=False)
        source = Path(typed).expanduser()
        if not source.is_absolute():  # it would be resolved against wherever the server was started
            raise gr.Error(f"{display_path(typed)!r} is not an absolute path: type the folder's full path on the "
                           "server, e.g. /home/me/photos (~/photos works too), as the search folder filter takes it.",
                           print_exception=False)
        if not source.is_dir():
            raise gr.Error(f"{display_path(source)} is not a folder on this machine.", print_exception=False)
        progress(0, desc="Looking for images…")

        # Not under ctx.lock: the collection serialises its own catalog writes, and searches must go on
        # while a long ingest runs. The collection itself refuses a second concurrent ingest.
        with self.ctx.long_write() as check_stopping:
            def report(done: int, total: int) -> None:
                check_stopping()
                progress((done, total), desc="Embedding images", unit="images")

            summary = self.ctx.collection.ingest([source], progress=report)
        self.ctx.thumbnails.clear()
        with self.ctx.lock:
            failed_here = sum(_is_under(f.path, source) for f in self.ctx.collection.failures())
        info, failures = self.collection_info()
        return describe_ingest(summary, source, failed_here), info, failures

    # -- label -----------------------------------------------------------------------------------------------
    @user_errors
    def label_collection(
        self, labels: str, templates: str = "default", multi_label: bool = False,
        threshold: float = MULTI_LABEL_THRESHOLD, label_set: str | None = None, replace: bool = False,
        label_file: str | None = None, progress: gr.Progress = gr.Progress(),
    ) -> tuple[str, pd.DataFrame, list[tuple[Any, str]], str | None, str]:
        """Label every image zero-shot; returns a count chart, counts per label, sample images, the CSV and a summary.
        ``label_file``: an uploaded text file of labels, one a line, used instead of the typed ones."""
        self._check_labelling_allowed()
        check_template_set(templates)
        names = given_labels(labels, label_file)
        if not names:
            raise gr.Error(NO_LABELS, print_exception=False)
        progress(0, desc="Embedding the labels…")

        with self.ctx.long_write() as check_stopping, self.ctx.lock:
            def report(done: int, total: int) -> None:
                check_stopping()
                progress((done, total), desc="Labelling", unit="images")

            def report_labels(done: int, total: int) -> None:  # a big vocabulary's prompts take a while too
                check_stopping()
                progress((done, total), desc="Embedding the labels", unit="labels")

            summary = self.ctx.collection.label(names, templates=templates, multi_label=bool(multi_label),
                                                threshold=float(threshold) if multi_label else None, label_set=(label_set or "").strip()
                                                or "default", replace=bool(replace), progress=report,
                                                label_progress=report_labels)
            prune_exports(self.ctx.export_dir)
            csv_path = self.ctx.export_dir / f"labels-{uuid.uuid4().hex[:8]}" / "labels.csv"  # each run its own
            csv_path.parent.mkdir()
            self.ctx.collection.export_labels(csv_path, summary.label_set)  # this run's set, as the CLI's --out
            # One search each, under the lock: the most common labels only (1,000 labels took 27 s and 3,997 images).
            sampled = sorted((name for name in names if summary.counts.get(name)), key=lambda name: -summary.counts[name])
            samples = {name: self._samples(f"{summary.label_set}:{name}") for name in sampled[:SAMPLED_LABELS]}
        counts = pd.DataFrame({"label": names, "count": [summary.counts.get(name, 0) for name in names]})
        gallery = [(self.ctx.thumbnails.get(self.ctx.image_path, image_id), f"{name} ({summary.counts.get(name, 0)})")
                   for name in names for image_id in samples.get(name, ())]
        chart = bar_chart(names, counts["count"].tolist(), title="Images per label", value_format="{:.0f}",
                          elem_id="label-count-bars")
        return chart, counts, gallery, str(csv_path), describe_labelling(summary)

    @user_errors
    def remove_label_set(self, label_set: str | None) -> tuple[str, pd.DataFrame, list[tuple[Any, str]], None, str]:
        """Delete the label set named ``label_set`` (its labels go from search results and filters); returns the
        tab's outputs emptied (the chart, counts, samples and CSV showed a run's set) and a summary."""
        self._check_labelling_allowed()
        name = (label_set or "").strip()
        if not name:
            raise gr.Error("Type the name of the label set to remove in “Label set to remove” (nothing is removed "
                           "without one).", print_exception=False)
        with self.ctx.lock:
            removed = self.ctx.collection.remove_label_set(name)
        summary = (f"**Removed label set** {markdown_code(name)}: {counted(removed, 'label')} given to images deleted; "
                   "other sets are kept.")
        return "", pd.DataFrame({"label": [], "count": []}), [], None, summary

    def _check_labelling_allowed(self) -> None:
        if not self.ctx.allow_labelling:
            raise gr.Error("Labelling from the browser is off because this app is reachable from other machines "
                           "and asks for no login; run `mmr label` on the server, or serve with --auth-file.",
                           print_exception=False)

    def _samples(self, qualified: str) -> list[int]:
        """A few of the most typical images of label ``SET:LABEL``: the label's text as the query, filtered to it."""
        text = qualified.split(":", 1)[1]
        return [hit.id for hit in self.ctx.collection.search(text, k=SAMPLES_PER_LABEL, label=qualified)]

def describe_collection(info: Any) -> str:
    """A CollectionInfo as a short Markdown summary."""
    statuses = ", ".join(f"{count} {status}" for status, count in sorted(info.counts.items())) or "empty"
    params = ", ".join(f"{key}={value}" for key, value in info.index_params.items())
    # The sets, not every label: a 20,000-label vocabulary made this one bullet of half a megabyte.
    labels = ", ".join(f"{markdown_text(name)} ({counted(size, 'label')})" for name, size in info.label_sets.items()) \
        or "none yet; the Label collection tab makes one"
    megabytes = sum(info.bytes_on_disk.values()) / 1e6
    not_embedded = info.counts.get("failed", 0) + info.counts.get("skipped", 0)
    return "\n".join([
        f"**Collection** {markdown_code(info.directory)}",
        f"- model: {markdown_code(info.model_spec)} (key {info.model_key}, {info.dim}-d vectors)",
        f"- images: {statuses}; {counted(info.vectors, 'vector')}",
        f"- index: {info.index_type}{f' ({params})' if params else ''}, {counted(info.index_vectors, 'vector')}",
        f"- label sets: {labels}",
        f"- on disk: {megabytes:.1f} MB",
        *([f"- the table lists the first {FAILURES_SHOWN:,} of {not_embedded:,} failed or skipped files; "
           "`mmr info --failures` lists them all"] if not_embedded > FAILURES_SHOWN else []),
    ])


def describe_ingest(summary: Any, source: Path, failed_here: int) -> str:
    """An IngestSummary in words, honest about the ``failed_here`` files under ``source`` that failed in earlier
    ingests."""
    failed_now = ", ".join(f"{count} {reason}" for reason, count in summary.failed.items())
    skipped_now = ", ".join(f"{count} {reason}" for reason, count in summary.skipped.items())
    earlier = failed_here - summary.failed_total - summary.skipped_total
    lines = [f"**Ingested** {markdown_code(source)}",
             f"- embedded: {summary.embedded} new or changed files",
             f"- unchanged since the last ingest: {summary.unchanged}",
             f"- same bytes as a file already embedded (vector reused): {summary.duplicates}",
             *([f"- moved or renamed (vector reused): {summary.moved}"] if summary.moved else []),
             f"- failed in this run: {summary.failed_total}{f' ({failed_now})' if failed_now else ''}"]
    if summary.skipped:
        lines.append(f"- skipped in this run (not regular files, links that loop, break or leave the folder, unreadable "
                     "folders): "
                     f"{summary.skipped_total} ({skipped_now})")
    if earlier > 0:
        lines.append(f"- still failed from earlier ingests (unchanged, so not retried): {earlier}; "
                     "the table below lists every failed file with its reason")
    if summary.pruned:
        lines.append(f"- removed from the catalog because their file is gone: {summary.pruned}")
    return "\n".join(lines)


def describe_labelling(summary: Any) -> str:
    """A LabelSummary in words."""
    mode = (f"multi-label: every label whose probability is at least {summary.threshold:.2f}" if summary.multi_label
            else "single-label: each image gets its most probable label")
    unassigned = " Images with no label above the threshold have none." if summary.multi_label else ""
    label_set = markdown_text(summary.label_set)  # typed by the user
    name = "" if summary.label_set == "default" else f" (search filters name them {label_set}:LABEL)"
    return "\n".join([f"**Labelled** {counted(summary.images, 'image')} into label set **{label_set}**{name} "
                      f"({mode}).{unassigned}",
                      "Other label sets are kept. Search can now filter on these labels; the CSV below lists this "
                      "set's assignments (id, path, label, probability)."])


def _is_under(path: str, folder: Path) -> bool:
    try:
        return Path(path).resolve().is_relative_to(folder.resolve())
    except (OSError, ValueError):
        return False


def _markdown_of(value: Any, heading: str) -> str:
    """A summary dataclass (IngestSummary, LabelSummary, CollectionInfo) as a Markdown list."""
    if dataclasses.is_dataclass(value):
        items = dataclasses.asdict(value)
    elif isinstance(value, dict):
        items = value
    else:
        return f"**{heading}**: {value}"
    lines = [f"**{heading}**"]
    for key, item in items.items():
        if isinstance(item, dict):
            item = ", ".join(f"{k}: {v}" for k, v in item.items()) or "none"
        elif isinstance(item, float):
            item = f"{item:.3g}"
        lines.append(f"- {key.replace('_', ' ')}: {item}")
    return "\n".join(lines)
