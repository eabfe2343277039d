"""Components that several tabs draw alike: text outputs that show user text as text, the original-file download,
upload previews, and the label filter's choices."""

from __future__ import annotations

from typing import Any

import gradio as gr

from .context import AppContext
from .search_handlers import SearchHandlers


def text_output(value: str = "", **kwargs: Any) -> gr.Markdown:
    """A Markdown output that shows text from users and the file system (queries, labels, file names).

    The handlers escape that text (:func:`.names.markdown_text`); LaTeX is off because Gradio looks for
    ``$$…$$`` in the rendered text, where no escape can stop it.
    """
    return gr.Markdown(value, latex_delimiters=[], **kwargs)


def original_download(elem_id: str) -> tuple[gr.Button, gr.File]:
    """A button that places the shown image's original file for download, and the box it appears in.

    On demand, not on every click of a result: Gradio keeps a copy of each file it serves for an hour.
    """
    button = gr.Button("Get the original file", size="sm", elem_id=f"get-{elem_id}")
    return button, gr.File(label="Original file", interactive=False, elem_id=elem_id, height=60)


def preview_uploads(image: gr.Image, handlers: SearchHandlers) -> None:
    """Show an upload the browser cannot draw (HEIC, TIFF) as the JPEG copy the search will then use."""
    image.upload(handlers.show_upload, [image], [image], api_visibility="private", show_progress="minimal")


def label_choices(ctx: AppContext) -> list[str]:
    """The label filter's choices: "" (no filter), then every stored label (``SET:LABEL`` outside the default set)."""
    with ctx.lock:  # the labels alone (every page load asks): info() would also count rows and sync the index
        return [""] + list(ctx.collection.catalog.label_counts())
