"""The ``mmr`` command line. Each command group lives in its own module and registers its subparsers here.

Results go to stdout (TSV, or JSON lines with ``--json``); progress, logs and errors go to stderr.
Library errors (:class:`~mmretrieval.errors.MMRError`) become a one-line message and exit status 2.
"""

from __future__ import annotations

import argparse
import atexit
import errno
import functools
import importlib.metadata
import logging
import os
import resource
import shutil
import signal
import sys
import tempfile
import threading
import traceback
import warnings
from contextlib import contextmanager, suppress
from typing import Iterator, NoReturn, Sequence

from ..collection.connection import is_corrupt
from ..errors import Busy, MMRError
from ..json_lines import one_line
from . import (collection_cmds, duplicates_cmd, export_cmd, import_cmd, ingest_cmd, model_cmds, search_cmds, serve_cmd,
               upkeep_cmds)
from .common import collection_or_default, named_collection, say
from .streams import ResultsNotWritten, guarded_streams, reader_left, silence_stdout

_COMMAND_MODULES = (model_cmds, ingest_cmd, search_cmds, upkeep_cmds, collection_cmds, duplicates_cmd, import_cmd,
                    export_cmd, serve_cmd)
# What is kept when a command's results cannot be written to stdout: the work it committed before printing them.
_KEPT_WHEN_STDOUT_FAILS = {**dict.fromkeys(("ingest", "import", "index", "compact", "label"),
                                           "; the collection keeps what this run saved"),
                           "export": "; the export folder is complete"}
# Commands that decode images in this process (its workers silence the same warning themselves)
_DECODING_COMMANDS = frozenset({"ingest", "classify", "search", "similar", "serve"})
EXIT_BUSY = 75  # EX_TEMPFAIL: another process holds the collection's (or --out's) lock; try again later
_DASH_HINT = "; a query or path that starts with '-' goes at the end, after '--'"
# rclip's options that people type out of habit (-t/--top, -f/--filepath-only, -p/--preview, -n/--no-indexing),
# and what does their job here.
_PEER_OPTIONS = {"-t": "use -k N, the number of results",
                 "-f": "use --null, the paths alone (each ended by NUL, for xargs -0)",
                 "-p": "use mmr serve (previews in the browser)",
                 "-n": "leave it out: mmr search never indexes (mmr ingest does, when run)"}
_PEER_OPTIONS.update({"--top": _PEER_OPTIONS["-t"], "--filepath-only": _PEER_OPTIONS["-f"],
                      "--preview": _PEER_OPTIONS["-p"], "--no-indexing": _PEER_OPTIONS["-n"],
                      # rclip's query algebra: `mmr search "red circle" + ./x.png - blue`
                      "+": "use --image IMG to add an image (weights: '2:term')", "-": "use --not TEXT_OR_IMG"})


def _taken_for_an_option(arg: str) -> bool:
    """Whether argparse probably took a query or a file name for an option: ``-x.png``, ``-circle``, and
    ``--x.png`` or any ``--name`` that exists on disk (``--labels=a.txt`` is an option's value, not a name)."""
    if not arg.startswith("-") or arg in ("-", "--"):
        return False
    if not arg.startswith("--"):
        return len(arg) > 2  # -k, -v are options; -x.png, -circle are not
    has_extension = "=" not in arg and os.path.splitext(arg)[1] not in ("", ".")
    return has_extension or os.path.lexists(arg)


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors, as every other ``mmr`` error (the usage block is left to ``--help``)."""

    argv: Sequence[str] = ()  # the arguments being parsed, for the hints of the subcommands' parsers

    def error(self, message: str) -> NoReturn:
        if message.startswith("the following arguments are required:"):
            missing = message.split(":", 1)[1].split(", ")
            dashed = any(_taken_for_an_option(arg) for arg in _Parser.argv)
            if dashed and any(not name.strip().startswith("-") for name in missing):  # '-x.png' taken for an option
                message += _DASH_HINT
        elif message.endswith("expected one argument"):  # `--near -33.8,151.2,10`: the value looks like an option
            option = message.split()[1].rstrip(":").split("/")[-1]
            message += f"; a value that starts with '-' is given as {option}=VALUE (e.g. --near=-33.86,151.21,10)"
        self.exit(2, one_line(f"{self.prog}: error: {message} (see {self.prog} --help)") + "\n")

    def parse_args(self, args: Sequence[str] | None = None,  # type: ignore[override]
                   namespace: argparse.Namespace | None = None) -> argparse.Namespace:
        """argparse's, but an unknown argument is reported by the command it was given to, and one that starts
        with '-' gets the way to pass it as a query or path."""
        _Parser.argv = list(sys.argv[1:] if args is None else args)
        parsed, unknown = self.parse_known_args(args, namespace)
        if unknown:
            command = getattr(parsed, "command", None)
            prog = f"{self.prog} {command}" if command else self.prog
            named = any((arg.startswith("-") and not arg.startswith("--")) or _taken_for_an_option(arg)
                        for arg in unknown)
            hint = _DASH_HINT if named else ""  # not for --an-option
            habits = [arg if arg in _PEER_OPTIONS else arg[:2] for arg in unknown
                      if arg in _PEER_OPTIONS or (not arg.startswith("--") and arg[:2] in _PEER_OPTIONS)]  # -t5
            if habits and command in ("search", "similar"):
                hint = "; " + "; ".join(f"for {arg} (as in rclip) {_PEER_OPTIONS[arg]}" for arg in habits)
            elif command == "search" and not named and not any(arg.startswith("-") for arg in unknown):
                files = any(os.path.lexists(arg) for arg in unknown)  # mmr search a.jpg b.jpg; red circle
                hint = ("; an example image is given with --image IMG" if files else
                        "; a query of several words is quoted, as in mmr search 'a red circle'")
            line = f"{prog}: error: unrecognized arguments: {' '.join(unknown)}{hint} (see {prog} --help)"
            self.exit(2, one_line(line) + "\n")
        return parsed


EPILOG = """\
Results go to stdout (TSV, or JSON lines with --json); progress and messages to stderr.
--collection defaults to $MMR_COLLECTION, else the default collection (~/.local/share/mmretrieval/collection on
Linux; $MMR_DATA_DIR moves it), which ingest and import make. A query or path that starts with '-' goes last, after '--'.

