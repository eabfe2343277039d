"""``mmr serve`` (and ``python app.py``): the Gradio web UI over one collection, on 127.0.0.1 by default."""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import time
from typing import Sequence

from ..errors import MMRError
from .common import say

logger = logging.getLogger(__name__)

STOP_TIMEOUT_S = 60.0  # how long a stopping server waits for an ingest or labelling run to unwind


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
    if args.collection is None and not args.demo:
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
        while True:  # until Ctrl-C, or SIGTERM (raised here as an exception too): Gradio's own wait swallows both
            time.sleep(3600)
    finally:
        app.close()
        if not context.stop(timeout_s=STOP_TIMEOUT_S):  # an ingest or labelling run is cut short, kept work kept
            logger.warning("a run in progress did not stop within %.0f s; what it committed is kept", STOP_TIMEOUT_S)


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
    from . import Terminated, messages_to_stderr, sigterm_unwinds

    messages_to_stderr(args.verbose, prog="app.py")  # `app.py: warning: ...`, as mmr serve's read `mmr serve: ...`

    try:
        with sigterm_unwinds():
            return run(args)
    except MMRError as exc:
        say(f"app.py: error: {exc}")
        return 2
    except Terminated:
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        return 128 + signal.SIGINT
