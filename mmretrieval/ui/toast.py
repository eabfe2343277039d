"""Error messages as the browser shows them: Gradio's error toast, which renders its message as HTML.

A message quotes what the user typed or a file's name (``no label set has label '<img src=…>'``), so it is
HTML-escaped before it reaches the toast; and the toast stays until the user closes it, since a reason
that vanishes after ten seconds (Gradio's default) is easily missed while the results are still on screen.

Handlers decorated with :func:`.context.user_errors` may raise a plain ``gr.Error``: the decorator turns
it into a :class:`ToastError`. Code that runs outside such a handler (argument checks, upload
preprocessing) raises :class:`ToastError` itself.

Warnings the library gives while a handler runs (labels merged because they differ only in case, labels longer
than the model reads) are shown to the user who caused them, as warning toasts (:func:`relayed_warnings`), not
only written to the server log.
"""

from __future__ import annotations

import contextlib
import html
import threading
import warnings
from typing import Any, Iterator

import gradio as gr

_relay = threading.local()  # .messages: the warnings of the handler running on this thread, while it runs
_hook_lock = threading.Lock()


class ToastError(gr.Error):
    """A ``gr.Error`` whose message is escaped for the toast, which stays until closed.

    ``message`` is plain text; it is escaped here, once (the decorator passes a ToastError through as it is,
    so a handler that calls another decorated handler does not escape twice).
    """

    def __init__(self, message: str, title: str = "Error"):
        # quote=False: quotes mean nothing in HTML text, and API callers read the message too.
        super().__init__(html.escape(message, quote=False), duration=None, title=title, print_exception=False)


@contextlib.contextmanager
def relayed_warnings() -> Iterator[None]:
    """Show the warnings issued on this thread while the block runs as warning toasts, to this request's user.

    Gradio runs each request's handler on a thread of its own, so a thread-local list keeps one user's warnings
    from another's (``warnings.catch_warnings`` would swap process-wide state under concurrent requests). Our
    warnings are shown every time, not once per place in the code as Python's default is: the next user who
    types the same labels needs the same warning.
    """
    _install_hook()
    outer = getattr(_relay, "messages", None)
    if outer is not None:  # a handler called from another: the outer one shows them
        yield
        return
    _relay.messages = []
    try:
        yield
    finally:
        messages, _relay.messages = _relay.messages, None
    for message in dict.fromkeys(messages):  # once each, in order
        gr.Warning(html.escape(message, quote=False), duration=None)


def _install_hook() -> None:
    """Route warnings through :func:`_show` (once per process) and show ours always."""
    with _hook_lock:
        if getattr(warnings.showwarning, "_mmr_relay", False):
            return
        shown = warnings.showwarning

        def _show(message: Warning | str, category: type[Warning], filename: str, lineno: int, file: Any = None,
                  line: str | None = None) -> None:
            messages = getattr(_relay, "messages", None)
            if messages is None:
                shown(message, category, filename, lineno, file, line)
            else:
                messages.append(str(message))

        _show._mmr_relay = True  # type: ignore[attr-defined]
        warnings.showwarning = _show
        warnings.filterwarnings("always", category=UserWarning, module=r"mmretrieval(\.|$)")
