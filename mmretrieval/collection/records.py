"""The records a collection hands out: search hits, failures, and what ``mmr info`` shows."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class Hit:
    """One search result."""

    id: int  # catalog id (stable for the life of the file in the collection)
    path: str  # absolute path of the image file
    score: float  # cosine similarity to the query, in [-1, 1]; from labelled(): the probability; browse(): NaN
    labels: tuple[str, ...] = ()  # zero-shot labels assigned by `label`, best first
    caption: str | None = None  # caption from a CSV list file, if any


@dataclass(frozen=True)
class Failure:
    """A file that did not embed."""

    path: str
    reason: str  # short stable code, e.g. truncated, not_an_image, not_regular_file
    message: str


@dataclass(frozen=True)
class CollectionInfo:
    """What ``mmr info`` shows."""

    directory: str
    model_spec: str  # the spec the collection was built with
    model_key: str  # fingerprint of the model identity
    dim: int
    counts: dict[str, int]  # status -> rows (ok, failed, skipped, pending)
    vectors: int
    index_type: str
    index_params: dict[str, int]
    index_vectors: int
    generation: int  # catalog generation the index reflects
    index_recall: float | None = None  # recall@10 measured on held-out queries when tuned (None: not measured)
    index_memory: int = 0  # estimated resident bytes of the index
    index_saved: bool = True  # False: the saved index is older; the next writer command saves it
    vector_dtype: str = ""  # float16 | float32 (segments)
    segments: int = 0  # segment files
    stored_rows: int | None = 0  # rows in segment files, live or dead (None: a segment file is gone)
    waste_ratio: float | None = 0.0  # dead share of stored rows; `mmr compact` reclaims it (None: as above)
    catalog_free_bytes: int = 0  # free pages in the catalog (removed label sets...); `mmr compact` gives them back
    imported: dict[str, int] = field(default_factory=dict)  # source of committed segments -> rows
    bytes_on_disk: dict[str, int] = field(default_factory=dict)  # file name -> bytes
    label_sets: dict[str, int] = field(default_factory=dict)  # label set -> labels it was run with
    labels: dict[str, int] = field(default_factory=dict)  # label -> images
    drives: dict[str, str] = field(default_factory=dict)  # folder an ingest found a drive mounted at -> "mounted" or
    # "not mounted" now (a prune keeps the images under one that is not: ingest/mounts.py)

    def to_dict(self) -> dict:
        return asdict(self)
