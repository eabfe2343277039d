"""The library's warnings reach the web user who caused them as warning toasts, every time, and only that user:
labels merged because they differ only in case, labels longer than the model reads (before, they went only to
the server log, and Python showed each once per process)."""

from __future__ import annotations

import threading

import pytest

from ui_support import page_event, served_test_collection


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_model_dir, tiny_encoder):
    with served_test_collection(tmp_path_factory.mktemp("ui-warnings"), tiny_model_dir, tiny_encoder) as app_and_url:
        yield app_and_url


def _map_warnings(app, url: str, session: str, labels: str) -> list[str]:
    logs: list[dict] = []
    answer = page_event(app, url, session, "collection_map", [labels, "pca"], logs=logs)
    assert answer["success"], answer
    return [log["log"] for log in logs if log.get("level") == "warning"]


def test_a_case_merge_is_shown_to_the_user_who_typed_it_each_time(served):
    app, url = served
    for _ in range(2):  # Python shows a warning once per place in the code; a second user needs it as much
        shown = _map_warnings(app, url, "typist", "Circle, circle, square")
        assert shown == ["labels 'Circle' and 'circle' differ only in case: kept 'Circle' as one label"], shown
    assert _map_warnings(app, url, "other", "circle, square") == []


def test_warnings_of_requests_at_the_same_time_go_to_their_own_users(served):
    app, url = served
    results: dict[str, list[str]] = {}

    def ask(session: str, labels: str) -> None:
        results[session] = _map_warnings(app, url, session, labels)

    threads = [threading.Thread(target=ask, args=(f"user-{n}", "Star, star" if n % 2 else "star, cross"))
               for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    for n in range(6):
        expected = ["labels 'Star' and 'star' differ only in case: kept 'Star' as one label"] if n % 2 else []
        assert results[f"user-{n}"] == expected, (n, results)


def test_an_html_label_in_a_warning_is_shown_as_text(served):
    app, url = served
    shown = _map_warnings(app, url, "html", "<b>x</b>, <B>X</B>")
    assert shown == ["labels '&lt;b&gt;x&lt;/b&gt;' and '&lt;B&gt;X&lt;/B&gt;' differ only in case: kept "
                     "'&lt;b&gt;x&lt;/b&gt;' as one label"], shown


def test_a_warning_is_shown_beside_the_error_of_the_same_request(served):
    app, url = served
    logs: list[dict] = []
    answer = page_event(app, url, "typo", "collection_map", ["Circle, circle", "pca", "", "photos/2023"], logs=logs)
    assert not answer["success"] and "not an absolute path" in answer["output"]["error"], answer
    assert [log["log"] for log in logs if log.get("level") == "warning"] == [
        "labels 'Circle' and 'circle' differ only in case: kept 'Circle' as one label"]


def test_labels_longer_than_the_model_reads_are_said_again_when_their_classifier_is_cached(served):
    app, url = served
    long_label = "circle " + " ".join(f"word{n}" for n in range(90))
    for session in ("first", "second"):  # the second is served from the classifier cache
        shown = _map_warnings(app, url, session, f"{long_label}, square")
        assert len(shown) == 1 and "longer than the model reads" in shown[0], (session, shown)


def test_only_our_warnings_are_relayed_and_without_a_user_they_go_where_they_went(monkeypatch):
    import os
    import warnings

    import mmretrieval
    from mmretrieval.ui import relay

    seen: list[str] = []
    with relay.relayed_warnings():  # installs the hook; no Gradio event here, so nothing to show a toast to
        monkeypatch.setattr(relay, "_PREVIOUS", [lambda message, *args, **kwargs: seen.append(str(message))])
        ours = os.path.join(os.path.dirname(mmretrieval.__file__), "models", "label_text.py")
        warnings.showwarning("merged", UserWarning, ours, 1)
        warnings.showwarning("Corrupt EXIF data", UserWarning, "/usr/lib/python3/site-packages/PIL/TiffImagePlugin.py", 1)
        warnings.showwarning("divide by zero", RuntimeWarning, ours, 1)
        assert seen == ["Corrupt EXIF data", "divide by zero"]  # others' go on at once, as before
    assert seen == ["Corrupt EXIF data", "divide by zero", "merged"]  # ours at the end: to the log, without a user
