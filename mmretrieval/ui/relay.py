"""Our warnings, shown to the web user whose request caused them: labels merged because they differ only in case
or Unicode form, labels longer than the model reads. Printed to the server log they reached no one who could act.

Gradio runs each request's handler on a thread of its own, so the warnings of the handler running on a thread are
collected in a thread-local list (``warnings.catch_warnings`` would swap process-wide state under concurrent
requests) and shown as warning toasts when it ends, beside its error if it fails. Only ``UserWarning``s issued from
this package's code are taken: what other libraries warn about (Pillow on a photo's EXIF, numpy) stays in the
server log, as before. Ours are shown every time, not once per place in the code as Python's default is, since the
next user who types the same labels needs the same warning; a filter set by the operator (``-W ignore``) still wins.
"""

from __future__ import annotations

import contextlib
import html
import logging
import os
import threading
import warnings
from dataclasses import dataclass
from typing import Any, Iterator

import gradio as gr

logger = logging.getLogger(__name__)

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep  # .../mmretrieval/
_local = threading.local()  # .caught: the warnings of the handler running on this thread, while it runs
_hook_lock = threading.Lock()


@dataclass(frozen=True)
class Caught:
    """One warning, as ``warnings.showwarning`` is handed it."""

    message: str
    category: type[Warning]
    filename: str
    lineno: int


@contextlib.contextmanager
def relayed_warnings() -> Iterator[None]:
    """Show our warnings issued on this thread while the block runs as warning toasts, to this request's user, even
    when the block raises. Outside a queued event (a direct call, Gradio's ``/run`` routes) they go to the log."""
    _install_hook()
    if getattr(_local, "caught", None) is not None:  # a handler called from another: the outer one shows them
        yield
        return
    _local.caught = []
    try:
        yield
    finally:
        caught, _local.caught = _local.caught, None
        _emit(caught)


@contextlib.contextmanager
def recorded_warnings() -> Iterator[list[Caught]]:
    """The warnings relayed while the block runs, for a cache to :func:`repeat` when it serves the same result
    again without running the code that warned. Empty when nothing is being relayed."""
    caught = getattr(_local, "caught", None)
    start = len(caught) if caught is not None else 0
    recorded: list[Caught] = []
    try:
        yield recorded
    finally:
        if caught is not None:
            recorded.extend(caught[start:])


def repeat(recorded: list[Caught] | tuple[Caught, ...]) -> None:
    """Relay warnings recorded earlier (:func:`recorded_warnings`) to the request running on this thread."""
    caught = getattr(_local, "caught", None)
    if caught is not None:
        caught.extend(recorded)


def _emit(caught: list[Caught]) -> None:
    from gradio.context import LocalContext

    unique = list(dict.fromkeys(caught))  # once each, in order
    if LocalContext.event_id.get(None) is None:  # no user to show them to: gr.Warning would only warn again
        for warning in unique:
            _PREVIOUS[0](warning.message, warning.category, warning.filename, warning.lineno)
        return
    for warning in unique:
        gr.Warning(html.escape(warning.message, quote=False), duration=None)


_PREVIOUS: list[Any] = []  # the showwarning that was in place before ours (the CLI's, or Python's)


def _install_hook() -> None:
    """Route warnings through :func:`_show` (once per process) and show ours always."""
    with _hook_lock:
        if getattr(warnings.showwarning, "_mmr_relay", False):
            return
        _PREVIOUS[:] = [warnings.showwarning]
        warnings.showwarning = _show
        warnings.filterwarnings("always", category=UserWarning, module=r"mmretrieval(\.|$)", append=True)


def _show(message: Warning | str, category: type[Warning], filename: str, lineno: int, file: Any = None,
          line: str | None = None) -> None:
    caught = getattr(_local, "caught", None)
    ours = issubclass(category, UserWarning) and os.path.abspath(filename).startswith(_PACKAGE_DIR)
    if caught is None or not ours:
        _PREVIOUS[0](message, category, filename, lineno, file, line)
    else:
        caught.append(Caught(str(message), category, filename, lineno))


_show._mmr_relay = True  # type: ignore[attr-defined]
