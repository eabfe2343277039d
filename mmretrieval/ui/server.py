"""Serving the UI: options shared by ``app.py`` and ``mmr serve``, opening the collection, a safe launch.

Safe by default: binds 127.0.0.1, no share link unless ``--share``, no ``allowed_paths`` (Gradio's file
routes then serve only its own upload and cache dirs), an upload size limit, and folder ingestion from
the browser only while the app is reachable from this machine alone.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from ..errors import MMRError
from ..models.settings import DEVICES, PRECISIONS
from ..progress import TqdmProgress
from ..wording import counted

if TYPE_CHECKING:
    import gradio as gr

    from .context import AppContext

logger = logging.getLogger(__name__)

DEMO_QUERIES = (
    "a red circle",
    "three blue squares",
    "an orange star on a striped background",
    "two small green triangles",
    "a large purple cross",
)
DEMO_MAP_LABELS = ("circle", "square", "triangle", "star", "diamond", "cross")
# Gradio keeps ~270 KB for every browser session (its copy of the page's component configs, and our gr.State:
# the last results, the duplicate groups, the map selection) and by default drops sessions only past 10,000
# (~2.7 GB). 300 (~80 MB) is far more than a small team has open at once; the least recently active session
# goes first, and one that comes back finds its state empty: the handlers then say "search first" (or the like).
SESSION_CAPACITY = 300


@dataclass(frozen=True)
class ServeConfig:
    """How to serve; resolved once from the command line (and ``$MMR_COLLECTION``)."""

    collection: Path | None = None  # collection directory; None builds and serves the demo collection
    model: str | None = None  # model spec; None uses the collection's own (builtin:shapes for the demo)
    device: str = "auto"  # auto, cpu, cuda, cuda:N or mps
    precision: str = "auto"  # the model's number format: auto, fp32 or bf16 (models.precision)
    host: str = "127.0.0.1"  # interface to bind; loopback unless asked
    port: int = 7860  # TCP port
    share: bool = False  # ask Gradio for a public share link
    max_file_size: str = "20mb"  # largest upload Gradio accepts
    examples: tuple[str, ...] = ()  # one-click example queries (the demo has its own; else the labels, if any)
    data_dir: Path | None = None  # where the demo collection is cached; None: $MMR_DEMO_DIR or the user cache
    session_capacity: int = SESSION_CAPACITY  # browser sessions whose state the server keeps
    logins: tuple[tuple[str, str], ...] = ()  # (user, password) pairs that may log in (--auth-file); none: no login
    allowed_hosts: tuple[str, ...] = ()  # Host names a loopback-bound app answers besides loopback ones (a proxy's)


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``app.py`` and ``mmr serve``."""
    parser.add_argument("--collection", type=Path, default=os.environ.get("MMR_COLLECTION") or None,
                        metavar="DIR", help="collection to serve (default: $MMR_COLLECTION; else, for mmr serve, "
                        "the default collection once made; else the demo collection, built once and cached)")
    parser.add_argument("--model", default=None, help="model spec (default: the collection's own; builtin:shapes "
                        "for the demo)")
    parser.add_argument("--device", default="auto", help=f"{DEVICES} (default: auto)")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="the model's number format for queries and ingests from the Collection tab: auto "
                        "(bf16 on CUDA, float32 on CPU), fp32, or bf16 (CPUs with AVX512-BF16 or AMX)")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default: 127.0.0.1, this machine only)")
    parser.add_argument("--port", type=_port, default=7860, help="port (default: 7860)")
    parser.add_argument("--share", action="store_true", help="also publish a public gradio.live link (off by default)")
    parser.add_argument("--auth-file", type=Path, default=None, metavar="FILE",
                        help="ask for a login: FILE holds one USER:PASSWORD a line. With --host or --share, "
                        "labelling from the browser is on only with it (ingesting never is)")
    parser.add_argument("--allowed-host", action="append", default=[], metavar="NAME", dest="allowed_hosts",
                        help="bound to loopback, the app answers only requests addressed to a loopback name (a page "
                        "whose name was rebound to 127.0.0.1 gets 403); also answer those addressed to NAME, the "
                        "name a TLS proxy on this machine passes on (repeatable)")
    parser.add_argument("--max-file-size", type=_file_size, default="20mb",
                        help="largest accepted upload: a whole number and b, kb, mb, gb or tb (default: 20mb)")
    parser.add_argument("--demo-dir", "--data-dir", type=Path, default=None, metavar="DIR", dest="data_dir",
                        help="serve the demo collection, built and cached there (default: $MMR_DEMO_DIR, else the "
                        "user cache directory, e.g. ~/.cache/mmretrieval/demo); not with --collection. "
                        "(--data-dir is its old name; $MMR_DATA_DIR is another thing: where the default collection "
                        "lives)")
    parser.add_argument("--example", action="append", default=[], metavar="QUERY", dest="examples",
                        help="an example query for the first screen (repeatable; default: the demo's examples, "
                        "or the collection's labels)")


