"""Error messages as the browser shows them: Gradio's error toast, which renders its message as HTML.

A message quotes what the user typed or a file's name (``no label set has label '<img src=…>'``), so it is
HTML-escaped before it reaches the toast; and the toast stays until the user closes it, since a reason
that vanishes after ten seconds (Gradio's default) is easily missed while the results are still on screen.

Handlers decorated with :func:`.context.user_errors` may raise a plain ``gr.Error``: the decorator turns
it into a :class:`ToastError`. Code that runs outside such a handler (argument checks, upload
preprocessing) raises :class:`ToastError` itself.

Warnings go out as toasts too: :mod:`.relay`.
"""

from __future__ import annotations

import html

import gradio as gr


class ToastError(gr.Error):
    """A ``gr.Error`` whose message is escaped for the toast, which stays until closed.

    ``message`` is plain text; it is escaped here, once (the decorator passes a ToastError through as it is,
    so a handler that calls another decorated handler does not escape twice).
    """

    def __init__(self, message: str, title: str = "Error"):
        # quote=False: quotes mean nothing in HTML text, and API callers read the message too.
        super().__init__(html.escape(message, quote=False), duration=None, title=title, print_exception=False)

