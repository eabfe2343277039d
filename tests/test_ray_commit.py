"""The Ray ingestion's stages and commit without a Ray cluster: they are plain functions and classes, so the
at-least-once cases (a result committed twice, a result for a file that changed since) are tested directly."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time

import numpy as np
import pytest

from mmretrieval.collection.collection import Collection
from mmretrieval.ingest.ray_commit import ResultCommitter
from mmretrieval.ingest.ray_runner import RayIngestConfig
from mmretrieval.ingest.ray_segments import ResultDrop
from mmretrieval.ingest.ray_stages import Embedder, decode_rows
from mmretrieval.ingest.reader import discover
from mmretrieval.ingest.planning import plan
from mmretrieval.errors import CollectionError

from test_ingest import scene_jpeg, write_good_images

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def planned_collection(tmp_path, encoder, folder):
    col = Collection.open(tmp_path / "col", model=encoder, create=True)
    plan(col.catalog, discover([folder]))
    return col


def result_for(col, drop, ids=None) -> str:
    """Run decode and embed in this process over pending rows (all, or ``ids``) and write one result."""
    pending = {image_id: (path, size, mtime_ns) for image_id, path, size, mtime_ns in col.catalog.pending_files()}
    chosen = sorted(pending) if ids is None else ids
    batch = {"image_id": np.array(chosen, np.int64), "path": np.array([pending[i][0] for i in chosen], object),
             "size": np.array([pending[i][1] for i in chosen], np.int64),
             "mtime_ns": np.array([pending[i][2] for i in chosen], np.int64)}
    decoded = decode_rows(batch, col.encoder.preparer)
    embedded = Embedder(col.identity.to_json(), "cpu")(decoded)
    columns = {name: column for name, column in embedded.items() if name != "embedding"}
    return drop.write(columns, embedded["embedding"], "float16")


def test_a_result_commits_once_however_often_it_arrives(tmp_path, tiny_encoder):
    folder = tmp_path / "photos"
    write_good_images(folder, 4)
    (folder / "broken.jpg").write_text("not an image")
    col = planned_collection(tmp_path, tiny_encoder, folder)
    drop = ResultDrop(str(tmp_path / "drop"), str(tmp_path / "staging"))
    drop.prepare()
    name = result_for(col, drop)
    assert drop.finished() == [name]
    committer = ResultCommitter(col.catalog)
    first = committer.commit(drop.read(name))
    assert (first.rows, first.embedded, first.failed, first.stale) == (5, 4, {"not_an_image": 1}, 0)
    generation = col.catalog.generation
    again = ResultCommitter(col.catalog).commit(drop.read(name))  # as a re-run would
    assert (again.rows, again.stale) == (0, 5) and col.catalog.generation == generation
    assert col.catalog.counts_by_status() == {"ok": 4, "failed": 1}
    ids, vectors = col.vectors()
    rows = col.catalog.rows(ids.tolist())
    reference = tiny_encoder.encode_images([rows[i].path for i in ids.tolist()])
    np.testing.assert_allclose(vectors, reference, atol=2e-3)  # float16 storage
    col.close()


def test_a_result_for_a_file_changed_since_is_not_attached_to_it(tmp_path, tiny_encoder):
    folder = tmp_path / "photos"
    paths = write_good_images(folder, 3)
    col = planned_collection(tmp_path, tiny_encoder, folder)
    drop = ResultDrop(str(tmp_path / "drop"), str(tmp_path / "staging"))
    drop.prepare()
    old = result_for(col, drop)  # a straggler computed from the old bytes
    paths[0].write_bytes(scene_jpeg(40))
    os.utime(paths[0], ns=(time.time_ns(), time.time_ns() + 10**9))
    plan(col.catalog, discover([folder]))  # planned again with the new size and mtime
    changed_id = col.catalog.id_of_path(paths[0])
    committer = ResultCommitter(col.catalog)
    counts = committer.commit(drop.read(old))
    assert (counts.rows, counts.stale) == (2, 1)
    assert [image_id for image_id, *_ in col.catalog.pending_files()] == [changed_id]
    fresh = committer.commit(drop.read(result_for(col, drop, [changed_id])))
    assert (fresh.rows, fresh.embedded) == (1, 1)
    stored = col.vectors([changed_id])[1][0]
    np.testing.assert_allclose(stored, tiny_encoder.encode_images([paths[0]])[0], atol=2e-3)
    col.close()


def test_a_damaged_result_is_refused_and_left_in_place(tmp_path, tiny_encoder):
    folder = tmp_path / "photos"
    write_good_images(folder, 2)
    col = planned_collection(tmp_path, tiny_encoder, folder)
    drop = ResultDrop(str(tmp_path / "drop"), str(tmp_path / "staging"))
    drop.prepare()
    name = result_for(col, drop)
    vec = tmp_path / "drop" / f"{name}.vec"
    vec.write_bytes(vec.read_bytes()[:-2])
    with pytest.raises(CollectionError, match="damaged"):
        drop.read(name)
    assert drop.finished() == [name]
    col.close()


def test_unsealed_leftovers_are_removed(tmp_path):
    drop = ResultDrop(str(tmp_path / "drop"), str(tmp_path / "staging"))
    drop.prepare()
    (tmp_path / "drop" / "abc.vec").write_bytes(b"x")
    (tmp_path / "drop" / "abc.rows.parquet").write_bytes(b"x")
    assert drop.remove_unsealed() == 2 and not os.listdir(tmp_path / "drop")


def test_bad_ray_options_are_refused():
    with pytest.raises(CollectionError, match="segment_rows"):
        RayIngestConfig(segment_rows=0)


def test_missing_ray_is_a_clear_error(monkeypatch):
    import builtins

    from mmretrieval.ingest import ray_connect

    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(CollectionError, match=r"pip install 'mmretrieval\[ray\]'"):
        with ray_connect.ray_connection(None):
            pass


def test_search_never_imports_ray(tmp_path, tiny_model_dir):
    import subprocess
    import sys

    folder = tmp_path / "photos"
    write_good_images(folder, 2)
    with Collection.open(tmp_path / "col", model=str(tiny_model_dir), create=True) as col:
        col.ingest([folder], workers=0)
    script = ("import sys; from mmretrieval.cli import main; "
              f"code = main(['search', 'a shape', '--collection', {str(tmp_path / 'col')!r}]); "
              "assert 'ray' not in sys.modules and 'ray.data' not in sys.modules, 'ray was imported'; sys.exit(code)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": _REPO})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("\t") == 2


def test_a_hanging_or_crashing_decoder_fails_its_file_not_the_task(tmp_path, tiny_encoder):
    from test_ingest import decode_or_misbehave

    folder = tmp_path / "photos"
    good = write_good_images(folder, 3)
    names = [str(good[0]), str(folder / "crash.jpg"), str(good[1]), str(folder / "hang.jpg"), str(good[2])]
    batch = {"image_id": np.arange(1, 6, dtype=np.int64), "path": np.array([os.fsencode(n) for n in names], object),
             "size": np.zeros(5, np.int64), "mtime_ns": np.zeros(5, np.int64)}
    out = decode_rows(batch, tiny_encoder.preparer, timeout_s=3.0, decode=decode_or_misbehave)
    assert out["image_id"].tolist() == [1, 2, 3, 4, 5]  # same rows, same order
    assert out["status"].tolist() == ["ok", "failed", "ok", "failed", "ok"]
    assert out["reason"].tolist() == ["", "decoder_crashed", "", "decode_timeout", ""]
    assert out["pixels"][0].any() and not out["pixels"][1].any()


def test_a_rerun_commits_results_a_killed_driver_left_before_decoding_anything(tmp_path, tiny_encoder, caplog):
    """Committed before planning, as a plain ingest commits them: the run's summary counts those rows unchanged,
    as the plain one does, and says so (a walkthrough read 'embedded 994' as its work redone)."""
    folder = tmp_path / "photos"
    write_good_images(folder, 4)
    (folder / "broken.jpg").write_text("not an image")
    col = planned_collection(tmp_path, tiny_encoder, folder)  # as the killed run planned it
    drop = ResultDrop(str(tmp_path / "col" / "ray-results"), str(tmp_path / "col" / "ray-staging"))
    drop.prepare()
    result_for(col, drop)  # finished by its workers, never committed
    (tmp_path / "col" / "ray-results" / "deadbeef.vec").write_bytes(b"half")  # a writer killed before sealing
    # An unreachable cluster: the re-run must not need Ray, everything pending is in the left-over result.
    with caplog.at_level("INFO", logger="mmretrieval.ingest.ray_runner"):
        summary = col.ingest([folder], ray=RayIngestConfig(address="127.0.0.1:1"))
    assert (summary.embedded, summary.unchanged, summary.failed) == (0, 5, {})
    assert "committed 5 rows that an interrupted --ray run had finished" in caplog.text
    assert "removed half-written results" in caplog.text
    assert col.catalog.counts_by_status() == {"ok": 4, "failed": 1}
    assert not (tmp_path / "col" / "ray-results").exists()  # emptied, then removed
    col.close()


def test_a_plain_ingest_commits_what_a_killed_ray_run_finished_instead_of_redoing_it(tmp_path, tiny_encoder):
    folder = tmp_path / "photos"
    write_good_images(folder, 4)
    (folder / "broken.jpg").write_text("not an image")
    col = planned_collection(tmp_path, tiny_encoder, folder)  # as the killed --ray run planned it
    drop = ResultDrop(str(tmp_path / "col" / "ray-results"), str(tmp_path / "col" / "ray-staging"))
    drop.prepare()
    result_for(col, drop, ids=[1, 2])  # two files finished by its workers, never committed
    (tmp_path / "col" / "ray-results" / "deadbeef.vec").write_bytes(b"half")  # a writer killed before sealing
    summary = col.ingest([folder], workers=0)  # without --ray
    assert summary.unchanged == 2 and summary.embedded + summary.failed_total == 3  # the two are not redone
    assert col.catalog.counts_by_status() == {"ok": 4, "failed": 1}
    assert not {"ray-results", "ray-staging"} & set(os.listdir(tmp_path / "col"))  # emptied, then removed
    ids = col.catalog.vector_ids()
    assert len(ids) == len(set(ids.tolist())) == 4
    col.close()


def test_a_cpu_model_actor_uses_the_threads_it_is_given_or_every_core(tiny_encoder):
    """Ray starts actors with one torch thread per reserved CPU; the model actor takes the node's cores instead."""
    import torch

    before = torch.get_num_threads()
    try:
        Embedder(tiny_encoder.identity.to_json(), "cpu", threads=1)
        assert torch.get_num_threads() == 1
        Embedder(tiny_encoder.identity.to_json(), "cpu")
        assert torch.get_num_threads() == os.cpu_count()
    finally:
        torch.set_num_threads(before)


