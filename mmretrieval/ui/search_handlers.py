"""Handlers of the Search and Zero-shot tabs. Plain values in, plain values out; errors as ``gr.Error``.

Each public method is also a named HTTP endpoint (see :mod:`.layout`), so scripts get the same actions.
"""

from __future__ import annotations

import inspect
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gradio as gr
import numpy as np
import pandas as pd
from PIL import Image

from .label_input import NO_LABELS, given_labels
from ..models.settings import MULTI_LABEL_THRESHOLD
from ..models.zeroshot import predict
from ..wording import counted
from .context import AppContext, user_errors
from .charts import bar_chart
from .media import PREVIEW_PX, browser_copy, export_original, load_upload, zip_originals
from .image_details import catalog_details, describe_details
from .names import display_path, markdown_text
from .search_inputs import (DEFAULT_K, NO_THRESHOLD, echo, image_id_of, no_results_hint, results_wanted,
                            search_filters, taken_span, threshold_of)

if TYPE_CHECKING:
    from ..collection.records import Hit

logger = logging.getLogger(__name__)

MAX_DEPTH = 2_000  # deepest result the Next page button reaches
# Without a tokenizer that can count (e.g. a Hugging Face one), a query past this many words is taken to be
# longer than the model reads: models/encoder.py's LONG_TEXT_WORDS, which the note counts with (repeated here, and
# held equal by a test, so that importing this module does not import torch).
LONG_QUERY_WORDS = 60
MIN_PREVIEW_PX = 320  # smaller images are enlarged in the large view
CAPTION_NAME_CHARS = 28  # a longer file name is cut in its middle under a result: its end (a version, extension) stays
GalleryItem = tuple[Any, str]  # (image, caption) as gr.Gallery takes them
# gallery, hits as JSON, confidence, hit ids (kept in the page), status line
SearchResults = tuple[list[GalleryItem], list[dict[str, Any]], dict[str, Any], list[int], str]
# what the Previous/Next buttons repeat: {"kind": "search" | "similar", "args": [the handler's inputs], "offset": n}
Page = dict[str, Any]
PagedResults = tuple[list[GalleryItem], list[dict[str, Any]], dict[str, Any], list[int], str, Page]


def hit_caption(hit: "Hit", taken: str | None = None) -> str:
    """What the gallery shows under a result: its score and file name; for an image listed by filters alone (no
    score), when it was taken (``taken``: ISO, as PhotoMetadata.taken_at), to the minute with its UTC offset when
    known (the list is in absolute time: 23:30 -07:00 comes after 00:30 +02:00 the next day), or "undated"."""
    name = _short_name(display_path(Path(hit.path).name))
    if math.isnan(hit.score):
        when = f"{taken[:16].replace('T', ' ')}{' ' + taken[19:] if taken[19:] else ''}" if taken else "undated"
        return f"{when} · {name}"
    return f"{hit.score:.3f} · {name}"


def _short_name(name: str) -> str:
    """``name`` in at most :data:`CAPTION_NAME_CHARS` characters, cut in the middle: a caption is one line of a
    thumbnail's width, and its end was cut off ("IMG_0007_a_very_lo…"); the whole name is in the details."""
    if len(name) <= CAPTION_NAME_CHARS:
        return name
    head = (CAPTION_NAME_CHARS - 1) // 2
    return f"{name[:head]}…{name[-(CAPTION_NAME_CHARS - 1 - head):]}"


def hit_record(hit: "Hit") -> dict[str, Any]:
    """A hit as JSON for the API: ``file`` is for reading (as :func:`.names.display_path` shows it), ``id`` for
    fetching the file (``/original``); ``score`` is None for an image listed by filters alone."""
    # "file", not "path": gradio_client takes any dict with a "path" key for a file to download.
    score = None if math.isnan(hit.score) else round(float(hit.score), 6)
    return {"id": hit.id, "file": display_path(hit.path), "score": score, "labels": list(hit.labels),
            "caption": hit.caption}


