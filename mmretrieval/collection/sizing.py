"""Which index for how many vectors under how much memory: :class:`IndexConfig`, :class:`IndexPolicy`,
:func:`choose_config` and the memory each type needs.

Size bands (thresholds are :class:`IndexPolicy` fields, so tests can lower them):

- below ``flat_below`` (50,000): ``flat``, exact (``IndexFlatIP``), 4·d bytes a vector;
- up to ``pq_from`` (2 M): ``ivf``, ``IVF{nlist},SQfp16``, 2·d + 8 bytes a vector, as long as that fits the
  memory budget;
- above, or whenever IVF would not fit: ``ivfpq``, ``OPQ{m}_{min(4m, d)},IVF{nlist}_HNSW32,PQ{m}``: m + 8 bytes
  a vector (136 at m = 128, the most: d / 4), its top candidates re-ranked exactly from the memory-mapped
  segments;
- ``hnsw`` (``HNSW{m},Flat``) only on request.

Memory at 10 M x 512 (estimates from :func:`estimate_bytes`, what ``mmr info`` reports as ``index_memory``):
flat 20.5 GB, ivf 10.3 GB, ivfpq (m=128) 1.36 GB + coarse quantizer and rotation 0.01 GB: with the default
budget (a quarter of RAM, 6 GB on a 24 GB machine) 10 M vectors get ``ivfpq`` with m = 128; 100 M get m = 32.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass

from ..errors import CollectionError

INDEX_TYPES = ("flat", "ivf", "hnsw", "ivfpq")
# The parameters each index type reads ("auto" may pick any type); another type's are refused, not ignored
INDEX_PARAMS = {"flat": (), "ivf": ("nlist", "nprobe", "rerank"), "ivfpq": ("nlist", "nprobe", "pq_m", "rerank"),
                "hnsw": ("hnsw_m", "ef_search")}
INDEX_PARAMS["auto"] = tuple(dict.fromkeys(name for names in INDEX_PARAMS.values() for name in names))
AUTO_ANN_THRESHOLD = 50_000  # below this many vectors exact search is fast enough (~10 ms on 2 cores)
PQ_THRESHOLD = 2_000_000  # from this many vectors compressed codes (ivfpq) are the automatic choice
MIN_IVF_VECTORS = 256  # fewer than this: IVF is not worth training (and cannot be over 0 vectors); flat instead
OPQ_MIN_VECTORS = 20_000  # OPQ rotation needs a large sample to pay off (and to train in reasonable time)
TRAIN_PER_LIST = 64  # k-means sample per IVF list: FAISS wants >= 39; more costs build time, not recall
MAX_TRAIN = 300_000  # training sample cap: k-means and OPQ cost grows with it, recall barely does past this
_HNSW_COARSE_M = 32  # graph degree of the ivfpq coarse quantizer


@dataclass(frozen=True)
class IndexConfig:
    """Which FAISS index to build and how to search it."""

    type: str = "flat"  # flat | ivf | hnsw | ivfpq
    nlist: int = 0  # ivf, ivfpq: number of inverted lists (clusters)
    nprobe: int = 0  # ivf, ivfpq: lists visited per query (recall vs speed)
    hnsw_m: int = 32  # hnsw: graph degree
    ef_search: int = 128  # hnsw: candidate list size per query
    pq_m: int = 0  # ivfpq: sub-quantizers, i.e. bytes per code (at 8 bits)
    pq_bits: int = 8  # ivfpq: bits per sub-quantizer (4 for small training sets)
    opq: int = 0  # ivfpq: 1 rotates vectors with OPQ before coding (better codes, slower training)
    rerank: int = 0  # candidates per query re-scored exactly from the stored vectors (0: just k)

    def params(self) -> dict[str, int]:
        """The parameters that matter for this type, for the manifest and ``mmr info``."""
        if self.type == "ivf":
            return {"nlist": self.nlist, "nprobe": self.nprobe, "rerank": self.rerank}
        if self.type == "hnsw":
            return {"hnsw_m": self.hnsw_m, "ef_search": self.ef_search, **({"rerank": self.rerank} if self.rerank else {})}
        if self.type == "ivfpq":
            return {"nlist": self.nlist, "nprobe": self.nprobe, "pq_m": self.pq_m, "pq_bits": self.pq_bits,
                    "opq": self.opq, "rerank": self.rerank}
        return {}

    def factory(self, dim: int) -> str:
        """The ``faiss.index_factory`` string of this configuration."""
        if self.type == "ivf":
            return f"IVF{self.nlist},SQfp16"
        if self.type == "hnsw":
            return f"HNSW{self.hnsw_m},Flat"
        if self.type == "ivfpq":
            rotation = f"OPQ{self.pq_m}_{_opq_out(dim, self.pq_m)}," if self.opq else ""
            return f"{rotation}IVF{self.nlist}_HNSW{_HNSW_COARSE_M},PQ{self.pq_m}x{self.pq_bits}"
        return "Flat"


@dataclass(frozen=True)
class IndexPolicy:
    """How the automatic choice and tuning behave (thresholds are parameters so tests can lower them)."""

    flat_below: int = AUTO_ANN_THRESHOLD  # exact search below this many vectors
    pq_from: int = PQ_THRESHOLD  # compressed ivfpq codes from this many vectors
    memory_budget_bytes: int = 0  # index memory allowed; 0 means a quarter of this machine's RAM
    recall_target: float = 0.95  # recall@10 that tuning of nprobe / efSearch aims for
    tuning_queries: int = 200  # held-out queries (sampled from the collection) for tuning; 0 skips tuning

    def budget(self) -> int:
        return self.memory_budget_bytes or quarter_of_ram()


def quarter_of_ram() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4
    except (ValueError, OSError, AttributeError):
        return 4 << 30


def estimate_bytes(config: IndexConfig, count: int, dim: int) -> int:
    """Resident memory of an index of ``count`` vectors (codes, ids, quantizers), in bytes."""
    if config.type == "ivf":
        return count * (2 * dim + 8) + config.nlist * dim * 4
    if config.type == "hnsw":
        return count * (4 * dim + 8 * config.hnsw_m + 8)
    if config.type == "ivfpq":
        code = math.ceil(config.pq_m * config.pq_bits / 8)
        coarse = config.nlist * (dim * 4 + 8 * _HNSW_COARSE_M)
        rotation = dim * _opq_out(dim, config.pq_m) * 4 if config.opq else 0
        return count * (code + 8) + coarse + rotation
    return count * (4 * dim + 8)


def refuse_foreign_params(index_type: str, params: dict[str, int | None]) -> None:
    """Refuse parameters given for ``index_type`` that it does not read (``--type flat --nlist 4``).

    Raises:
        CollectionError: naming them, as the command line spells them.
    """
    foreign = [name for name, value in params.items()
               if value is not None and name not in INDEX_PARAMS.get(index_type, INDEX_PARAMS["auto"])]
    if foreign:
        options = ", ".join("--" + name.replace("_", "-") for name in foreign)
        raise CollectionError(f"{options}: not a parameter of the {index_type} index type (see mmr index --help)")


def choose_config(count: int, index_type: str | None = None, *, dim: int = 512, policy: IndexPolicy | None = None,
                  **overrides: int | None) -> IndexConfig:
    """The index for ``count`` ``dim``-d vectors: by size band and memory budget, unless ``index_type`` says.

    IVF over fewer than :data:`MIN_IVF_VECTORS` vectors cannot be trained usefully, so ``flat`` (exact, and
    fast at that size) is chosen instead; ``rebuild_index`` records that in the manifest's note.

    Args:
        count: vectors the index will hold.
        index_type: ``auto``, or one of :data:`INDEX_TYPES`.
        dim: vector dimension (sizes the PQ codes and the memory estimate).
        policy: thresholds and memory budget (defaults: :class:`IndexPolicy`).
        overrides: :class:`IndexConfig` fields; None means "the automatic choice".

    Raises:
        CollectionError: an unknown type or parameter, a parameter below 1, or a ``pq_m`` above ``dim`` (one
            that does not divide it turns OPQ on, which rotates the vectors to a multiple of it).
    """
    policy = policy or IndexPolicy()
    given = _checked_overrides(overrides)
    if given.get("pq_m", 0) > dim:  # checked whatever the count: a collection too small for ivfpq grows into it
        raise CollectionError(f"--pq-m {given['pq_m']}: a code splits each {dim}-d vector into pq-m parts, so it is "
                              f"at most {dim} (FAISS stopped on its own C++ assertion)")
    if index_type is None or index_type == "auto":
        index_type = _auto_type(count, dim, policy)
    if index_type not in INDEX_TYPES:
        raise CollectionError(f"unknown index type {index_type!r}; use one of auto, {', '.join(INDEX_TYPES)}")
    if index_type in ("ivf", "ivfpq") and count < MIN_IVF_VECTORS:
        return IndexConfig(type="flat")
    config = IndexConfig(type=index_type)
    if index_type in ("ivf", "ivfpq"):
        # ~4 sqrt(n) lists of at least 39 training points each (FAISS's minimum), and 1/128 of them probed;
        # no more lists than the capped training sample fills with TRAIN_PER_LIST points each: at 10 M, 16,384
        # lists trained on 18 points each made codes of residuals so coarse that recall@10 stalled at 0.86.
        nlist = int(min(max(4 * math.sqrt(max(count, 1)), 1), max(count // 39, 1), 65536))
        nlist = 2 ** max(int(round(math.log2(nlist))), 0)
        while nlist > max(MAX_TRAIN // TRAIN_PER_LIST, 1):
            nlist //= 2
        config = dataclasses.replace(config, nlist=nlist, nprobe=min(nlist, max(16, nlist // 128)),
                                     rerank=40 if index_type == "ivf" else 200)
    if index_type == "ivfpq":
        config = dataclasses.replace(config, pq_m=_pq_m(count, dim, policy.budget(), config.nlist),
                                     pq_bits=8 if count >= 256 * 39 else 4, opq=int(count >= OPQ_MIN_VECTORS))
    config = dataclasses.replace(config, **given)
    if config.type == "ivfpq" and dim % config.pq_m:  # equal parts only through a rotation to a multiple of pq_m
        config = dataclasses.replace(config, opq=1)
    return config


def _auto_type(count: int, dim: int, policy: IndexPolicy) -> str:
    if count < policy.flat_below:
        return "flat"
    ivf = choose_config(count, "ivf", dim=dim, policy=policy)
    if count < policy.pq_from and estimate_bytes(ivf, count, dim) <= policy.budget():
        return "ivf"
    return "ivfpq"


def _pq_m(count: int, dim: int, budget: int, nlist: int) -> int:
    """The largest code (bytes a vector) that fits ``budget``: at most dim / 4 and 128, at least 4.

    Four dimensions a sub-quantizer rank candidates well enough that a few hundred re-ranked reach recall@10
    0.95; at eight (m = 64 at 512-d) the same recall needed 800 and twice the query time (1 M clustered
    vectors, ``docs/scaling.md``).
    """
    for m in (128, 96, 64, 48, 32, 24, 16, 8, 4):
        if m <= max(dim // 4, 4) and dim % m == 0 or m == 4:
            config = IndexConfig(type="ivfpq", nlist=nlist, pq_m=m, opq=1)
            if estimate_bytes(config, count, dim) <= budget or m == 4:
                return m
    return 4


def _opq_out(dim: int, m: int) -> int:
    """OPQ's output dimension: 4 per sub-quantizer (FAISS's advice), a multiple of m, at most ``dim``."""
    return min(dim, 4 * m) // m * m


def _checked_overrides(overrides: dict[str, int | None]) -> dict[str, int]:
    given = {key: value for key, value in overrides.items() if value is not None}
    unknown = set(given) - {f.name for f in dataclasses.fields(IndexConfig)} - {"type"}
    if unknown:
        raise CollectionError(f"unknown index parameter(s) {sorted(unknown)}")
    for key, value in given.items():
        if not isinstance(value, int) or value < (0 if key in ("opq", "rerank") else 1):
            flag = "--" + key.replace("_", "-")
            raise CollectionError(f"index parameter {flag} must be a whole number >= 1, got {value}; "
                                  "leave it out for the automatic choice")
    return given
