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