def test_an_address_where_nothing_answers_fails_fast_instead_of_hanging(tmp_path, tiny_encoder):
    import socket
    import time

    from mmretrieval.ingest import ray_connect
    from mmretrieval.ingest.ray_index import RayIndexFill

    with socket.socket() as probe:  # a port nothing listens on: bound, then closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    for address in (f"127.0.0.1:{port}", f"ray://127.0.0.1:{port}", "no-such-host.invalid:6379"):
        started = time.monotonic()
        with pytest.raises(CollectionError, match=f"cannot connect to the Ray cluster at {address}: nothing answers"):
            ray_connect.check_reachable(address, timeout_s=5)
        assert time.monotonic() - started < 30
    with pytest.raises(CollectionError, match="nothing answers"):  # before an index is trained, not after
        RayIndexFill(str(tmp_path / "work"), address=f"127.0.0.1:{port}")
    for address in ("auto", "local", "garbage"):  # names Ray resolves itself pass
        ray_connect.check_reachable(address)


def test_a_first_ray_ingest_to_an_address_nothing_answers_at_announces_no_collection(tmp_path, capsys):
    """It said "a new collection with the bundled demo model..." and then, rightly, made none (Ray walkthrough)."""
    from mmretrieval.cli import main

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    write_good_images(tmp_path / "photos", 1)
    assert main(["ingest", str(tmp_path / "photos"), "--collection", str(tmp_path / "new"), "--ray",
                 f"127.0.0.1:{port}"]) == 2
    err = capsys.readouterr().err
    assert f"cannot connect to the Ray cluster at 127.0.0.1:{port}: nothing answers" in err
    assert "a new collection" not in err and not (tmp_path / "new").exists()



