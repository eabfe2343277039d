"""Labels from the browser: typed in a box, or uploaded as a text file when there are too many to paste.

A pasted vocabulary of thousands of lines froze the page in Gradio's textbox (1,000 lines 2.1 s, 5,000 lines
76 s); a file of the same labels uploads at once and is read here as ``mmr label --labels @FILE`` reads one.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from ..models.label_text import parse_labels
from .media import guard_upload

MAX_LABEL_FILE_BYTES = 4 * 2**20  # ~100,000 labels of 40 characters
NO_LABELS = "Type at least one label (comma-separated or one per line), or upload a file of them."
TYPED_LABELS = "Labels (one per line, commas kept; or comma-separated on one line)"


@dataclass(frozen=True)
class LabelInputs:
    typed: gr.Textbox
    file: gr.File


def label_inputs(value: str, elem_id: str) -> LabelInputs:
    """A box for typed labels and an upload for a file of them; an upload empties the box, since the file's labels
    are then the ones used."""
    typed = gr.Textbox(label=TYPED_LABELS, lines=4, value=value, elem_id=elem_id,
                       placeholder="e.g.\nbeach\nmountain\ncity at night")  # an empty box said nothing of its form
    file = guard_upload(gr.File(label="Or a label file (.txt, one label a line; used instead of the box)",
                                file_types=[".txt"], type="filepath", height=140, elem_id=f"{elem_id}-file"),
                        what="label file")
    file.upload(lambda: "", None, typed, api_visibility="private", queue=False, show_progress="hidden")
    return LabelInputs(typed, file)


def given_labels(typed: str | None, label_file: str | None) -> list[str]:
    """The uploaded file's labels when there is one, else the typed ones; [] when neither holds a label.

    Raises:
        gr.Error: a file over :data:`MAX_LABEL_FILE_BYTES`, or one that is not UTF-8 text.
        QueryError: typed labels that name a file (``@…``).
    """
    if label_file:
        size = os.path.getsize(label_file)
        if size > MAX_LABEL_FILE_BYTES:
            raise gr.Error(f"The label file is {size / 2**20:.1f} MiB; a label file may have at most "
                           f"{MAX_LABEL_FILE_BYTES // 2**20} MiB (about 100,000 labels).", print_exception=False)
        data = Path(label_file).read_bytes()
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise gr.Error(f"The label file is not UTF-8 text (byte {exc.start} is not): save it as UTF-8 and "
                           "upload it again.", print_exception=False) from exc
        if not any(line.strip() and not line.lstrip().startswith("#") for line in text.splitlines()):
            return []
        return parse_labels([io.BytesIO(data)])  # one label a line, as `--labels @FILE`
    if not (typed or "").replace(",", "").strip():
        return []
    return parse_labels(typed or "", read_files=False)
