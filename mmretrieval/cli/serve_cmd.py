"""``mmr serve`` (and ``python app.py``): the Gradio web UI over one collection, on 127.0.0.1 by default."""

from __future__ import annotations

import argparse
import faulthandler
import logging
import os
import signal
import socket
import sys
import threading
import time
from typing import Sequence

from ..errors import MMRError
from .common import say

logger = logging.getLogger(__name__)

STOP_TIMEOUT_S = 60.0  # how long a stopping server waits for an ingest or labelling run to unwind
EXIT_GRACE_S = 20.0  # then for Gradio, the decoding processes and Python's own exit, before it exits regardless
WAKE_S = 0.5  # the serving main thread's sleeps: a signal another thread took is handled within this


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``mmr serve``."""
    from ..ui.server import add_serve_arguments

    parser = subparsers.add_parser(
        "serve", help="serve the web UI (search, zero-shot, labelling, map)",
        description="Serve the web UI over a collection. Without --collection (or $MMR_COLLECTION), serves the "
        "default collection once `mmr ingest` has made it, else builds (once, cached) and serves a demo collection "
        "of generated scenes, so it works offline on a fresh machine.",
    )
    add_serve_arguments(parser)
    parser.add_argument("--demo", action="store_true", help="serve the demo collection even where the default "
                        "collection exists (python app.py always does, without --collection)")
    parser.set_defaults(handler=_serve)


def _serve(args: argparse.Namespace) -> int:
    """``mmr serve``: the default collection where no other is named and it exists (the other commands' rule),
    else the demo."""
    from ..cache import default_collection_dir
    from ..collection.catalog import is_collection

    if args.collection is None and not args.demo and args.data_dir is None:  # (--demo-dir: the demo, there)
        if is_collection(default_collection_dir()):
            args.collection = default_collection_dir()
            say(f"mmr serve: serving the default collection {args.collection} (--demo serves the demo)")
        else:
            say(f"mmr serve: no default collection yet ({default_collection_dir()}; `mmr ingest FOLDER --model "
                "SPEC` makes it): serving the demo")
    elif args.collection is not None and args.demo:
        raise MMRError("--demo serves the demo collection; leave out --collection (or unset $MMR_COLLECTION)")
    return run(args)


def run(args: argparse.Namespace) -> int:
    """Open the collection, build the UI and serve until interrupted."""
    from ..ui.layout import build_app
    from ..ui.server import config_from_args, launch, open_context

    config = config_from_args(args)
    _check_can_listen(config.host, config.port)  # before the demo collection is built, not a minute later
    context = open_context(config)
    app = build_app(context)
    try:
        launch(app, config)
        say(f"serving {context.title} on http://{config.host}:{config.port}")
        wait_for_a_signal()  # Gradio's own wait swallows both
    except KeyboardInterrupt as interrupt:  # Ctrl-C or SIGTERM (Terminated): this process is ending
        exit_by_deadline(STOP_TIMEOUT_S + EXIT_GRACE_S, _exit_status(interrupt))
        raise
    finally:
        context.stopping.set()  # a run in progress starts unwinding now, not after Gradio's 5 s close
        app.close()
        if not context.stop(timeout_s=STOP_TIMEOUT_S):  # an ingest or labelling run is cut short, kept work kept
            logger.warning("a run in progress did not stop within %.0f s; what it committed is kept", STOP_TIMEOUT_S)


def wait_for_a_signal() -> None:
    """Sleep until Ctrl-C or SIGTERM raises here (as KeyboardInterrupt, or Terminated), in short sleeps.

    The kernel may hand a signal to any thread that does not block it (Gradio's, the decoding pool's), and then
    a sleep of the main thread goes on: Python runs the handler only once the main thread wakes. With one sleep of
    an hour, a server sent SIGTERM during an ingest stayed up (one CI run in eight).
    """
    while True:
        time.sleep(WAKE_S)


def _exit_status(interrupt: KeyboardInterrupt) -> int:
    from . import Terminated

    return 128 + (signal.SIGTERM if isinstance(interrupt, Terminated) else signal.SIGINT)


def exit_by_deadline(deadline_s: float, status: int) -> None:
    """Make sure a stopping process ends: if it is still alive ``deadline_s`` from now (a run that missed the
    stop, or a thread or process that Python's exit waits for), print where each thread is on stderr and exit
    with ``status`` at once. What was committed is kept either way: the catalog survives a kill."""
    def expire() -> None:
        say(f"stopping took longer than {deadline_s:.0f} s: exiting now; where each thread was:")
        try:
            faulthandler.dump_traceback(file=sys.__stderr__, all_threads=True)
            sys.__stderr__.flush()
        except (AttributeError, OSError, ValueError):  # no stderr to write to: exit all the same
            pass
        os._exit(status)

    timer = threading.Timer(deadline_s, expire)
    timer.daemon = True  # Python's exit does not wait for it; it waits for Python's exit
    timer.start()


def _check_can_listen(host: str, port: int) -> None:
    """Refuse, naming the cause, a host this machine cannot listen on or a port in use: Gradio reports both as
    "Cannot find empty port in range", after a line about a name it could not resolve."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
        socket.create_server((host, port), family=family).close()  # IPv6 hosts (::1) too
    except OSError as exc:  # an unknown name, an address not on this machine, a port in use
        raise MMRError(f"cannot listen on {host}:{port}: {exc.strerror or exc}; check --host and --port") from None


def main(argv: Sequence[str] | None = None) -> int:
    """``python app.py``: the same options as ``mmr serve``; errors as one readable line, exit status 2."""
    from ..ui.server import add_serve_arguments

    parser = argparse.ArgumentParser(prog="app.py", description=__doc__)
    add_serve_arguments(parser)
    parser.add_argument("-v", "--verbose", action="store_true", help="log details to stderr")
    args = parser.parse_args(argv)
    from . import messages_to_stderr, sigterm_unwinds

    messages_to_stderr(args.verbose, prog="app.py")  # `app.py: warning: ...`, as mmr serve's read `mmr serve: ...`

    try:
        with sigterm_unwinds():
            return run(args)
    except MMRError as exc:
        say(f"app.py: error: {exc}")
        return 2
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM as Terminated
        return _exit_status(exc)
