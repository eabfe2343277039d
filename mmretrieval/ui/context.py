"""What every handler shares: the open collection, its encoder, and how errors become on-screen messages."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, TypeVar

import gradio as gr

from ..atomic import process_ended
from ..collection.connection import is_corrupt
from ..errors import CollectionBusy, MMRError
from ..models.prompt_templates import TEMPLATE_SETS
from ..models.zeroshot import ZeroShotClassifier
from .media import RecordedFile, ThumbnailCache
from .names import display_path
from .relay import Caught, recorded_warnings, relayed_warnings, repeat
from .toast import ToastError

if TYPE_CHECKING:
    from ..collection.collection import Collection
    from ..models.encoder import DualEncoder

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])


class ServerStopping(MMRError):
    """Raised inside a long run's progress callback once the server is stopping (Ctrl-C, SIGTERM)."""


def check_template_set(templates: str) -> None:
    """Refuse a template set that is not built in: the library would take another name for a file to read, and
    the browser may not read this machine's files.

    Raises:
        gr.Error: an unknown template set.
    """
    if templates not in TEMPLATE_SETS:
        raise gr.Error(f"Unknown template set {templates!r}; pick one of {', '.join(TEMPLATE_SETS)}.",
                       print_exception=False)


def folder_prefix(folder: str | None) -> str | None:
    """The folder filter as a path prefix ending in a separator (``~`` expanded), or None when it is empty.

    Raises:
        gr.Error: a relative path: it would be read against wherever the server was started.
    """
    typed = (folder or "").strip()
    if not typed:
        return None
    prefix = os.path.expanduser(typed)
    if not os.path.isabs(prefix):
        raise gr.Error(f"The folder filter {display_path(typed)!r} is not an absolute path; type a folder as the "
                       "details panel shows paths, e.g. /home/me/photos or ~/photos.", print_exception=False)
    return prefix.rstrip(os.sep) + os.sep


class ClassifierCache:
    """Zero-shot classifiers by (labels, template set): typing the same labels again costs nothing, and gets the
    warnings their build gave (labels longer than the model reads) again."""

    def __init__(self, capacity: int = 32):
        self._items: dict[tuple[tuple[str, ...], str], tuple[ZeroShotClassifier, tuple[Caught, ...]]] = {}
        self._capacity = capacity
        self._lock = threading.Lock()

    def get(self, encoder: "DualEncoder", labels: tuple[str, ...], templates: str) -> ZeroShotClassifier:
        """The classifier for ``labels`` with the built-in template set ``templates``.

        Raises:
            gr.Error: an unknown template set.
        """
        check_template_set(templates)
        key = (labels, templates)
        with self._lock:
            if key in self._items:
                classifier, warned = self._items[key]
                repeat(warned)
                return classifier
            if len(self._items) >= self._capacity:
                self._items.clear()
            with recorded_warnings() as warned:
                classifier = ZeroShotClassifier.build(encoder, labels, TEMPLATE_SETS[templates])
            self._items[key] = (classifier, tuple(warned))
            return classifier


