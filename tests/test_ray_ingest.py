"""Ingestion on Ray (``--ray``): the same answers as the single-machine path, and nothing lost or duplicated
when an actor dies or the driver stops mid-run. One local Ray per module (starting one costs seconds)."""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal

import numpy as np
import pytest
from PIL import Image

from mmretrieval.collection.collection import Collection
from mmretrieval.ingest.ray_runner import RayIngestConfig
from mmretrieval.ingest.ray_segments import ResultDrop

from test_ingest import make_nasty_folder, write_good_images

ray = pytest.importorskip("ray")

pytestmark = pytest.mark.usefixtures("local_ray")  # one local Ray per module (tests/conftest.py)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Two dozen good scenes, one copy of a scene, and every hard case of the single-machine tests."""
    folder = tmp_path_factory.mktemp("ray") / "photos"
    folder.mkdir()
    expected = make_nasty_folder(folder)
    for path in write_good_images(folder / "more", 18, seed=5):
        expected[f"more/{path.name}"] = "ok"
    shutil.copy(folder / "good01.jpg", folder / "more" / "copy.jpg")
    expected["more/copy.jpg"] = "ok"
    exif = Image.Exif()
    exif[0x010F], exif[0x0110] = "Canon", "Canon EOS R5"  # Make, Model
    exif.get_ifd(0x8769)[0x9003] = "2023:07:14 18:05:09"  # DateTimeOriginal
    Image.new("RGB", (64, 48), (200, 40, 40)).save(folder / "more" / "dated.jpg", exif=exif)
    expected["more/dated.jpg"] = "ok"
    return folder, expected


def outcome(col: Collection) -> dict[bytes, str]:
    """Path -> status for ok rows, reason otherwise."""
    result = {os.fsencode(f.path): f.reason for f in col.failures()}
    ok_ids = col.catalog.vector_ids().tolist()
    result.update({os.fsencode(row.path): "ok" for row in col.catalog.rows(ok_ids).values()})
    return result


def vectors_by_path(col: Collection) -> dict[bytes, np.ndarray]:
    ids, vectors = col.vectors()
    rows = col.catalog.rows(ids.tolist())
    return {os.fsencode(rows[i].path): v for i, v in zip(ids.tolist(), vectors)}


def photos_by_path(col: Collection) -> dict[bytes, object]:
    ids = col.catalog.vector_ids().tolist()
    rows, photos = col.catalog.rows(ids), col.catalog.photos(ids)
    return {os.fsencode(rows[i].path): photos.get(i) for i in ids}


def assert_same_vectors_and_photos(col: Collection, reference: Collection, folder) -> None:
    """Vectors equal within float tolerance, and capture times and cameras crossed Ray as they were read."""
    ours, theirs = vectors_by_path(col), vectors_by_path(reference)
    assert ours.keys() == theirs.keys()
    for path, vector in ours.items():
        np.testing.assert_allclose(vector, theirs[path], atol=1e-5)
    assert photos_by_path(col) == photos_by_path(reference)
    dated = photos_by_path(col)[os.fsencode(str(folder / "more" / "dated.jpg"))]
    assert (dated.taken_local, dated.taken_source, dated.camera) == ("2023-07-14T18:05:09", "exif_original",
                                                                     "Canon EOS R5")


def small_config(**overrides) -> RayIngestConfig:
    # small blocks and segments, so a few dozen files make several tasks, batches and commits
    return RayIngestConfig(**{"files_per_task": 6, "segment_rows": 5, "batch_size": 4, **overrides})


@pytest.fixture(scope="module")
def single_machine(photos, shapes_encoder, tmp_path_factory):
    folder, _ = photos
    col = Collection.open(tmp_path_factory.mktemp("single") / "col", model=shapes_encoder, create=True)
    summary = col.ingest([folder], workers=1, batch_size=8)
    yield col, summary
    col.close()


