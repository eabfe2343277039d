"""The labelling methods of :class:`~mmretrieval.collection.collection.Collection`: zero-shot label sets, their
removal, export and folders per label. A mixin, so that the collection module stays readable; it uses the
collection's catalog, writer lock and text model and nothing else of it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable, ContextManager, Sequence

from ..errors import QueryError
from .catalog import Catalog
from .filters import DateLike, Filters, NearLike, allowed_ids
from .label_sets import check_known

if TYPE_CHECKING:
    from ..models.encoder import DualEncoder
    from ..models.text_tower import TextEncoder
    from .label_sets import LabelSet
    from .labelling import LabelSummary, Organized

Progress = Callable[[int, int], None]  # (done, total)


class LabelMethods:
    """Label sets of an open collection; mixed into :class:`~mmretrieval.collection.collection.Collection`."""

    catalog: Catalog
    _check_process: Callable[[], None]
    busy_message: Callable[[str], "str | None"]
    writing: Callable[..., ContextManager[Catalog]]
    text_model: Callable[[], "DualEncoder | TextEncoder"]

    def label(self, labels: Sequence[str] | str, templates: str | Sequence[str] = "default", *,
              multi_label: bool = False, threshold: float | None = None, label_set: str = "default",
              replace: bool = False, progress: Progress | None = None, label_progress: Progress | None = None,
              path_prefix: str | None = None,
              after: DateLike | None = None, before: DateLike | None = None, camera: str | None = None,
              near: NearLike | None = None) -> LabelSummary:
        """Label every embedded image zero-shot from its stored vector into label set ``label_set``.

        A set of the same name is replaced only with ``replace=True``; see :mod:`mmretrieval.collection.labelling`.
        With filters (as for :meth:`search`) only the matching images are labelled.

        Args:
            templates: templates with one ``{}`` each, or one string: ``default``, ``imagenet``, ``none``, a template
                file, or a single template ("a drawing of a {}.").
            threshold: with ``multi_label``, the probability from 0 to 1 a label needs (None: 0.5); refused
                without it (each image then gets its best label, whatever its probability).
            progress: called with ``(images labelled, images)``.
            label_progress: called with ``(labels embedded, labels)`` while a large vocabulary is embedded.

        Raises:
            QueryError: no labels, unknown or bad templates, a threshold that is not a probability or comes without
                ``multi_label``, a bad filter, or filters that match no image.
            CollectionError: a set named ``label_set`` exists (and ``replace`` is false), a name that cannot name a
                set, a read-only collection, another writer at work, or a closed or forked collection.
        """
        from .labelling import check_label_options, label_collection

        self._check_process()
        check_label_options(multi_label, threshold)  # before the filters and the writer lock: a typo costs no wait
        filters = Filters.of(path_prefix=path_prefix, after=after, before=before, camera=camera, near=near)
        ids = allowed_ids(self.catalog, filters)
        if ids is not None and not len(ids):
            raise QueryError("no embedded image matches the filters; nothing was labelled and the stored labels "
                             "are kept (widen --after/--before/--camera/--near/--prefix)")
        # Under the writer lock: two runs on one set would interleave their rows.
        with self.writing(self.busy_message("label"), update_index=False):
            return label_collection(self.catalog, self.text_model(), labels, templates, multi_label=multi_label,
                                    threshold=threshold, label_set=label_set, replace=replace, progress=progress,
                                    label_progress=label_progress,
                                    ids=None if ids is None else ids.tolist())

    def label_sets(self) -> list["LabelSet"]:
        """The stored label sets (one per labelling run that named it), oldest first."""
        from .label_sets import sets

        return sets(self.catalog)

    def remove_label_set(self, name: str) -> int:
        """Delete label set ``name`` and its assignments (other sets are kept); returns the assignments deleted.

        Raises:
            QueryError: no label set of that name.
            CollectionError: a read-only collection, another writer at work, a closed or forked collection.
        """
        from .label_sets import delete

        if not isinstance(name, str):
            raise QueryError(f"name the label set to remove, got {name!r}")
        with self.writing(self.busy_message("label"), update_index=False):
            return delete(self.catalog, check_known(self.catalog, name))

    def export_labels(self, path: str | os.PathLike, label_set: str | None = None) -> int:
        """Write the labels of ``label_set`` (None: of every set, ``SET:LABEL`` outside the default one) to
        ``.csv`` or ``.jsonl`` (``~`` is expanded); returns rows written.

        Raises:
            QueryError: no label set of that name.
            CollectionError: a path that cannot be written.
        """
        from .labelling import export_labels

        return export_labels(self.catalog, Path(path).expanduser(), check_known(self.catalog, label_set))

    def organize(self, out_dir: str | os.PathLike, copy: bool = False, label_set: str | None = None) -> "Organized":
        """Link (or copy) the images labelled in ``label_set`` (None: in any set) into ``out_dir/<label>/`` (``~`` is
        expanded); returns files placed and sources missing.

        Raises:
            QueryError: no label set of that name.
            CollectionError: a folder that cannot be written.
        """
        from .labelling import organize

        return organize(self.catalog, Path(out_dir).expanduser(), copy=copy,
                        label_set=check_known(self.catalog, label_set))
