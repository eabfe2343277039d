"""The exceptions mmretrieval raises. Each message names the bad value and, where there is one, the fix.

Only the CLI and the UI turn these into exit codes or on-screen messages.
"""


class MMRError(Exception):
    """Base class: anything the user can act on."""


class ModelSpecError(MMRError):
    """A model spec that names no loadable model (unknown architecture, missing directory, bad syntax)."""


class ModelNotCachedError(MMRError):
    """The model's weights are not on this machine and cannot be downloaded (offline, or no network)."""


class CheckpointError(MMRError):
    """A checkpoint file that is corrupt, truncated, the wrong shape, or carries code we refuse to run."""


class ImageDecodeError(MMRError):
    """An image that could not be decoded safely. ``reason`` is a short stable code for catalogs and summaries."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


class CollectionError(MMRError):
    """A collection that cannot be opened or written as asked (model mismatch, missing, corrupt beyond repair)."""


class Busy(MMRError):
    """Another process holds the lock on what was asked for (a collection, a model folder): nothing is wrong, try
    again when it is done."""

    holder: str = ""  # the process holding it, as it wrote itself into the lock file ("" when it did not)
    holder_pid: int | None = None  # that process's id


class SegmentFileMissing(CollectionError):
    """A segment file the catalog points at is gone: lost, or deleted by a writer's clean-up after a compaction
    moved its rows, in which case a reader that asks the catalog again finds them (readers retry on it, as on a
    FileNotFoundError). ``filename`` is the file."""

    def __init__(self, filename: str, message: str):
        super().__init__(message)
        self.filename = filename


class CollectionBusy(Busy, CollectionError):
    """Another process holds the collection's writer lock."""


class CatalogFull(CollectionError):
    """The disk holding a catalog is full: the catalog is unharmed, and opens as before once space is freed."""


class QueryError(MMRError):
    """A query that cannot be run: empty, malformed weights, unreadable query image."""


class SettingError(MMRError):
    """A setting out of its range (``TrainConfig(lr=-1)``): ``setting`` is its Python name, ``problem`` the rest of
    the message, so that the command line can name its option instead (``--lr must be ...``)."""

    def __init__(self, setting: str, problem: str):
        super().__init__(f"{setting} {problem}")
        self.setting, self.problem = setting, problem