def _port(text: str) -> int:
    """An argparse type: a TCP port number."""
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number from 0 to 65535, got {text}")
    return int(text)


def _file_size(text: str) -> str:
    """An argparse type: a size as Gradio reads it ("20mb", "1 gb")."""
    if not re.fullmatch(r"\d+\s*[kmgt]?b", text.strip(), flags=re.IGNORECASE):
        raise argparse.ArgumentTypeError(f"must be a whole number and b, kb, mb, gb or tb (e.g. 20mb), got {text!r}")
    return text.strip()


def config_from_args(args: argparse.Namespace) -> ServeConfig:
    """The :class:`ServeConfig` that parsed arguments describe."""
    return ServeConfig(
        collection=Path(args.collection).expanduser() if args.collection else None,
        model=args.model, device=args.device, precision=args.precision, host=args.host, port=args.port,
        share=args.share, max_file_size=args.max_file_size, examples=tuple(args.examples),
        data_dir=Path(args.data_dir).expanduser() if getattr(args, "data_dir", None) else None,
        logins=read_logins(Path(args.auth_file).expanduser()) if getattr(args, "auth_file", None) else (),
        allowed_hosts=tuple(name.strip().strip("[]").lower().rstrip(".")
                            for name in getattr(args, "allowed_hosts", ())),
    )


def read_logins(auth_file: Path) -> tuple[tuple[str, str], ...]:
    """The ``(user, password)`` pairs of an ``--auth-file``: one ``USER:PASSWORD`` a line, the user name trimmed,
    the password everything after the first ``:`` as it is (spaces included); blank lines and lines starting with
    ``#`` are skipped, and a UTF-8 byte-order mark (Notepad's) is not part of the first name.

    Raises:
        MMRError: the file cannot be read, a line has no ``:`` or an empty user or password, a user is named
            twice, or no login is given.
    """
    try:
        with open(auth_file, encoding="utf-8-sig") as opened:
            text, mode = opened.read(), os.fstat(opened.fileno()).st_mode
    except (OSError, UnicodeDecodeError) as exc:
        raise MMRError(f"cannot read the --auth-file {auth_file}: {getattr(exc, 'strerror', None) or exc}") from None
    logins: dict[str, str] = {}
    for number, line in enumerate(text.split("\n"), 1):  # not splitlines(): a password may hold \x85 or \x0c
        line = line.removesuffix("\r")
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        user, colon, password = line.partition(":")
        if not colon or not user.strip() or not password:
            raise MMRError(f"{auth_file} line {number}: expected USER:PASSWORD (neither empty)")
        if user.strip() in logins:
            raise MMRError(f"{auth_file} line {number}: {user.strip()!r} is named twice; keep one of its lines")
        logins[user.strip()] = password
    if not logins:
        raise MMRError(f"{auth_file} holds no USER:PASSWORD line: nobody could log in")
    if mode & 0o077:
        logger.warning("%s can be read by other users of this machine: chmod 600 it", auth_file)
    return tuple(logins.items())


def is_local_only(config: ServeConfig) -> bool:
    """True when only this machine can reach the app (loopback bind, no share link)."""
    if config.share:
        return False
    if config.host == "localhost":
        return True
    try:
        return ipaddress.ip_address(config.host).is_loopback
    except ValueError:
        return False


def open_context(config: ServeConfig) -> "AppContext":
    """Open (or, for the demo, build then open) the collection the config names, with its encoder.

    Raises:
        MMRError: the collection or the model cannot be opened.
    """
    from ..collection.collection import Collection
    from ..models.encoder import load_encoder
    from .context import AppContext
    from .names import display_path

    is_demo = config.collection is None
    directory = config.collection
    if not is_demo and config.data_dir is not None:
        raise MMRError(f"--demo-dir is where the demo collection is built and cached; leave it out to serve "
                       f"{display_path(directory)}, or leave out --collection (or $MMR_COLLECTION) to serve the demo")
    if is_demo:
        from ..demo import DemoConfig, ensure_demo_collection

        demo = DemoConfig(model=config.model or DemoConfig.model)
        directory = ensure_demo_collection(config.data_dir, demo, device=config.device, progress=_DemoProgressBars())
    encoder = load_encoder(config.model, device=config.device, precision=config.precision) if config.model else None
    collection = Collection.open(directory, model=encoder, create=encoder is not None, device=config.device,
                                 precision=config.precision)
    encoder = encoder or collection.encoder  # loads the model the collection was built with
    collection.load_index()  # now, not on the first user's search
    labels = tuple(collection.info().labels)
    return AppContext(
        collection=collection,
        encoder=encoder,
        title="mmretrieval demo: generated shapes" if is_demo else f"mmretrieval: {display_path(directory)}",
        # a stored label as a query is its text: a SET: prefix would be searched for as words
        example_queries=config.examples or (DEMO_QUERIES if is_demo else tuple(dict.fromkeys(
            label.split(":", 1)[-1] for label in labels))[:5]),
        map_labels=DEMO_MAP_LABELS if is_demo else (),  # others: the map shows the stored labels
        allow_ingest=is_local_only(config),
        allow_labelling=is_local_only(config) or bool(config.logins),
    )


