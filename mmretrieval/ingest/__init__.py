"""Bulk ingestion as a pipeline: :mod:`.reader` finds files and decodes them in worker processes,
:mod:`.runner` embeds batches with the model, :mod:`.writer` commits them to the catalog.

The stages pass small frozen dataclasses (:mod:`.batches`), so a distributed engine could run the same
functions on other machines. :func:`.runner.run_ingest` is the single-machine driver.
"""

from .batches import IngestConfig, IngestSummary
from .runner import run_ingest

__all__ = ["IngestConfig", "IngestSummary", "run_ingest"]
