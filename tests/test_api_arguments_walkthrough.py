"""What a Python API walkthrough found (a developer embedding the library), each pinned by a test: a race between
threads, and arguments that were taken without a check and did harm (an empty source ingested the working folder, a
negative batch size hung, a bad pixel limit failed good files for good)."""

from __future__ import annotations

import sys
import threading
import time

import pytest

from mmretrieval.models import text_tower


def test_two_threads_first_text_queries_share_one_whole_tokenizer(monkeypatch):
    """Two collections' first text queries on two threads: one met open_clip's tokenizer module half made (it was
    listed in sys.modules before it ran) and failed with an AttributeError, in 7 of 8 runs."""
    import importlib.util

    monkeypatch.delitem(sys.modules, "mmretrieval._open_clip_tokenizer", raising=False)
    made = importlib.util.spec_from_file_location

    def slow_spec(*args, **kwargs):  # the module takes a while to run, as its BPE merges do on a busy machine
        spec = made(*args, **kwargs)
        run = spec.loader.exec_module
        spec.loader.exec_module = lambda module: (time.sleep(0.3), run(module))[1]
        return spec

    monkeypatch.setattr(importlib.util, "spec_from_file_location", slow_spec)
    results: list = []

    def tokenize() -> None:
        try:
            results.append(text_tower._tokenizer(77, None)(["a red circle"]).shape)
        except Exception as exc:  # noqa: BLE001 (the test reports whatever a thread met)
            results.append(exc)

    threads = [threading.Thread(target=tokenize) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [(1, 77)] * 3, results
