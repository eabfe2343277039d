"""Components that several tabs draw alike: text outputs that show user text as text, the original-file download,
upload previews, and the label filter's choices."""

from __future__ import annotations

from typing import Any

import gradio as gr

from .context import AppContext
from .page_style import FILE_OUT_CLASS, LIVE_CLASS
from .search_handlers import SearchHandlers


def text_output(value: str = "", live: bool = False, **kwargs: Any) -> gr.Markdown:
    """A Markdown output that shows text from users and the file system (queries, labels, file names).

    The handlers escape that text (:func:`.names.markdown_text`); LaTeX is off because Gradio looks for
    ``$$…$$`` in the rendered text, where no escape can stop it. ``live``: a status whose every change a screen
    reader announces (the page's script makes it ``role="status" aria-live="polite"``, :mod:`.page_style`).
    """
    if live:
        kwargs["elem_classes"] = [*kwargs.get("elem_classes", []), LIVE_CLASS]
    return gr.Markdown(value, latex_delimiters=[], **kwargs)


def original_download(elem_id: str) -> tuple[gr.Button, gr.File]:
    """A button that places the shown image's original file for download, and the box it appears in.

    On demand, not on every click of a result: Gradio keeps a copy of each file it serves for an hour.
    """
    button = gr.Button("Get the original file", size="sm", elem_id=f"get-{elem_id}")
    return button, gr.File(label="Original file", interactive=False, elem_id=elem_id, height=60,
                           elem_classes=[FILE_OUT_CLASS])


def preview_uploads(image: gr.Image, handlers: SearchHandlers) -> None:
    """Show an upload the browser cannot draw (HEIC, TIFF) as the JPEG copy the search will then use."""
    image.upload(handlers.show_upload, [image], [image], api_visibility="private", show_progress="minimal")


# The label filters' first choice: no filter. Its value stays "", its name is what a screen reader reads
# (a choice named "" was read out as its tick mark, "✓").
ANY_LABEL = ("any label", "")


def label_choices(ctx: AppContext) -> list[tuple[str, str] | str]:
    """The label filter's choices: :data:`ANY_LABEL` (value "": no filter), then every stored label
    (``SET:LABEL`` outside the default set), each its own name and value."""
    with ctx.lock:  # the labels alone (every page load asks): info() would also count rows and sync the index
        return [ANY_LABEL, *ctx.collection.catalog.label_counts()]


# The map's label set choice when it names none: each image's most probable stored label, whatever its set.
ANY_SET = ("any label set", "")


def set_choices(ctx: AppContext) -> list[tuple[str, str] | str]:
    """The stored label sets, after :data:`ANY_SET`."""
    with ctx.lock:
        return [ANY_SET, *(found.name for found in ctx.collection.label_sets())]