@pytest.mark.slow
def test_ray_gives_the_single_machine_answers(photos, single_machine, shapes_encoder, tmp_path, caplog):
    folder, expected = photos
    reference, reference_summary = single_machine
    seen = []
    caplog.set_level(logging.INFO, logger="mmretrieval.ingest.ray_runner")
    with Collection.open(tmp_path / "col", model=shapes_encoder, create=True) as col:
        summary = col.ingest([folder], ray=small_config(), progress=lambda done, total: seen.append((done, total)))
        assert summary == reference_summary
        assert summary.embedded == sum(v == "ok" for v in expected.values()) - 1 and summary.duplicates == 1
        assert "pending" not in col.catalog.counts_by_status()
        assert outcome(col) == outcome(reference)
        assert {os.path.relpath(os.fsdecode(p), folder): s for p, s in outcome(col).items()} == expected
        assert_same_vectors_and_photos(col, reference, folder)
        assert seen[-1] == (seen[-1][1], seen[-1][1]) and len(seen) > 3  # several commits, then all done
        # the total first, before Ray starts (the bar's clock starts at the first result: tests/test_progress.py)
        assert seen[0] == (0, seen[-1][1]) and seen[1][0] > 0
        assert not (tmp_path / "col" / "ray-results").exists()  # every result committed and removed, and the folder
        assert not (tmp_path / "col" / "ray-staging").exists()
        assert len(col.search("a red circle", k=100)) == len(col.catalog.vector_ids())  # the index caught up
        stats = [r.getMessage() for r in caplog.records if "Ray execution statistics" in r.getMessage()]
        # decode and embed ran as operators of their own (fused, ds.stats() names them "A->B"), so Ray's
        # backpressure sits between CPU decode tasks and the model actors
        assert re.findall(r"^Operator \d+ (\S+):", stats[0], re.M) == [
            "FromArrow", "MapBatches(decode_rows)", "MapBatches(Embedder)", "MapBatches(write_rows)"]

        seen.clear()
        again = col.ingest([folder], ray=small_config(), progress=lambda done, total: seen.append((done, total)))
        assert seen == [(0, 0)]
        settled = sum(n for status, n in reference.catalog.counts_by_status().items() if status != "skipped")
        assert (again.embedded, again.duplicates, again.unchanged) == (0, 0, settled)


def _embed_actor_pids() -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as handle:
                    command = handle.read()
            except OSError:
                continue
            if b"Embedder" in command and b"ray::" in command:
                pids.append(int(entry))
    return pids


@pytest.mark.slow
def test_killing_the_embed_actor_mid_run_loses_and_duplicates_nothing(photos, single_machine, shapes_encoder,
                                                                      tmp_path):
    folder, _ = photos
    killed = []

    def kill_once(done: int, total: int) -> None:
        if done and not killed:
            pids = _embed_actor_pids()
            assert pids, "no embed actor process found to kill"
            for pid in pids:
                os.kill(pid, signal.SIGKILL)
            killed.extend(pids)

    with Collection.open(tmp_path / "col", model=shapes_encoder, create=True) as col:
        summary = col.ingest([folder], ray=small_config(segment_rows=2, batch_size=2), progress=kill_once)
        assert killed
        assert_nothing_lost_or_duplicated(col, summary, single_machine, folder)


def assert_nothing_lost_or_duplicated(col, summary, single_machine, folder) -> None:
    """A Ray run that lost a worker gives the single-machine run's answers: every file once, same vectors."""
    reference, reference_summary = single_machine
    assert summary == reference_summary
    assert "pending" not in col.catalog.counts_by_status()
    assert outcome(col) == outcome(reference)
    ids = col.catalog.vector_ids()
    assert len(ids) == len(set(ids.tolist())) == reference_summary.embedded + reference_summary.duplicates
    assert_same_vectors_and_photos(col, reference, folder)


class DriverStopped(Exception):
    pass


@pytest.mark.slow
def test_a_stopped_driver_resumes_from_finished_work(photos, single_machine, shapes_encoder, tmp_path):
    folder, _ = photos
    reference, reference_summary = single_machine

    def stop_after_first_commit(done: int, total: int) -> None:
        if done:
            raise DriverStopped

    with Collection.open(tmp_path / "col", model=shapes_encoder, create=True) as col:
        with pytest.raises(DriverStopped):
            col.ingest([folder], ray=small_config(), progress=stop_after_first_commit)
        first = col.catalog.counts_by_status()
        assert first.get("pending", 0) > 0 and first.get("ok", 0) > 0
        drop = ResultDrop(str(tmp_path / "col" / "ray-results"), str(tmp_path / "col" / "ray-staging"))
        pending = set(col.catalog.select_ids("SELECT id FROM images WHERE status = 'pending'").tolist())
        finished = sum(int(rows.ok[[int(i) in pending for i in rows.image_ids]].sum())  # written, not committed
                       for rows in (drop.read(name).rows for name in drop.finished()))  # (the one stopped in its
        # report is committed, its files left: the re-run commits it again as a no-op)
        resumed = col.ingest([folder], ray=small_config())
        assert "pending" not in col.catalog.counts_by_status()
        assert outcome(col) == outcome(reference)
        ok_total = reference_summary.embedded + reference_summary.duplicates
        # committed work is not redone: what the stopped run committed, and the results it had finished (committed
        # before the re-run plans), count unchanged; every other file is embedded once
        assert resumed.embedded + resumed.duplicates == ok_total - first["ok"] - finished
        assert resumed.embedded + resumed.duplicates + resumed.unchanged + resumed.failed_total == (
            ok_total + reference_summary.failed_total)
        ids = col.catalog.vector_ids()
        assert len(ids) == len(set(ids.tolist())) == ok_total