def test_a_first_ray_ingest_with_auto_and_no_cluster_announces_no_collection(tmp_path, capsys, monkeypatch):
    """``auto`` is resolved by Ray itself (no probe can check it): the connection is made before the collection."""
    from mmretrieval.cli import main

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path / "ray-tmp"))  # where `ray start` would have left its address
    write_good_images(tmp_path / "photos", 1)
    assert main(["ingest", str(tmp_path / "photos"), "--collection", str(tmp_path / "new"), "--ray", "auto"]) == 2
    err = capsys.readouterr().err
    assert "cannot connect to the Ray cluster at auto" in err and "ray start --head" in err
    assert "a new collection" not in err and not (tmp_path / "new").exists()


def test_a_first_local_ray_ingest_checks_the_model_before_any_ray_starts(tmp_path, capsys, monkeypatch):
    """Only an address is connected to before the collection is made; a local Ray (10-30 s to start) waits for
    work, so a mistyped --model is refused at once (a review)."""
    from mmretrieval.cli import main

    connected = []
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr("mmretrieval.ingest.ray_connect.ray_connection", lambda *args: connected.append(args))
    write_good_images(tmp_path / "photos", 1)
    assert main(["ingest", str(tmp_path / "photos"), "--collection", str(tmp_path / "new"), "--ray",
                 "--model", str(tmp_path / "no-such-model")]) == 2
    assert "no-such-model" in capsys.readouterr().err and connected == []

