"""Handlers of the Map tab: lay out the collection (cached per generation), colour it, and answer its gestures.

Gestures arrive as catalog ids from the page (a click: one id; a lasso or box: a list); only ids on the
map as drawn are accepted, and images go back as renders by id, never by a path.
"""

from __future__ import annotations

import base64
import collections
import io
import itertools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
import numpy.typing as npt

from ..collection.label_sets import check_known
from ..models.label_text import parse_labels
from ..wording import counted
from . import map_view, projection
from .context import AppContext, check_template_set, folder_prefix, user_errors
from .names import display_path, markdown_text

logger = logging.getLogger(__name__)

SELECTION_SHOWN = 48  # images shown from a lasso selection
HOVER_PX = 128  # hover thumbnails
SESSIONS_KEPT = 32  # pages whose drawn map is remembered (a map of 50,000 points is ~1 MB)


@dataclass(frozen=True)
class DrawnMap:
    """The map as last drawn: which ids are on it, where, and with which label."""

    ids: npt.NDArray[np.int64]
    coordinates: npt.NDArray[np.float32]
    labels: tuple[str, ...]


class MapHandlers:
    """Draw the map, show a clicked point, gather a lasso selection, and hover thumbnails."""

    def __init__(self, ctx: AppContext):
        self.ctx = ctx
        # each page's map as it drew it, by Gradio session (None: a caller without one, such as a test)
        self._drawn: collections.OrderedDict[str | None, DrawnMap] = collections.OrderedDict()
        self._versions = itertools.count(1)

    @user_errors
    def collection_map(self, labels: str = "", method: str = "auto", label: str | None = None,
                       folder: str | None = None, after: str | None = None, before: str | None = None,
                       camera: str | None = None, label_set: str | None = None, templates: str = "default",
                       progress: gr.Progress = gr.Progress(), request: gr.Request | None = None) -> tuple[str, str]:
        """The map (points, colours, legend as JSON) coloured by ``labels`` or else the stored labels (of
        ``label_set``, or each image's most probable of any set), and a note.

        ``label`` and ``folder`` keep only matching images on the map (the layout itself is not recomputed).
        """
        # Typed labels are checked before the layout, which can take minutes.
        typed = tuple(parse_labels(labels, read_files=False)) if (labels or "").replace(",", "").strip() else ()
        check_template_set(templates)
        progress(0, desc="Laying out the embeddings (once per collection generation)…")
        collection = self.ctx.collection
        with self.ctx.lock:
            all_ids = collection.catalog.vector_ids()
            generation = int(collection.catalog.generation)
        if len(all_ids) == 0:
            raise gr.Error("The collection has no embedded images yet; ingest a folder first.", print_exception=False)
        try:
            layout, cached = projection.cached_layout(collection.directory, generation, all_ids, self._vectors, method)
        except ValueError as exc:
            raise gr.Error(str(exc), print_exception=False) from exc
        keep = self._filter(layout.ids, label, folder, after, before, camera)
        ids, coordinates = layout.ids[keep], layout.coordinates[keep]
        if len(ids) == 0:
            raise gr.Error("No image on the map matches the label and folder filters.", print_exception=False)
        point_labels, colouring = self._point_labels(typed, templates, ids, (label_set or "").strip() or None)
        self._remember(_session(request), DrawnMap(ids, coordinates, tuple(point_labels)))
        note = _note(layout, cached, len(all_ids), len(ids), colouring)
        return map_view.map_value(ids, coordinates, point_labels, projection.UNLABELLED, next(self._versions), note), note

    def _vectors(self, ids: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        """The vectors of ``ids``, in that order."""
        with self.ctx.lock:
            found, vectors = self.ctx.collection.vectors([int(i) for i in ids])
        if len(found) != len(ids):
            raise gr.Error("The collection changed while the map was drawn; draw it again.", print_exception=False)
        order = np.argsort(found, kind="stable")
        return vectors[order][np.searchsorted(found[order], ids)]

    def _filter(self, ids: npt.NDArray[np.int64], label: str | None, folder: str | None, after: str | None,
                before: str | None, camera: str | None) -> npt.NDArray[np.bool_]:
        """Which of ``ids`` pass the filters (the collection's own: label, folder, date taken, camera)."""
        from ..collection.filters import Filters, allowed_ids

        filters = Filters.of(path_prefix=folder_prefix(folder),
                             label=(label or "").strip() or None, after=(after or "").strip() or None,
                             before=(before or "").strip() or None, camera=camera)
        with self.ctx.lock:
            allowed = allowed_ids(self.ctx.collection.catalog, filters)
        return np.ones(len(ids), bool) if allowed is None else np.isin(ids, allowed)

    def _point_labels(self, typed: tuple[str, ...], templates: str, ids: npt.NDArray[np.int64],
                      label_set: str | None) -> tuple[list[str], str]:
        if typed:
            classifier = self.ctx.classifiers.get(self.ctx.encoder, typed, templates)
            names, _ = projection.classify_points(classifier, self._vectors(ids))
            return names, "the typed labels (each image's most probable)"
        with self.ctx.lock:
            if label_set is not None:
                check_known(self.ctx.collection.catalog, label_set)
            stored = self.ctx.collection.catalog.labels_of([int(i) for i in ids], label_set)
        if not stored:
            return [projection.UNLABELLED] * len(ids), "nothing: type labels, or label the collection"
        whose = f"label set {markdown_text(label_set)}" if label_set else "any label set"
        return ([stored[int(i)][0][0] if int(i) in stored else projection.UNLABELLED for i in ids],
                f"the stored labels (each image's most probable, {whose})")

    # -- gestures --------------------------------------------------------------------------------------------
    @user_errors
    def map_select(self, event: gr.SelectData, request: gr.Request | None = None) -> tuple[Any, Any, str]:
        """A click (one id: shown in the details panel) or a lasso (ids: shown in the gallery below the map), on
        the map this page drew (another page's map may hold other points).

        Returns the clicked id (or ``gr.skip()``), the gallery (or ``gr.skip()``) and a note.
        """
        drawn = self._drawn.get(_session(request))
        if drawn is None:
            raise gr.Error("Draw the map first.", print_exception=False)
        on_map = set(drawn.ids.tolist())
        if isinstance(event.index, int) and not isinstance(event.index, bool):
            if event.index not in on_map:
                raise gr.Error(f"Image {event.index} is not on the map; draw it again.", print_exception=False)
            return event.index, gr.skip(), f"Image {event.index}: shown under “Clicked image”, with its details."
        if not isinstance(event.index, list) or not all(isinstance(i, int) for i in event.index):
            raise gr.Error("That selection is not a list of image ids.", print_exception=False)
        chosen = [i for i in dict.fromkeys(event.index) if i in on_map]
        if not chosen:
            return gr.skip(), [], "No point inside the selection; drag around some points."
        gallery = self._gallery(drawn, chosen[:SELECTION_SHOWN])
        shown = f"the first {SELECTION_SHOWN}" if len(chosen) > SELECTION_SHOWN else "all"
        return gr.skip(), gallery, f"{counted(len(chosen), 'image')} selected; showing {shown}. Click one for details."

    def _gallery(self, drawn: DrawnMap, ids: list[int]) -> list[tuple[Any, str]]:
        label_of = dict(zip(drawn.ids.tolist(), drawn.labels))
        with self.ctx.lock:
            rows = self.ctx.collection.catalog.rows(ids)
        return [(self.ctx.thumbnails.get(self.ctx.image_path, i),
                 f"{label_of.get(i, '')} · {display_path(Path(rows[i].path).name) if i in rows else i}") for i in ids]

    def map_thumbnail(self, image_id: Any) -> dict[str, str]:
        """Hover card for a point: file name and a small render as a data URL (ids on the map only)."""
        if isinstance(image_id, list) and len(image_id) == 1:  # the page sends its arguments as a list
            image_id = image_id[0]
        # (a server function gets no session: a point of any page's map)
        if not isinstance(image_id, int) or not any(image_id in drawn.ids for drawn in list(self._drawn.values())):
            return {"name": "", "src": ""}
        image = self.ctx.thumbnails.get(self.ctx.image_path, image_id, max_side=HOVER_PX)
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format="WEBP", quality=80)
        with self.ctx.lock:
            row = self.ctx.collection.catalog.rows([image_id]).get(image_id)
        return {"name": display_path(Path(row.path).name) if row else str(image_id),
                "src": "data:image/webp;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")}

    def _remember(self, session: str | None, drawn: DrawnMap) -> None:
        self._drawn[session] = drawn
        self._drawn.move_to_end(session)
        while len(self._drawn) > SESSIONS_KEPT:
            self._drawn.popitem(last=False)

    def forget(self) -> None:
        """Drop every drawn map (after an ingest their ids may be stale)."""
        self._drawn.clear()


def _session(request: gr.Request | None) -> str | None:
    """The page a request came from (Gradio's session), or None without one."""
    return getattr(request, "session_hash", None) if request is not None else None


def _note(layout: projection.Projection, cached: bool, total: int, shown: int, colouring: str) -> str:
    names = {"umap": "UMAP", "tsne": "t-SNE", "pca": "PCA"}
    source = "from the cache" if cached else "computed now and cached"
    sampled = f" (a sample of {len(layout.ids)} of {total})" if len(layout.ids) < total else ""
    filtered = f"; {shown} match the filters" if shown < len(layout.ids) else ""
    axes = ""
    if layout.explained:
        axes = (f" PCA's axes explain {layout.explained[0]:.0%} and {layout.explained[1]:.0%} of the variance; "
                "UMAP or t-SNE show neighbourhoods better.")
    else:
        axes = " Near points are similar images; distances between far islands mean little."
    return (f"{names.get(layout.method, layout.method)} map of {counted(len(layout.ids), 'image')}{sampled}{filtered}, "
            f"{source}; coloured by {colouring}.{axes}")