def test_a_stop_while_a_committed_result_is_removed_still_counts_its_rows(photos, shapes_encoder, tmp_path,
                                                                         monkeypatch):
    """After Ctrl-C, "128 of 269 images were done and saved" when 192 were: the stop came between a result's commit
    and its report, in the removal of its files (Ray walkthrough). The report now comes first."""
    folder, _ = photos
    seen = []

    def stopped_removal(self, name):
        raise DriverStopped

    monkeypatch.setattr(ResultDrop, "remove", stopped_removal)
    with Collection.open(tmp_path / "col", model=shapes_encoder, create=True) as col:
        with pytest.raises(DriverStopped):
            col.ingest([folder], ray=small_config(), progress=lambda done, total: seen.append(done))
        counts = col.catalog.counts_by_status()
        assert counts.get("ok", 0) > 0  # the first result was committed
    assert seen[-1] == counts.get("ok", 0) + counts.get("failed", 0)  # and its every row counted


@pytest.mark.slow
def test_mmr_ingest_ray_from_the_command_line(photos, single_machine, tmp_path, capfd):
    from mmretrieval.cli import main

    folder, _ = photos
    reference, reference_summary = single_machine
    assert main(["ingest", str(folder), "--collection", str(tmp_path / "col"), "--model", "builtin:shapes",
                 "--ray", "--batch-size", "16"]) == 0
    err = capfd.readouterr().err
    assert f"embedded {reference_summary.embedded}, unchanged 0, duplicates 1" in err
    # Ray Data's plan and executor lines stay in its log file; without -v the bar and the summary report.
    assert "streaming_executor" not in err and "Progress bars disabled" not in err
    with Collection.open(tmp_path / "col") as col:
        assert outcome(col) == outcome(reference)
    assert main(["ingest", str(folder), "--collection", str(tmp_path / "col"), "--ray-output", "x"]) == 2
    assert "--ray-output needs --ray" in capfd.readouterr().err



def test_an_error_of_ours_in_the_embed_actors_start_is_one_line_and_leaves_no_folders(tmp_path, capfd, monkeypatch):
    """Weights on a node that differ from the collection's are refused in the actor's __init__: the user got about
    80 lines of Ray tracebacks, and an error line holding the actor's traceback as escaped text (Ray walkthrough);
    the empty ray-results/ and ray-staging/ stayed in the collection."""
    from safetensors.numpy import load_file, save_file

    from mmretrieval.cli import main
    from mmretrieval.models.specs import assets_dir

    model = tmp_path / "model"
    shutil.copytree(assets_dir() / "shapes", model)
    write_good_images(tmp_path / "photos", 2)
    collection = tmp_path / "col"
    assert main(["ingest", str(tmp_path / "photos"), "--collection", str(collection), "--model", str(model)]) == 0
    weights = load_file(model / "open_clip_model.safetensors")  # the node's copy holds other weights now
    first = sorted(weights)[0]
    weights[first] = (weights[first] * 1.01).astype(weights[first].dtype)
    save_file(weights, model / "open_clip_model.safetensors")
    write_good_images(tmp_path / "photos" / "new", 1, seed=9)
    capfd.readouterr()
    # this machine is the driver and the node: the driver's copy (checked before planning) is taken as unchanged
    monkeypatch.setattr("mmretrieval.collection.collection.recorded_weights_changed", lambda identity: False)
    assert main(["ingest", str(tmp_path / "photos"), "--collection", str(collection), "--ray"]) == 2
    err = capfd.readouterr().err
    (line,) = [line for line in err.splitlines() if line.startswith("mmr ingest: error:")]
    assert re.fullmatch(r"mmr ingest: error: on this Ray node \S+ loads as model key \w+, but the collection was "
                        r"built with key \w+; install the same weights on every node", line), line
    assert "Full stack trace" not in err  # Ray Data's ERROR log of it, without -v
    assert not {"ray-results", "ray-staging"} & set(os.listdir(collection))


def test_prune_on_ray_lets_moved_files_reuse_their_vectors(shapes_encoder, tmp_path):
    """As on one machine: with --prune, a folder moved within the sources is not embedded again (its old rows
    go after the new ones took their vectors by content hash)."""
    import shutil

    from test_ingest import write_good_images

    root = tmp_path / "photos"
    write_good_images(root / "a", 3)
    with Collection.open(tmp_path / "col", model=shapes_encoder, create=True) as col:
        assert col.ingest([root], ray=small_config()).embedded == 3
        shutil.move(root / "a", root / "b")
        summary = col.ingest([root], prune=True, ray=small_config())
        assert (summary.embedded, summary.duplicates, summary.moved, summary.pruned) == (0, 0, 3, 3)
        assert sorted(os.path.basename(os.path.dirname(col.image_path(i))) for i in col.catalog.vector_ids()) == [
            "b", "b", "b"]