def test_an_error_of_ours_is_found_inside_the_error_ray_raises_and_nothing_else_is():
    from mmretrieval.errors import SettingError
    from mmretrieval.ingest.ray_runner import _ours_within

    ours = SettingError("batch_size", "must be at least 1")
    wrapped = RuntimeError("ray task failed")
    wrapped.cause = ours  # as RayTaskError keeps it
    assert _ours_within(wrapped) is ours
    chained = RuntimeError("outer")
    chained.__cause__ = ours
    assert _ours_within(chained) is ours
    handled = KeyError("x")
    handled.__context__ = ours  # a bug met while handling ours: not ours
    assert _ours_within(handled) is None
    text = ("The actor died because of an error raised in its creation task, ray::MapWorker.__init__()\n"
            '  File "ray_stages.py", line 119, in __init__\n    raise CollectionError(\n'
            "mmretrieval.errors.CollectionError: on this Ray node m loads as model key a, but the collection was "
            "built with key b; install the same weights on every node\n")
    found = _ours_within(RuntimeError(text))
    assert isinstance(found, CollectionError) and str(found).endswith("install the same weights on every node")
    assert _ours_within(RuntimeError(text + "\nDuring handling of the above exception, another exception "
                                     "occurred:\n...\nKeyError: 'x'")) is None
    decoded = _ours_within(RuntimeError("...\nmmretrieval.errors.ImageDecodeError: x.jpg: truncated"))
    assert type(decoded) is CollectionError and str(decoded) == "x.jpg: truncated"  # its class needs two arguments