def launch(app: "gr.Blocks", config: ServeConfig) -> tuple[str, int]:
    """Start the server with the safe settings; returns ``(host, port)`` actually bound, once it is up.

    The caller waits (``mmr serve`` does, until Ctrl-C or SIGTERM): Gradio's own wait swallows both signals.
    """
    logins = list(config.logins) or None
    if not is_local_only(config):
        where = f"{config.host}{' with a public share link' if config.share else ''}"
        if logins is None:
            logger.warning("serving on %s: anyone who can reach it can search this collection and see its images; "
                           "labelling and ingesting from the browser are off (--auth-file asks for a login and "
                           "lets those who log in label)", where)
        else:
            logger.warning("serving on %s: those who log in (%s) can search and label this collection; "
                           "ingesting from the browser is off", where, counted(len(logins), "login"))
    from .page_style import PAGE_CSS, PAGE_JS, theme

    app.queue(default_concurrency_limit=2, max_size=64)
    app.launch(
        server_name=config.host,
        server_port=config.port,
        share=config.share,
        allowed_paths=[],  # serve no folder: images go out as server-side renders in Gradio's cache
        max_file_size=config.max_file_size,
        show_error=False,  # only our own readable gr.Error messages reach the browser
        prevent_thread_lock=True,
        inbrowser=False,
        quiet=not config.share,  # the command line prints the local address; Gradio prints the share link
        footer_links=["api"],
        theme=theme(), css=PAGE_CSS, js=PAGE_JS,  # readable buttons, phones, focus rings, live regions
        state_session_capacity=config.session_capacity,
        auth=logins,
        app_kwargs={"middleware": _loopback_host_only(config)},
    )
    return config.host, app.server_port


_LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


def _loopback_host_only(config: ServeConfig) -> list[Any]:
    """The middleware of a loopback-only app: only requests addressed to a loopback name (or the bound address)
    are answered. A page on another site whose name was rebound to 127.0.0.1 sends its own Host header (DNS
    rebinding); with ``--auth-file`` it could still try passwords, so this holds with a login too. A TLS proxy on
    this machine that passes its own Host on is named with ``--allowed-host``."""
    if not is_local_only(config):
        return []
    from starlette.middleware import Middleware

    return [Middleware(_HostCheck, allowed=_LOOPBACK_NAMES | {config.host, *config.allowed_hosts})]


class _HostCheck:
    """ASGI middleware: a request whose Host header names another host gets 403 (a websocket is closed)."""

    def __init__(self, app: Any, allowed: frozenset[str]):
        self.app, self.allowed = app, allowed

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket") and _host_name(scope) not in self.allowed:
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
                return
            await send({"type": "http.response.start", "status": 403,
                        "headers": [(b"content-type", b"text/plain; charset=utf-8")]})
            await send({"type": "http.response.body",
                        "body": b"this app answers only requests addressed to this machine by a loopback name "
                                b"(mmr serve --allowed-host NAME adds a name, such as a proxy's)\n"})
            return
        await self.app(scope, receive, send)


def _host_name(scope: dict[str, Any]) -> str:
    """The host name of a request's Host header, without its port ("" when there is none or it is malformed)."""
    host = dict(scope.get("headers") or ()).get(b"host", b"").decode("latin-1")
    try:
        return urlsplit("//" + host).hostname or ""
    except ValueError:  # an unclosed IPv6 bracket
        return ""


class _DemoProgressBars:
    """tqdm bars on stderr for the demo build, one per stage (writing scenes, ingesting them)."""

    def __init__(self) -> None:
        self._bars: dict[str, TqdmProgress] = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        if stage not in self._bars:
            what = "writing demo scenes" if stage == "scenes" else "embedding demo scenes"
            self._bars[stage] = TqdmProgress(what)
        self._bars[stage](done, total)
        if done >= total:
            self._bars[stage].__exit__(None, None, None)