class SearchHandlers:
    """Search, find-similar, result details and zero-shot classification over one :class:`AppContext`."""

    def __init__(self, ctx: AppContext):
        self.ctx = ctx

    # -- search ---------------------------------------------------------------------------------------------
    @user_errors
    def search(
        self, text: str, image: str | None = None, negative: str | None = None, k: float | None = DEFAULT_K,
        threshold: float | None = None, label: str | None = None, folder: str | None = None,
        after: str | None = None, before: str | None = None, camera: str | None = None, oldest: bool = False,
        offset: int = 0,
    ) -> SearchResults:
        """Text and/or image query, minus negative text, optionally only among images with ``label`` or under ``folder``.

        Returns the gallery, the hits as JSON, how far the best hit stands out from the query's scores against
        how far unrelated text's does (for text-only queries), the hit ids and a status line. ``offset`` skips
        the best hits (a later page shows results ``offset + 1`` on). With no query, the filters alone list their
        images: a label's most probable first, else newest first (``oldest``: oldest first).
        """
        query_image = load_upload(image)
        text, negative = (text or "").strip(), (negative or "").strip()
        filters = search_filters(label, folder, after, before, camera)
        count, k_note = results_wanted(k)
        if not text and query_image is None:
            if not filters.arguments or negative:
                raise gr.Error("Type a query, or add a query image, then search (or set filters alone to list "
                               "their images: a label, most probable first; a folder, dates or a camera, newest "
                               "first).", print_exception=False)
            if "label" not in filters.arguments:  # folder, dates, camera: newest first, as `mmr search --after ...`
                with self.ctx.lock:
                    hits = self.ctx.collection.browse(k=offset + count, oldest_first=bool(oldest), **filters.arguments)
                notes = [note for note in (k_note, NO_THRESHOLD if threshold_of(threshold) is not None else "") if note]
                unscored = {"level": "not calibrated", "top_score": None,
                            "message": "Images listed by filters alone have no score."}
                order = "oldest first" if oldest else "newest first"
                return self._results(hits[offset:], f"no query{filters.among}, {order}", unscored, notes,
                                     no_results_hint(filters, None), offset)
            with self.ctx.lock:  # a label alone: its images, most probable first, as `mmr search --label`
                hits = self.ctx.collection.labelled(label.strip(), k=offset + count, threshold=threshold_of(threshold),
                                                    **{name: value for name, value in filters.arguments.items()
                                                       if name != "label"})
            return self._results(hits[offset:], f"no query{filters.among}, most probable first (scores are the "
                                 "label's probabilities)", self._confidence(hits, None), [k_note] if k_note else [],
                                 no_results_hint(filters, threshold_of(threshold)), offset)
        query = self._build_query(text, query_image, negative)
        with self.ctx.lock:
            vector = self.ctx.collection.query_vector(query)
            hits = self.ctx.collection.search(vector, k=offset + count, threshold=threshold_of(threshold),
                                              **filters.arguments)
        what = " + ".join(part for part in (echo(text) if text else "", "image" if query_image else "") if part)
        # The noise band describes the whole collection: a filtered search is not judged against it.
        confidence = self._confidence(hits, vector if query.is_single_text and not filters.arguments else None)
        texts = [term.text for term in (*query.positives, *query.negatives) if term.text]
        notes = [note for note in (k_note, self._unread_note(texts)) if note]
        return self._results(hits[offset:], f"{what}{f' − {echo(negative)}' if negative else ''}{filters.among}",
                             confidence, notes, no_results_hint(filters, threshold_of(threshold)), offset)

    @user_errors
    def similar(
        self, image_id: float | str | None, k: float | None = DEFAULT_K, threshold: float | None = None,
        label: str | None = None, folder: str | None = None, after: str | None = None, before: str | None = None,
        camera: str | None = None, offset: int = 0,
    ) -> SearchResults:
        """Images most like collection image ``image_id`` (a catalog id, as search results carry), with the filters.

        ``image_id`` may also be the Image id box's text (the page's box is text, so that it can start empty).
        ``offset`` skips the most similar images, as for :meth:`search`.
        """
        image_id = image_id_of(image_id, "No image is selected: click a search result (or type an image id and "
                                       "press Show), then ask for more like it.")
        filters = search_filters(label, folder, after, before, camera)
        count, k_note = results_wanted(k)
        with self.ctx.lock:
            hits = self.ctx.collection.similar(image_id, k=offset + count, threshold=threshold_of(threshold),
                                               **filters.arguments)
        return self._results(hits[offset:], f"more like image {image_id}{filters.among}",
                             self._confidence(hits, None), [k_note] if k_note else [],
                             no_results_hint(filters, threshold_of(threshold)), offset)

    @user_errors
    def turn_page(self, page: Page | None, forward: bool) -> PagedResults:
        """The next (or previous) page of the last search or "more like this": as many results as it asked for,
        after (or before) the ones shown; and the page now shown, for the next turn. Past the last result, every
        output is left as it is (``gr.skip()``)."""
        if not page:
            raise gr.Error("Search first: the Next and Previous buttons page through a search's results.",
                           print_exception=False)
        handler = self.similar if page["kind"] == "similar" else self.search
        size = results_wanted(inspect.signature(handler).bind(*page["args"]).arguments.get("k"))[0]  # its k, by name
        offset = max(0, page["offset"] + (size if forward else -size))
        if offset + size > MAX_DEPTH:
            raise gr.Error(f"Pages stop at result {MAX_DEPTH}: narrow the search (a filter, a threshold or more "
                           "words) to see other images.", print_exception=False)
        results = handler(*page["args"], offset=offset)
        if forward and not results[3]:  # news, not an error: an info toast, and the page shown stays
            gr.Info("These are the last results: no more images match.")
            return tuple(gr.skip() for _ in (*results, page))
        return (*results, {**page, "offset": offset})

    def _build_query(self, text: str, image: Image.Image | None, negative: str) -> Any:
        # Terms are built here rather than with search.parse_query, which treats a string naming an existing
        # file as an image to read: in the browser every string stays text, never a server path.
        from ..collection.query import Query, Term, split_weight

        positives = [Term(text=words, weight=weight) for weight, words in [split_weight(text)] if text]
        if image is not None:
            positives.append(Term(image=image))
        negatives = [Term(text=words, weight=weight)
                     for weight, words in (split_weight(part.strip()) for part in negative.split(",") if part.strip())]
        return Query(tuple(positives), tuple(negatives))

    def _confidence(self, hits: "list[Hit]", text_vector: np.ndarray | None) -> dict[str, Any]:
        """How the best hit stands out, against the collection's noise band; only a text-only query (its vector)
        is judged."""
        if text_vector is None:
            return {"level": "not calibrated", "top_score": hits[0].score if hits else None,
                    "message": "The weak-match hint is calibrated for unfiltered text-only queries "
                               "(no image, no negatives, no label or folder filter)."}
        with self.ctx.lock:
            return self.ctx.noise_calibration().assess(text_vector, hits[0].score if hits else None).to_dict()

    def _results(self, hits: "list[Hit]", description: str, confidence: dict[str, Any], notes: list[str],
                 empty_hint: str, offset: int = 0) -> SearchResults:
        """The outputs of a search: ``description`` (Markdown, already escaped) says what was asked, ``notes``
        add paragraphs (k capped, query too long), ``empty_hint`` says what to change when nothing came back;
        ``hits`` start at result ``offset + 1``."""
        unscored = [hit.id for hit in hits if math.isnan(hit.score)]  # listed by filters alone: dated instead
        with self.ctx.lock:
            taken = {image_id: photo.taken_at for image_id, photo in self.ctx.collection.photos(unscored).items()}
        gallery = [(self.ctx.thumbnails.get(self.ctx.image_path, hit.id), hit_caption(hit, taken.get(hit.id)))
                   for hit in hits]
        if not hits:
            status = f"No results for {description}. {empty_hint}"
        else:
            which = f"Results {offset + 1}–{offset + len(hits)}" if offset else counted(len(hits), "result")
            span = taken_span([taken.get(hit.id) for hit in hits]) if unscored else (
                f"scores {hits[0].score:.3f} to {hits[-1].score:.3f}")
            status = f"{which} for {description}; {span}. Click an image for details and “more like this”."
            if confidence.get("level") in ("weak", "fair", "clear"):
                mark = "⚠️ " if confidence["level"] == "weak" else ""
                status += f"\n\n{mark}{confidence['message']}"
        status += "".join(f"\n\n{note}" for note in notes)
        return gallery, [hit_record(hit) for hit in hits], confidence, [hit.id for hit in hits], status

    def _unread_note(self, texts: list[str]) -> str:
        """A warning for the status line when one of ``texts`` is longer than the model reads, else ""."""
        from ..models.encoder import unread_note

        note = unread_note(self.ctx.encoder, texts)
        return f"⚠️ {note}" if note else ""

    # -- one result ------------------------------------------------------------------------------------------
    @user_errors
    def image_info(self, image_id: float | str | None) -> tuple[Image.Image, str, int, str]:
        """Collection image ``image_id`` large, with its path, size, caption and labels, and its original file.

        ``image_id`` may also be the Image id box's text; a non-whole number is refused, never rounded.
        """
        preview, details, image_id = self._shown(image_id)
        return preview, details, image_id, str(export_original(self.ctx.recorded_file, image_id, self.ctx.export_dir))

    @user_errors
    def show_image(self, image_id: float | str | None) -> tuple[Image.Image, str, int, None]:
        """:meth:`image_info` for the page: the original file box is emptied, not filled.

        Gradio copies a file it is handed into its cache, kept for an hour: a photo's megabytes on every click
        of a result. The page's "Get the original file" button asks for it instead (:meth:`original`).
        """
        return (*self._shown(image_id), None)

    def _shown(self, image_id: float | str | None) -> tuple[Image.Image, str, int]:
        """Collection image ``image_id`` large, its details, and its id as a whole number."""
        image_id = image_id_of(image_id, "No image selected: click a result, or type an image id.")
        with self.ctx.lock:
            row = catalog_details(self.ctx, image_id)
        preview = self.ctx.thumbnails.get(self.ctx.image_path, image_id, max_side=PREVIEW_PX)
        if max(preview.size) < MIN_PREVIEW_PX:  # small images (icons, the demo's scenes): enlarge, pixels kept sharp
            scale = MIN_PREVIEW_PX // max(preview.size) + 1
            preview = preview.resize((preview.width * scale, preview.height * scale), Image.Resampling.NEAREST)
        return preview, describe_details(image_id, row), image_id

    @user_errors
    def select_result(self, hit_ids: list[int], event: gr.SelectData) -> tuple[Image.Image, str, int, None]:
        """The gallery item the user clicked, shown large (the click's index maps to a catalog id)."""
        index = event.index if isinstance(event.index, int) else None
        if index is None or not 0 <= index < len(hit_ids or []):
            raise gr.Error("That result is gone; search again.", print_exception=False)
        return self.show_image(hit_ids[index])

    @user_errors
    def original(self, image_id: float | str | None) -> str:
        """The original file of collection image ``image_id``, under its own name (by catalog id only)."""
        image_id = image_id_of(image_id, "No image id given: click a result, or type an image id (whole numbers "
                                       "from 1, as search results show).")
        return str(export_original(self.ctx.recorded_file, image_id, self.ctx.export_dir))

    @user_errors
    def originals_zip(self, hit_ids: list[int]) -> tuple[str, str]:
        """A zip of the current results' original files under their own names, and a line saying what it holds."""
        if not hit_ids:
            raise gr.Error("There are no results to download yet; search first.", print_exception=False)
        archive, missing = zip_originals(self.ctx.recorded_file, list(hit_ids), self.ctx.export_dir)
        note = f"{counted(len(hit_ids) - len(missing), 'original file')} in {markdown_text(archive.name)}"
        if missing:
            note += (f"; {len(missing)} left out: their file is gone, unreadable, a link, changed since the ingest, "
                     f"or no longer an image (ids {', '.join(map(str, missing[:10]))})")
        return str(archive), note

    # -- uploads ---------------------------------------------------------------------------------------------
    @user_errors
    def show_upload(self, image: str | None) -> str | None:
        """What an image box holds after an upload: the file, or a JPEG copy where the browser cannot draw it."""
        return browser_copy(image, self.ctx.export_dir)

    # -- zero-shot -------------------------------------------------------------------------------------------
    @user_errors
    def zero_shot(
        self, image: str | None, labels: str, templates: str = "default", multi_label: bool = False,
        label_file: str | None = None,
    ) -> tuple[str, pd.DataFrame, str]:
        """Probabilities of each label for an uploaded image: a bar chart, the full table, and a summary.
        ``label_file``: an uploaded text file of labels, one a line, used instead of the typed ones."""
        picture = load_upload(image, what="image to classify")
        if picture is None:
            raise gr.Error("Upload an image to classify.", print_exception=False)
        names = tuple(given_labels(labels, label_file))
        if not names:
            raise gr.Error(NO_LABELS, print_exception=False)
        classifier = self.ctx.classifiers.get(self.ctx.encoder, names, templates)
        vector = self.ctx.encoder.encode_images([picture])
        probabilities = classifier.probabilities(vector, multi_label=multi_label)[0]
        table = pd.DataFrame({"label": list(classifier.labels), "probability": probabilities.astype(float)})
        table = table.sort_values("probability", ascending=False, kind="stable").reset_index(drop=True)
        best = predict(probabilities[None, :], classifier.labels, multi_label=multi_label)[0]
        chosen = ", ".join(f"**{markdown_text(p.label)}** ({p.probability:.2f})" for p in best) \
            or f"none above {MULTI_LABEL_THRESHOLD:g}"
        independent = multi_label or classifier.is_sigmoid
        mode = "independent probabilities (multi-label)" if independent else "softmax over the labels (they sum to 1)"
        summary = f"Prediction: {chosen}. Scores are {mode}."
        if len(names) == 1 and not independent:
            summary += (" With a single label, softmax always gives it 1.00, whatever the image: add other labels "
                        "to compare against, or tick multi-label for an independent probability.")
        chart = bar_chart(list(table["label"]), list(table["probability"]), title="Probability per label",
                          scale_max=1.0, elem_id="zero-shot-bars")
        return chart, table, summary