def _serve_once(answer: bytes | None) -> tuple[str, threading.Thread]:
    """A port on 127.0.0.1 whose first connection gets ``answer`` once it has said something (None: silence)."""
    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    listening.listen()

    def serve() -> None:
        with listening, listening.accept()[0] as connection, contextlib.suppress(ConnectionError):
            connection.recv(64)
            if answer is not None:
                connection.sendall(answer)
            connection.recv(64)  # until the client closes (a reset, when it left bytes unread)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return f"127.0.0.1:{listening.getsockname()[1]}", thread


@pytest.mark.parametrize("answer, said", [
    (b"HTTP/1.0 400 Bad Request\r\n\r\n", "it answers as a web server"),  # the dashboard's port, 8265
    (None, "it said nothing to HTTP/2's opening"),
    (b"\x00\x00\x18\x04\x00\x00\x00\x00\x00", None),  # what a Ray head's GCS sends first: a SETTINGS frame
])
def test_an_address_where_something_else_than_ray_answers_is_refused_at_once(answer, said):
    """Ray's ray.init retried such an address without end (500 s in the Ray walkthrough, a web server on the port),
    holding the collection's writer lock and deaf to Ctrl-C."""
    from mmretrieval.ingest import ray_connect

    address, server = _serve_once(answer)
    started = time.monotonic()
    if said is None:
        ray_connect.check_reachable(address, timeout_s=5)
    else:
        with pytest.raises(CollectionError, match=f"something answers at {address}, but not Ray \\({said}\\); give the "
                                                  "address `ray start --head` printed"):
            ray_connect.check_reachable(address, timeout_s=2)
    assert time.monotonic() - started < 10
    server.join(timeout=10)


def test_a_small_run_makes_several_results_so_progress_shows_and_a_stop_keeps_work():
    from mmretrieval.ingest.ray_runner import MIN_SEGMENT_ROWS, _sized

    config = RayIngestConfig()
    assert _sized(config, 600).segment_rows == MIN_SEGMENT_ROWS  # not one 4,096-row result at the very end
    assert _sized(config, 20_000).segment_rows == 1000
    assert _sized(config, 10_000_000).segment_rows == config.segment_rows  # the most, at scale
    assert _sized(RayIngestConfig(segment_rows=5), 600).segment_rows == 5  # a smaller choice is kept


@pytest.mark.parametrize("flags, needle", [(["--device", "cuda"], "--device cannot be used with --ray"),
                                           (["--device-decode", "on"], "--device-decode cannot be used with --ray"),
                                           (["--workers", "0"], "--workers 0")])
