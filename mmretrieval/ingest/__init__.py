"""Bulk ingestion as a pipeline: :mod:`.reader` finds files and decodes them in worker processes,
:mod:`.runner` embeds batches with the model, :mod:`.writer` commits them to the catalog.

The stages pass small frozen dataclasses (:mod:`.batches`), so a distributed engine could run the same
functions on other machines. :func:`.runner.run_ingest` is the single-machine driver.
"""

from typing import Any

from .batches import IngestConfig, IngestSummary

__all__ = ["IngestConfig", "IngestSummary", "run_ingest"]


def __getattr__(name: str) -> Any:
    # The runner needs torch; decoding workers import this package too and must start without it.
    if name == "run_ingest":
        from .runner import run_ingest

        return run_ingest
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
