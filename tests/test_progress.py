"""The progress callback: a tqdm bar on a terminal, plain lines in a log (no carriage returns or cursor moves)."""

from __future__ import annotations

import io
import types

import mmretrieval.progress as progress_module
from mmretrieval.collection.collection import Collection
from mmretrieval.ingest.batches import IngestConfig
from mmretrieval.ingest.runner import run_ingest
from mmretrieval.progress import TqdmProgress
from test_ingest import write_good_images


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_gets_plain_lines_and_the_last_one_at_the_end(monkeypatch):
    log = io.StringIO()
    with TqdmProgress("ingest", stream=log) as progress:
        progress(0, None)
        for done in range(1, 11):
            progress(done, 10)
    assert "\r" not in log.getvalue() and "\x1b" not in log.getvalue()
    lines = log.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ingest: 10/10 img (100%)")  # quick work: the final line only
    monkeypatch.setattr(progress_module, "LINE_EVERY_S", 0.0)
    log = io.StringIO()
    with TqdmProgress("index", unit="vec", stream=log) as progress:
        for done in (5, 20):
            progress(done, 20)
    assert [line.split(",")[0] for line in log.getvalue().splitlines()] == ["index: 5/20 vec (25%)",
                                                                           "index: 20/20 vec (100%)"]


def test_the_clock_starts_at_the_first_work_done_not_at_a_report_of_nothing(monkeypatch):
    """``(0, total)`` shows the total while a cluster starts (10-30 s for Ray) and starts no clock: counted from
    it, the first rates were well below the steady ones."""
    now = [100.0]
    monkeypatch.setattr(progress_module, "time", types.SimpleNamespace(monotonic=lambda: now[0]))
    monkeypatch.setattr(progress_module, "LINE_EVERY_S", 0.0)
    log = io.StringIO()
    with TqdmProgress("ingest", stream=log) as progress:
        progress(0, 100)
        now[0] += 30.0  # Ray starting, and the first result's work
        progress(20, 100)
        now[0] += 2.0
        progress(40, 100)  # 20 in 2 s
    lines = log.getvalue().splitlines()
    assert lines[0] == "ingest: 0/100 img (0%)"
    assert lines[-1] == "ingest: 40/100 img (40%), 10.0 img/s"  # not 40 in 32 s (1.2 img/s)


def test_a_terminal_bar_restarts_its_clock_the_same_way():
    terminal = _Terminal()
    with TqdmProgress("ingest", stream=terminal) as progress:
        progress(0, 10)
        progress(4, 10)
        assert progress._bar.initial == 4 and progress._bar.n == 4
        progress(6, 10)
    assert "6/10" in terminal.getvalue()


def test_a_terminal_gets_a_bar():
    terminal = _Terminal()
    with TqdmProgress("ingest", stream=terminal) as progress:
        progress(3, 10)
    assert "\r" in terminal.getvalue() and "3/10" in terminal.getvalue()


def test_an_ingest_reports_its_first_progress_once_the_model_is_loaded(tmp_path, tiny_encoder):
    """The bar is made at the first report and measures its rate from then: made before the model loaded, the
    rate counted the load as embedding time (a walkthrough saw the first rates well below the later ones)."""
    write_good_images(tmp_path / "photos", 3)
    events: list = []

    def load():
        events.append("model loaded")
        return tiny_encoder

    with Collection.open(tmp_path / "col", model=tiny_encoder, create=True) as col:
        run_ingest(col.catalog, load, [str(tmp_path / "photos")], IngestConfig(workers=0),
                   progress=lambda done, total: events.append((done, total)))
        assert events[:2] == ["model loaded", (0, 3)] and events[-1] == (3, 3)
        events.clear()
        run_ingest(col.catalog, load, [str(tmp_path / "photos")], IngestConfig(workers=0),
                   progress=lambda done, total: events.append((done, total)))
        assert events == [(0, 0)]  # nothing to embed: no model, and the bar still says so