@dataclass
class AppContext:
    """The state one running app serves from. Built once by :func:`mmretrieval.ui.server.open_context`."""

    collection: "Collection"  # the open collection; every image shown comes from its catalog
    encoder: "DualEncoder"  # the collection's model, for zero-shot and query encoding
    title: str = "mmretrieval"  # page title and heading
    example_queries: tuple[str, ...] = ()  # one-click queries on the first screen
    map_labels: tuple[str, ...] = ()  # labels the map is coloured by until the user types others
    allow_ingest: bool = True  # whether the UI may ingest a server folder typed by the user
    allow_labelling: bool = True  # whether the UI may label the collection and remove label sets
    thumbnails: ThumbnailCache = field(default_factory=ThumbnailCache)  # renders of catalog images, by id
    classifiers: ClassifierCache = field(default_factory=ClassifierCache)  # zero-shot label vectors
    # Where originals and exports are placed for Gradio to serve (by catalog id only); old ones are pruned.
    export_dir: Path = field(default_factory=lambda: new_export_dir())
    # Serialises access to the collection: ingest and label write while searches read, from Gradio's threads.
    lock: threading.RLock = field(default_factory=threading.RLock)
    stopping: threading.Event = field(default_factory=threading.Event)  # set by :meth:`stop`: long runs end early
    _writes: threading.Condition = field(default_factory=threading.Condition, repr=False)  # ingest/label runs
    _writing: int = field(default=0, repr=False)

    _noise: Any = field(default=None, repr=False)  # the collection's NoiseCalibration, made on first use

    def noise_calibration(self) -> Any:
        """What unrelated text scores in this collection (for the weak-match hint); measured once, then cached."""
        with self.lock:
            if self._noise is None:
                from ..collection.confidence import NoiseCalibration

                self._noise = NoiseCalibration(self.collection)
            return self._noise

    @contextlib.contextmanager
    def long_write(self) -> Iterator[Callable[[], None]]:
        """Around an ingest or labelling run: yields a check for its progress callback, which raises
        :class:`ServerStopping` once :meth:`stop` was called (the run then unwinds as Ctrl-C unwinds a command:
        what it committed is kept, its decoding processes stop), and lets :meth:`stop` wait for the run to end."""
        def check() -> None:
            if self.stopping.is_set():
                raise ServerStopping("The server is stopping: this run was cut short; what it saved is kept.")

        with self._writes:
            self._writing += 1
        try:
            check()
            yield check
        finally:
            with self._writes:
                self._writing -= 1
                self._writes.notify_all()

    def stop(self, timeout_s: float = 60.0) -> bool:
        """Stop serving work: cut long runs short and wait up to ``timeout_s`` for them, then close the collection
        and remove this run's export folder. Returns whether every run ended in time (if not, the collection is
        left open: a process that exits then loses nothing that was committed)."""
        self.stopping.set()
        with self._writes:
            ended = self._writes.wait_for(lambda: self._writing == 0, timeout=timeout_s)
        if ended:
            self.collection.close()
        shutil.rmtree(self.export_dir, ignore_errors=True)
        return ended

    def image_path(self, image_id: int) -> Path:
        """The file behind catalog id ``image_id`` (the only way the UI finds an image to read)."""
        with self.lock:
            return self.collection.image_path(image_id)

    def recorded_file(self, image_id: int) -> RecordedFile:
        """The file behind catalog id ``image_id`` with the size and time its ingest recorded (for originals,
        served only while they are that file)."""
        with self.lock:
            path = self.collection.image_path(image_id)
            size, mtime_ns, _ = self.collection.catalog.stats_of([image_id])[image_id]
        return RecordedFile(path, size, mtime_ns)


_EXPORT_PREFIX = "mmr-ui-export-"


def new_export_dir() -> Path:
    """A fresh folder in the temporary directory for this server's exports, named by this process's id; the
    folders of servers that ended without removing theirs (killed) are removed first."""
    for folder in Path(tempfile.gettempdir()).glob(f"{_EXPORT_PREFIX}*-*"):
        pid = folder.name[len(_EXPORT_PREFIX):].split("-", 1)[0]
        try:
            left = pid.isdigit() and folder.lstat().st_uid == os.getuid() and process_ended(int(pid))
        except OSError:  # removed meanwhile
            continue
        if left:
            shutil.rmtree(folder, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"{_EXPORT_PREFIX}{os.getpid()}-"))


def user_errors(fn: F) -> F:
    """Turn library errors into a readable :class:`.toast.ToastError` and anything unexpected into a short message.

    A ``gr.Error`` the handler raises becomes a ToastError too (its message escaped, the toast kept until
    closed); the library's warnings become warning toasts (:func:`.relay.relayed_warnings`). The full traceback
    goes to the server log, never to the browser; the server keeps serving.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            with relayed_warnings():
                return fn(*args, **kwargs)
        except ToastError:
            raise  # already escaped (a decorated handler calling another)
        except gr.Error as exc:
            raise ToastError(str(exc.message), title=exc.title) from exc
        except CollectionBusy as exc:  # its message speaks to the command line (mmr ... --wait)
            if exc.holder_pid == os.getpid():
                raise ToastError("This app is writing this collection already (an ingest or labelling run started "
                                 "here). Nothing was changed: try again when it is done.") from exc
            held = f": {exc.holder}" if exc.holder else ""
            raise ToastError(f"Another process is writing this collection (an ingest, import, index build, "
                             f"compaction or labelling run{held}). Nothing was changed here: try again when it is "
                             "done.") from exc
        except MMRError as exc:
            raise ToastError(display_path(str(exc))) from exc  # messages quote paths
        except Exception as exc:  # the UI must survive any request
            logger.exception("%s failed", fn.__name__)
            if is_corrupt(exc):
                raise ToastError("The collection's catalog is damaged (SQLite: database disk image is malformed). "
                                 "`mmr check` on the server names the damage; restore the catalog from a backup."
                                 ) from exc
            raise ToastError(f"Something went wrong in {fn.__name__.replace('_', ' ')} ({type(exc).__name__}). "
                             "The server log has the details.") from exc

    return wrapper  # type: ignore[return-value]