def test_options_the_cluster_would_ignore_are_refused_with_ray(tmp_path, capsys, flags, needle):
    from mmretrieval.cli import main

    write_good_images(tmp_path / "photos", 1)
    assert main(["ingest", str(tmp_path / "photos"), "--collection", str(tmp_path / "col"), "--ray", "auto",
                 *flags]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err
    assert not (tmp_path / "col").exists()  # refused before a collection is made


def test_the_driver_gives_a_gcs_location_a_short_retry_limit_unless_the_uri_sets_one():
    """Offline or without credentials, pyarrow's default GCS retries kept the driver silent for minutes (27 s now,
    measured by hand); a limit the user wrote in the URI is kept, and other schemes are left alone."""
    from mmretrieval.ingest.ray_segments import PREPARE_RETRY_S, short_retries

    assert short_retries("gs://bucket/runs") == f"gs://bucket/runs?retry_limit_seconds={PREPARE_RETRY_S:g}"
    assert short_retries("gs://bucket/runs?scheme=http") == (
        f"gs://bucket/runs?scheme=http&retry_limit_seconds={PREPARE_RETRY_S:g}")
    assert short_retries("gs://bucket/runs?retry_limit_seconds=300") == "gs://bucket/runs?retry_limit_seconds=300"
    assert short_retries("s3://bucket/runs") == "s3://bucket/runs"
    assert short_retries("/shared/runs") == "/shared/runs"
    import pyarrow.fs as pafs

    filesystem, base = pafs.FileSystem.from_uri(short_retries("gs://bucket/runs"))  # pyarrow takes the option
    assert base == "bucket/runs" and type(filesystem).__name__ == "GcsFileSystem"


def test_a_plain_ingest_commits_what_a_killed_run_left_in_its_own_ray_output(tmp_path, tiny_encoder):
    """A --ray run with --ray-output elsewhere records that location; a later plain ingest commits the results
    left there (instead of decoding those files again and leaving them for good), then forgets it; a location
    it cannot read now is kept for the next run, and the ingest goes on."""
    from mmretrieval.ingest.batches import RAY_OUTPUT_KEY

    folder, elsewhere = tmp_path / "photos", tmp_path / "shared" / "run1"
    write_good_images(folder, 4)
    col = planned_collection(tmp_path, tiny_encoder, folder)
    with pytest.raises(CollectionError):  # the cluster is gone: the run records its location and stops
        col.ingest([folder], ray=RayIngestConfig(address="127.0.0.1:1", output=str(elsewhere)))
    assert col.catalog.get_meta(RAY_OUTPUT_KEY) == str(elsewhere)
    result_for(col, ResultDrop(str(elsewhere), str(tmp_path / "col" / "ray-staging")), ids=[1, 2])  # its workers'
    summary = col.ingest([folder], workers=0)  # without --ray
    assert summary.unchanged == 2 and summary.embedded == 2  # the two finished there are not redone
    assert col.catalog.counts_by_status() == {"ok": 4} and not os.listdir(elsewhere)
    assert not col.catalog.get_meta(RAY_OUTPUT_KEY)  # nothing left to look for
    with col.catalog.transaction():  # a location that cannot be read now (a file where its folder should be)
        col.catalog.set_meta(RAY_OUTPUT_KEY, str(tmp_path / "gone"))
    (tmp_path / "gone").write_text("not a folder")
    write_good_images(folder / "more", 1, seed=5)
    assert col.ingest([folder], workers=0).embedded == 1
    assert col.catalog.get_meta(RAY_OUTPUT_KEY) == str(tmp_path / "gone")  # kept for a later try
    col.close()


def test_a_seal_whose_rows_were_taken_as_unsealed_is_not_a_finished_result(tmp_path, tiny_encoder):
    """A task outliving its stopped driver wrote its rows, the next run removed them as unsealed leftovers, and
    the task sealed its result after: the run then failed on the missing rows table (a CI run of
    test_a_stopped_driver_resumes_from_finished_work). Such a result is not finished; a later run removes it."""
    folder = tmp_path / "photos"
    write_good_images(folder, 2)
    col = planned_collection(tmp_path, tiny_encoder, folder)
    drop = ResultDrop(str(tmp_path / "drop"), str(tmp_path / "staging"))
    drop.prepare()
    whole, broken = result_for(col, drop), result_for(col, drop)
    (tmp_path / "drop" / f"{broken}.rows.parquet").unlink()
    assert drop.finished() == [whole]
    assert drop.remove_unsealed() == 3 and drop.finished() == [whole]  # the broken one's seal, vectors and ids
    assert sorted(os.listdir(tmp_path / "drop")) == sorted(f"{whole}{suffix}" for suffix in
                                                           (".rows.parquet", ".vec", ".ids", ".json"))
    col.close()


def test_a_vector_an_actor_gets_as_nan_fails_its_row_and_is_not_committed(tmp_path, tiny_encoder, monkeypatch):
    """As in a local ingest: the row fails as model_output, its batch-mates commit."""
    from model_faults import nan_at_row

    folder = tmp_path / "photos"
    write_good_images(folder, 3)
    col = planned_collection(tmp_path, tiny_encoder, folder)
    nan_at_row(monkeypatch, 1)
    drop = ResultDrop(str(tmp_path / "drop"), str(tmp_path / "staging"))
    drop.prepare()
    committed = ResultCommitter(col.catalog).commit(drop.read(result_for(col, drop)))
    assert (committed.rows, committed.embedded, committed.failed) == (3, 2, {"model_output": 1})
    assert col.catalog.vector_count() == 2 and col.check().problems == ()