exit status:
  0    done
  1    nothing found (search, similar, duplicates; an ingest or classify that found no image); check: damage found
  2    an error, in one line on stderr (bad input, a missing file, a model mismatch)
  75   another process is writing the collection (or train's --out): run again when it is done (a collection
       writer may be given --wait instead)
  130  interrupted (Ctrl-C); 143: terminated (SIGTERM). An interrupted ingest or import resumes when run again.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="mmr",
        description="Multimodal image-text retrieval: index image collections, search them with text or "
        "images, and label them zero-shot with CLIP/SigLIP models.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log details to stderr")
    parser.add_argument("--version", action="version", version=f"mmr {_version()}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in _COMMAND_MODULES:
        module.register(subparsers)
    for command in subparsers.choices.values():  # `mmr search -v ...` as well as `mmr -v search ...`
        command.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                             help="log details to stderr")
    return parser


def _version() -> str:
    try:
        return importlib.metadata.version("mmretrieval")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "(not installed)"


def _ours(record: logging.LogRecord) -> bool:
    return record.name == "mmretrieval" or record.name.startswith("mmretrieval.")


class _QuietThirdParty(logging.Filter):
    """Our own warnings always; other libraries' logs (open_clip's "initialized randomly", its download
    errors that our own error message already explains) only with -v."""

    def __init__(self, verbose: bool):
        super().__init__()
        self.verbose = verbose

    def filter(self, record: logging.LogRecord) -> bool:
        return _ours(record) or self.verbose or record.levelno >= logging.CRITICAL


class _OneLineFormatter(logging.Formatter):
    """A log record on one line, whatever the file names in it hold (a traceback under -v is kept). Our own
    warnings and errors read as every other message of the command does (``mmr label: warning: ...``, ``mmr label:
    error: ...``); the details -v adds and other libraries' records keep their level and logger's name."""

    def __init__(self, prog: str):
        super().__init__("%(levelname)s %(name)s: %(message)s")
        self.prog = prog

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        if _ours(record) and record.levelno >= logging.WARNING:
            kind = "error" if record.levelno >= logging.ERROR else "warning"
            return one_line(f"{self.prog}: {kind}: {record.message}")
        return one_line(super().formatMessage(record))


def _log_to_stderr(verbose: bool, prog: str = "mmr") -> None:
    """Log to stderr, one line a record, our warnings as ``PROG: warning: ...`` (``prog``: ``mmr label``,
    ``app.py``)."""
    # One handler on the root logger, replaced on each call (tests run main() many times in one process);
    # logger levels are left alone except with -v, so callers' own logging setup keeps working.
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "_mmr_cli", False)]:
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLineFormatter(prog))
    handler.setLevel(logging.INFO if verbose else logging.WARNING)
    handler.addFilter(_QuietThirdParty(verbose))
    handler._mmr_cli = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    if verbose:
        root.setLevel(logging.INFO)


def messages_to_stderr(verbose: bool, prog: str) -> None:
    """Send logged records (our own always, others' with ``verbose``) and Python warnings to stderr, one line
    each, our warnings and errors as ``PROG: warning: ...`` and ``PROG: error: ...`` like the command's other
    messages.

    Args:
        verbose: log INFO too, and other libraries' records (``-v``).
        prog: what names the messages: ``mmr label``, ``app.py``.
    """
    _log_to_stderr(verbose, prog)
    warnings.showwarning = functools.partial(_show_warning, prog=prog)


