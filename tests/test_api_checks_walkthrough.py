"""Findings of a user walkthrough of the Python API and the progress lines: honest rates, checked image vectors
in zero-shot scoring, and the right fix named when decoding workers cannot start from a script read on stdin."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import types

import numpy as np
import pytest

import mmretrieval.progress as progress_module
from mmretrieval.errors import QueryError
from mmretrieval.models.zeroshot import ZeroShotClassifier
from mmretrieval.progress import TqdmProgress
from test_ingest import _UNGUARDED, write_good_images


class _Clock:
    """A ``time.monotonic`` the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def monotonic(self) -> float:
        return self.now


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def clock(monkeypatch) -> _Clock:
    fake = _Clock()
    monkeypatch.setattr(progress_module, "time", types.SimpleNamespace(monotonic=fake.monotonic))
    return fake


def test_one_batch_after_a_model_load_shows_no_rate(clock):
    log = io.StringIO()
    with TqdmProgress("label", stream=log) as progress:
        clock.now += 20.0  # loading the model, scoring the only batch: nothing reported while it ran
        progress(10, 10)
        clock.now += 0.0001
    assert log.getvalue().splitlines() == ["label: 10/10 img (100%)"]  # not "…, 100000.0 img/s"


def test_the_rate_counts_only_what_was_done_after_the_first_report(clock, monkeypatch):
    monkeypatch.setattr(progress_module, "LINE_EVERY_S", 5.0)
    log = io.StringIO()
    with TqdmProgress("ingest", stream=log) as progress:
        clock.now += 30.0
        progress(20, 100)  # the first batch: how long it took is not known
        for done in (40, 60, 80, 100):
            clock.now += 2.0
            progress(done, 100)
    # 60 images in the first 6 s measured, 80 in 8 s: 10 img/s, not 80 / 6 s and 100 / 8 s
    assert log.getvalue().splitlines() == ["ingest: 80/100 img (80%), 10.0 img/s",
                                           "ingest: 100/100 img (100%), 10.0 img/s"]


def test_a_rate_measured_over_a_moment_is_not_shown(clock):
    log = io.StringIO()
    with TqdmProgress("classify", stream=log) as progress:
        progress(0, None)
        clock.now += 0.002
        progress(1, None)
    assert log.getvalue().splitlines() == ["classify: 1 img"]  # not "…, 500.0 img/s" from two milliseconds


def test_a_terminal_bar_after_one_batch_shows_no_rate():
    terminal = _Terminal()
    with TqdmProgress("label", stream=terminal) as progress:
        progress(207, 207)
    last = terminal.getvalue().rstrip("\n").split("\r")[-1]
    assert "207/207" in last and "?img/s" in last
    assert not re.search(r"\d img/s|\dimg/s", terminal.getvalue())


# Zero-shot scoring of image vectors handed to it, as the collection checks query vectors.

def _classifier(multi_label_reference: bool = True) -> ZeroShotClassifier:
    embeddings = np.eye(2, 4, dtype=np.float32)  # labels along the first two axes of a 4-d space
    null = np.array([0.5, 0.5, 0.5, 0.5], np.float32) if multi_label_reference else None
    return ZeroShotClassifier(labels=("cat", "dog"), embeddings=embeddings, logit_scale=10.0, logit_bias=None,
                              null_embedding=null)


def _softmax_reference(images: np.ndarray, classifier: ZeroShotClassifier) -> np.ndarray:
    logits = classifier.logit_scale * images.astype(np.float64) @ classifier.embeddings.T.astype(np.float64)
    weights = np.exp(logits - logits.max(axis=1, keepdims=True))
    return weights / weights.sum(axis=1, keepdims=True)


_UNIT_ROWS = np.array([[0.6, 0.8, 0.0, 0.0], [0.0, 0.6, 0.0, 0.8]], np.float32)


def test_a_single_vector_is_one_row():
    classifier = _classifier()
    one = classifier.probabilities(_UNIT_ROWS[0])
    assert one.shape == (1, 2)
    np.testing.assert_array_equal(one, classifier.probabilities(_UNIT_ROWS[:1]))


@pytest.mark.parametrize("images, named", [
    (np.ones((2, 3), np.float32), "3"),  # the wrong width: the message names it and the labels' 4
    (np.ones((1, 2, 4), np.float32), "shape"),
    (np.array([[np.nan, 1.0, 0.0, 0.0]], np.float32), "NaN"),
    (np.array([[np.inf, 1.0, 0.0, 0.0]]), "infinite"),
    (np.zeros((1, 4), np.float32), "zeros"),
    (np.array([["a", "b", "c", "d"]]), "numbers"),
    ([[1.0, 0.0, 0.0, 0.0], [1.0, 0.0]], "rows of 4"),
])
def test_bad_image_vectors_are_refused_by_name(images, named):
    with pytest.raises(QueryError, match=named):
        _classifier().probabilities(images)


def test_the_message_for_the_wrong_width_names_both_widths():
    with pytest.raises(QueryError) as caught:
        _classifier().probabilities(np.ones((2, 3), np.float32))
    assert "3" in str(caught.value) and "4" in str(caught.value)


def test_non_unit_rows_are_scored_by_their_direction():
    classifier = _classifier()
    scaled = _UNIT_ROWS * np.array([[10.0], [0.1]], np.float32)
    np.testing.assert_allclose(classifier.probabilities(scaled), _softmax_reference(_UNIT_ROWS, classifier),
                               rtol=1e-6)
    np.testing.assert_allclose(classifier.probabilities(scaled, multi_label=True),
                               classifier.probabilities(_UNIT_ROWS, multi_label=True), rtol=1e-6)


def test_unit_rows_as_stored_are_scored_as_given():
    classifier = _classifier()
    stored = _UNIT_ROWS.astype(np.float16)  # float16 rounding: norms within ~1e-4 of 1, not exactly 1
    assert not np.allclose(np.linalg.norm(stored.astype(np.float64), axis=1), 1.0, rtol=0, atol=1e-9)
    np.testing.assert_allclose(classifier.probabilities(stored),
                               _softmax_reference(stored.astype(np.float64), classifier), rtol=1e-6)


def test_no_images_score_to_no_rows():
    assert _classifier().probabilities(np.zeros((0, 4), np.float32)).shape == (0, 2)


def test_multi_label_without_the_neutral_reference_names_the_fix():
    with pytest.raises(QueryError, match="ZeroShotClassifier.build"):
        _classifier(multi_label_reference=False).probabilities(_UNIT_ROWS, multi_label=True)
    assert _classifier(multi_label_reference=False).probabilities(_UNIT_ROWS).shape == (2, 2)  # softmax needs none


# Decoding workers started from a script read on standard input.

_FROM_STDIN = _UNGUARDED  # the same script, read from standard input instead of a file


def test_a_script_on_stdin_is_told_to_pass_workers_0_not_to_add_a_guard(tmp_path):
    write_good_images(tmp_path, 1)
    done = subprocess.run([sys.executable, "-", str(tmp_path / "good00.jpg")], input=_FROM_STDIN,
                          capture_output=True, text=True, timeout=120, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": os.getcwd()})
    refusal = next(line for line in done.stdout.splitlines() if line.startswith("refused:"))
    assert "standard input" in refusal and "workers=0" in refusal
    assert "if __name__" not in refusal  # a guard cannot help: the workers cannot read the script again
    assert "leaked shared_memory" not in done.stderr