def _show_warning(message, category, filename, lineno, file=None, line=None,  # noqa: ANN001
                  prog: str = "mmr") -> None:
    # Warnings are for the user here (e.g. an untrained --dim): one line, no source location, the command named.
    say(f"{prog}: warning: {message}")


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, ``docker stop``, a job scheduler), unwound as Ctrl-C is: decoding workers stopped, shared
    memory unlinked, temporary files removed, the writer lock released."""


@contextmanager
def sigterm_unwinds() -> Iterator[None]:
    """Raise :class:`Terminated` in the main thread on SIGTERM while the command runs (Python's default dies
    on the spot, leaving the decoding pool's shared memory to the resource tracker's warnings)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum: int, frame: object) -> None:
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``mmr``; returns the exit status (0 ok, 1 nothing found, 2 error, 75 another process is
    writing the collection or --out, 130 interrupted, 143 terminated)."""
    with guarded_streams():
        return _run(argv)


def command() -> None:
    """``mmr`` as a program (the console script, ``python -m mmretrieval``): :func:`main`, then the interpreter's
    exit, which a Ctrl-C ends at once, quietly, with the command's status. Pressed as a finished command's summary
    appeared, it met the exit handlers (torch's, multiprocessing's) and printed a ``KeyboardInterrupt`` traceback
    under the summary; ignored, it could not stop an exit that hangs (a thread on a dead network share). The last
    exit handler ignores SIGINT: the interpreter then puts the default action back in place of a Python handler,
    which killed the process with status 130 and no message after a command had finished and said so."""
    atexit.register(_ignore_sigint)  # registered first, so it runs last (exit handlers run in reverse order)
    status = main()
    for stream in (sys.stdout, sys.stderr):
        with suppress(Exception):  # (a closed pipe was dealt with by main)
            stream.flush()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, lambda signum, frame: os._exit(status))  # the work is done, its output out
    sys.exit(status)


def _ignore_sigint() -> None:
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # (the interpreter leaves SIG_IGN as it is)


def _run(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    messages_to_stderr(verbose=args.verbose, prog=f"mmr {args.command}")
    try:
        with sigterm_unwinds():
            if args.command in _DECODING_COMMANDS:
                from ..images.decode import quiet_pillow_size_warning

                quiet_pillow_size_warning()  # our limit decides: a 108 MP phone photo is no attack
            # torch's note on a checkpoint's pickle protocol: our error says what is wrong with a file it cannot load
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            collection_or_default(args)
            return int(args.handler(args) or 0)
    except Busy as exc:
        say(f"mmr {args.command}: {exc}")
        return EXIT_BUSY
    except MMRError as exc:
        say(f"mmr {args.command}: error: {named_collection(str(exc), args)}")
        return 2
    except ResultsNotWritten as exc:
        kept = _KEPT_WHEN_STDOUT_FAILS.get(args.command, "")
        say(f"mmr {args.command}: error: cannot write the results to stdout: {exc.reason}{kept}")
        return 2
    except Terminated:
        say(f"mmr {args.command}: terminated (SIGTERM)")
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        say(f"mmr {args.command}: interrupted")
        return 130
    except BrokenPipeError as exc:
        if reader_left():  # `mmr search ... | head` closed the pipe: not an error
            silence_stdout()
            return 0
        return _unexpected(exc, args)
    except Exception as exc:
        return _unexpected(exc, args)


def _unexpected(exc: Exception, args: argparse.Namespace) -> int:
    """A bug or an input we did not foresee: still one line, with what the machine says of it (a full disk, too
    few file descriptors), the details on request."""
    if args.verbose:  # the traceback, and still status 2: 1 means "nothing found" to scripts
        traceback.print_exception(exc, file=sys.stderr)
        say(f"mmr {args.command}: error: {type(exc).__name__}: {exc}{_circumstances(exc, args)}")
        return 2
    say(f"mmr {args.command}: error: {type(exc).__name__}: {exc}{_circumstances(exc, args)} "
        "(run with -v for details)")
    return 2


LOW_DISK_BYTES = 64 * 2**20  # below this much free space, a failure is most likely the full disk's


def _circumstances(exc: Exception, args: argparse.Namespace) -> str:
    """What about this machine probably caused ``exc``: a nearly full disk where the command writes (the
    collection's, --out's, the temporary folder SQLite and Python use), or the open-file limit."""
    if is_corrupt(exc):
        return ("; the collection's catalog is damaged: `mmr check` names the damage, and the catalog is restored from "
                "a backup (README: Backups)")
    if isinstance(exc, OSError) and exc.errno == errno.EMFILE:
        limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        return (f"; this process may open only {limit} files: raise the limit (ulimit -n 4096) or lower --workers, "
                "then run again (an interrupted ingest resumes)")
    folders = [getattr(args, name, None) for name in ("collection", "out")] + [tempfile.gettempdir()]
    for folder in filter(None, folders):
        existing = os.path.abspath(os.path.expanduser(folder))
        while not os.path.isdir(existing) and existing != os.path.dirname(existing):
            existing = os.path.dirname(existing)
        try:
            free = shutil.disk_usage(existing).free
        except OSError:
            continue
        if free < LOW_DISK_BYTES:  # (measured now: a new collection that failed so is removed, its space freed)
            kept = ("what was committed is kept" if existing == os.path.abspath(os.path.expanduser(folder))
                    else f"{folder} was not kept")
            return (f"; the disk holding {existing} has {free / 2**20:.1f} MB free now: free some space and run again "
                    f"({kept})")
    return ""


if __name__ == "__main__":
    command()
