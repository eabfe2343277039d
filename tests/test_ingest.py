"""Ingestion: the nasty-files folder, ids that never shift, incremental re-runs, duplicates, and a decoder
crash or hang contained in its worker."""

from __future__ import annotations

import io
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from mmretrieval.collection.collection import Collection
from mmretrieval.ingest.batches import Decoded, DecodeTask, Failed
from mmretrieval.ingest.pool import DecodePool
from mmretrieval.ingest.reader import decode_file
from mmretrieval.training.scenes import generate


def scene_jpeg(index: int, seed: int = 0) -> bytes:
    buffer = io.BytesIO()
    generate(seed, index).image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def write_good_images(folder, count: int, seed: int = 0) -> list:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"good{i:02d}.jpg"
        path.write_bytes(scene_jpeg(i, seed))
        paths.append(path)
    return paths


def png_bomb(width: int, height: int) -> bytes:
    """A 1-bit PNG declaring width x height that stops a few bytes into its pixel data (a bomb's header)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(bytes(1024))[:6]))


def make_nasty_folder(folder) -> dict[str, str]:
    """Good images plus every hard case; returns name -> expected final status (or failure reason)."""
    expected = {p.name: "ok" for p in write_good_images(folder, 6)}
    good = scene_jpeg(99)
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "text.jpg").write_text("this is not an image\n")
    (folder / "truncated.jpg").write_bytes(good[: len(good) // 2])
    png = io.BytesIO()
    generate(0, 98).image.save(png, "PNG")
    (folder / "truncated.png").write_bytes(png.getvalue()[: len(png.getvalue()) // 2])
    (folder / "bomb.png").write_bytes(png_bomb(20_000, 20_000))
    Image.new("CMYK", (50, 40), (0, 200, 200, 0)).save(folder / "cmyk.jpg")
    Image.fromarray(np.linspace(0, 65535, 40 * 50, dtype=np.uint16).reshape(40, 50)).save(folder / "deep16.png")
    Image.new("RGBA", (50, 40), (0, 0, 255, 128)).save(folder / "rgba.png")
    Image.new("P", (50, 40), 1).save(folder / "palette.png", transparency=0)
    frames = [Image.new("RGB", (50, 40), c) for c in ((255, 0, 0), (0, 255, 0))]
    frames[0].save(folder / "anim.gif", save_all=True, append_images=frames[1:], duration=40)
    exif = Image.Exif()
    exif[0x0112] = 6
    generate(0, 97).image.resize((80, 40)).save(folder / "rotated.jpg", exif=exif.tobytes())
    with open(os.path.join(os.fsencode(folder), b"caf\xe9-latin1.jpg"), "wb") as handle:
        handle.write(scene_jpeg(96))
    os.mkfifo(folder / "fifo.jpg")
    (folder / "loop").symlink_to(folder)
    (folder / "selfloop.jpg").symlink_to(folder / "selfloop.jpg")
    expected.update({
        "empty.jpg": "empty_file", "text.jpg": "not_an_image", "truncated.jpg": "truncated",
        "truncated.png": "truncated", "bomb.png": "decompression_bomb", "cmyk.jpg": "ok", "deep16.png": "ok",
        "rgba.png": "ok", "palette.png": "ok", "anim.gif": "ok", "rotated.jpg": "ok",
        os.fsdecode(b"caf\xe9-latin1.jpg"): "ok", "fifo.jpg": "not_regular_file", "loop": "symlink_loop",
        "selfloop.jpg": "symlink_loop",
    })
    return expected


@pytest.mark.parametrize("device_decode, share_jpegs", [(False, True), (True, False), (True, True)],
                         ids=["cpu-pool", "device-route-on-cpu", "device-route-shared"])
def test_nasty_folder_every_file_gets_a_final_status(tmp_path, tiny_encoder, device_decode, share_jpegs):
    folder = tmp_path / "photos"
    folder.mkdir()
    expected = make_nasty_folder(folder)
    with Collection.open(tmp_path / "col", model=tiny_encoder, create=True) as col:
        summary = col.ingest([folder], batch_size=4, workers=1, device_decode=device_decode, share_jpegs=share_jpegs)
        counts = col.catalog.counts_by_status()
        assert "pending" not in counts
        outcome = {os.path.basename(f.path): f.reason for f in col.failures()}
        ok_ids = col.catalog.vector_ids().tolist()
        ok_names = {os.path.basename(row.path) for row in col.catalog.rows(ok_ids).values()}
        outcome.update({name: "ok" for name in ok_names})
        assert outcome == expected
        assert summary.embedded == sum(v == "ok" for v in expected.values())
        skips = ("not_regular_file", "symlink_loop")  # what the reader will not open: skipped, as info counts them
        assert summary.failed_total == sum(v not in ("ok", *skips) for v in expected.values())
        assert summary.skipped == {reason: sum(v == reason for v in expected.values()) for reason in skips}
        assert counts["skipped"] == summary.skipped_total == 3
        rotated = col.catalog.rows([col.catalog.id_of_path(folder / "rotated.jpg")]).popitem()[1]
        assert (rotated.width, rotated.height) == (40, 80)
        hits = col.search("a shape", k=100)
        assert {os.path.basename(h.path) for h in hits} == ok_names  # every good file is searchable
        latin1 = os.path.join(folder, os.fsdecode(b"caf\xe9-latin1.jpg"))
        assert col.similar(latin1, k=1)[0].id != col.catalog.id_of_path(latin1)


def test_device_route_stores_what_the_cpu_path_stores(tmp_path, shapes_encoder):
    folder = tmp_path / "photos"
    folder.mkdir()
    make_nasty_folder(folder)
    stored = {}
    for device_decode in (False, True):
        with Collection.open(tmp_path / f"col-{device_decode}", model=shapes_encoder, create=True) as col:
            # every JPEG the device can take decodes there, none shared with the CPU pool
            col.ingest([folder], batch_size=5, workers=1, device_decode=device_decode, share_jpegs=False)
            ids, vectors = col.vectors()
            rows = col.catalog.rows(ids.tolist())
            stored[device_decode] = {rows[i].path: (rows[i].width, rows[i].height, vector)
                                     for i, vector in zip(ids.tolist(), vectors)}
    assert stored[True].keys() == stored[False].keys()
    for path, (*facts, vector) in stored[True].items():
        *cpu_facts, cpu_vector = stored[False][path]
        assert facts == cpu_facts
        assert float(vector @ cpu_vector) >= 0.98, path


def test_a_failed_commit_stops_the_ingest_and_keeps_what_was_committed(tmp_path, tiny_encoder, monkeypatch):
    from mmretrieval.ingest.writer import CatalogWriter

    folder = tmp_path / "photos"
    write_good_images(folder, 12)
    real_write, calls = CatalogWriter.write, []

    def write_then_fail(self, batch):
        calls.append(len(batch.decoded))
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real_write(self, batch)

    monkeypatch.setattr(CatalogWriter, "write", write_then_fail)
    with Collection.open(tmp_path / "col", model=tiny_encoder, create=True) as col:
        with pytest.raises(OSError, match="No space left"):
            col.ingest([folder], batch_size=4, workers=0)
        assert len(calls) == 2  # nothing written after the failure
        assert col.catalog.counts_by_status() == {"ok": 4, "pending": 8}
        monkeypatch.setattr(CatalogWriter, "write", real_write)
        again = col.ingest([folder], batch_size=4, workers=0)
        assert (again.embedded, again.unchanged) == (8, 4)


def test_a_file_dated_past_2262_is_ingested_with_the_rest(tmp_path, tiny_encoder):
    """Its mtime in ns overflows SQLite's 64-bit integers: it failed every ingest of its folder (OverflowError)."""
    paths = write_good_images(tmp_path / "photos", 3)
    year_2300_ns = 10_413_792_000 * 10**9
    os.utime(paths[1], ns=(year_2300_ns, year_2300_ns))
    with Collection.open(tmp_path / "col", model=tiny_encoder, create=True) as col:
        first = col.ingest([tmp_path / "photos"], workers=0)
        assert (first.embedded, first.failed_total) == (3, 0)
        assert col.photos([col.catalog.id_of_path(paths[1])]).popitem()[1].taken_local.startswith("2262-04-1")
        assert col.ingest([tmp_path / "photos"], workers=0).unchanged == 3


def test_failures_in_a_batch_never_shift_vectors(tmp_path, tiny_encoder):
    folder = tmp_path / "mixed"
    good = write_good_images(folder, 7)
    for i in range(0, 7, 2):  # interleave failures so every batch holds some
        (folder / f"good{i:02d}b.jpg").write_text("broken")
    with Collection.open(tmp_path / "col", model=tiny_encoder, create=True) as col:
        col.ingest([folder], batch_size=3, workers=1)
        ids, vectors = col.vectors()
        rows = col.catalog.rows(ids.tolist())
        assert sorted(rows[i].path for i in ids.tolist()) == sorted(str(p) for p in good)
        reference = tiny_encoder.encode_images([rows[i].path for i in ids.tolist()])
        np.testing.assert_allclose(vectors, reference, atol=5e-4)  # stored as float16


def test_reingest_skips_unchanged_reembeds_modified_and_prunes(tmp_path, tiny_encoder):
    folder = tmp_path / "photos"
    paths = write_good_images(folder, 6)
    with Collection.open(tmp_path / "col", model=tiny_encoder, create=True) as col:
        first = col.ingest([folder], workers=0)
        assert (first.embedded, first.unchanged) == (6, 0)
        again = col.ingest([folder], workers=0)
        assert (again.embedded, again.unchanged, again.duplicates) == (0, 6, 0)

        modified_id = col.catalog.id_of_path(paths[0])
        paths[0].write_bytes(scene_jpeg(50))
        os.utime(paths[0], ns=(time.time_ns(), time.time_ns() + 10**9))
        changed = col.ingest([folder], workers=0)
        assert (changed.embedded, changed.unchanged) == (1, 5)
        assert col.catalog.id_of_path(paths[0]) == modified_id  # same file, same id
        np.testing.assert_allclose(col.vectors([modified_id])[1][0],
                                   tiny_encoder.encode_images([paths[0]])[0], atol=5e-4)

        paths[1].unlink()
        kept = col.ingest([folder], workers=0)
        assert kept.pruned == 0 and str(paths[1]) in {h.path for h in col.search("x", k=50)}
        pruned = col.ingest([folder], workers=0, prune=True)
        assert pruned.pruned == 1
        hits = col.search("x", k=50)
        assert str(paths[1]) not in {h.path for h in hits} and len(hits) == 5
        col.load_index()
        assert sorted(col._indexes.index.ids().tolist()) == sorted(col.catalog.vector_ids().tolist())


def test_identical_bytes_are_embedded_once(tmp_path, tiny_encoder):
    folder = tmp_path / "photos"
    paths = write_good_images(folder, 3)
    shutil.copy(paths[0], folder / "copy-in-batch.jpg")
    with Collection.open(tmp_path / "col", model=tiny_encoder, create=True) as col:
        summary = col.ingest([folder], workers=0)
        assert (summary.embedded, summary.duplicates) == (3, 1)
        shutil.copy(paths[1], folder / "copy-later.jpg")
        later = col.ingest([folder], workers=0)
        assert (later.embedded, later.duplicates, later.unchanged) == (0, 1, 4)
        ids = [col.catalog.id_of_path(p) for p in (paths[1], folder / "copy-later.jpg")]
        vectors = col.vectors(ids)[1]
        np.testing.assert_array_equal(vectors[0], vectors[1])


def decode_or_misbehave(task: DecodeTask, preparer) -> Decoded | Failed:
    """Runs in the worker: crash or hang on chosen files, decode the rest normally."""
    name = os.path.basename(task.path)
    if name == "crash.jpg":
        os.kill(os.getpid(), signal.SIGSEGV)
    if name.startswith("hang"):
        time.sleep(600)
    return decode_file(task, preparer)


def test_decoder_crash_and_hang_are_contained(tmp_path, tiny_encoder):
    folder = tmp_path / "photos"
    good = write_good_images(folder, 5)
    tasks = [DecodeTask(i + 1, str(p)) for i, p in enumerate(good)]
    tasks.insert(1, DecodeTask(100, str(folder / "crash.jpg")))
    tasks.insert(4, DecodeTask(101, str(folder / "hang.jpg")))
    pool = DecodePool(tiny_encoder.preparer, workers=2, timeout_s=3.0, decode=decode_or_misbehave)
    results = {r.image_id: r for r in pool.run(tasks)}
    assert sorted(results) == sorted(t.image_id for t in tasks)
    assert results[100].reason == "decoder_crashed"
    assert results[100].message == "the decoder process was killed by SIGSEGV"  # not "exit code None"
    assert results[101].reason == "decode_timeout"
    assert all(isinstance(results[i + 1], Decoded) for i in range(5))
    assert pool.results_made == len(tasks)  # the gauge the device route shares work by counts every outcome


def test_timeouts_at_the_start_of_a_run_fail_only_those_files(tmp_path, tiny_encoder):
    folder = tmp_path / "photos"
    good = write_good_images(folder, 3)
    hangs = [DecodeTask(100 + i, str(folder / f"hang{i}.jpg")) for i in range(4)]
    tasks = hangs + [DecodeTask(i + 1, str(p)) for i, p in enumerate(good)]
    # 2 s: a good file took over 0.5 s on a loaded machine (CI beside other test runs), and timed out too
    pool = DecodePool(tiny_encoder.preparer, workers=1, timeout_s=2.0, decode=decode_or_misbehave)
    results = {r.image_id: r for r in pool.run(tasks)}
    assert sorted(results) == sorted(t.image_id for t in tasks)
    assert all(results[t.image_id].reason == "decode_timeout" for t in hangs)
    assert all(isinstance(results[i + 1], Decoded) for i in range(3))


def _rows_by_id(batches) -> dict[int, np.ndarray | str]:
    """image id -> its pixel row (copied: a batch's chunks are reused after the next one), or failure reason."""
    out: dict[int, np.ndarray | str] = {}
    for batch in batches:
        out.update({item.image_id: row.copy() for item, row in zip(batch.decoded, batch.pixels, strict=True)})
        out.update({item.image_id: item.reason for item in batch.failed})
    return out


def test_batches_keep_each_image_on_its_own_row_through_failures_and_crashes(tmp_path, tiny_encoder):
    folder = tmp_path / "photos"
    good = write_good_images(folder, 40)
    (folder / "text.jpg").write_text("not an image")
    tasks = [DecodeTask(i + 1, str(p)) for i, p in enumerate(good)]
    for index, name in ((3, "text.jpg"), (9, "crash.jpg"), (20, "hang.jpg"), (31, "text.jpg")):
        tasks.insert(index, DecodeTask(100 + index, str(folder / name)))
    inline = {t.image_id: decode_file(t, tiny_encoder.preparer) for t in tasks if "good" in t.path}
    mine = f"mmr_{os.getpid()}_"  # the blocks this process makes (other processes may make theirs meanwhile)
    before = {name for name in os.listdir("/dev/shm") if name.startswith(mine)}
    pool = DecodePool(tiny_encoder.preparer, workers=2, timeout_s=3.0, decode=decode_or_misbehave)
    batches = pool.batches(tasks, batch_size=7)
    results = _rows_by_id(batches)
    assert sorted(results) == sorted(t.image_id for t in tasks)  # each task once: none lost, none twice
    assert [results[100 + i] for i in (3, 9, 20, 31)] == ["not_an_image", "decoder_crashed", "decode_timeout",
                                                          "not_an_image"]
    for image_id, expected in inline.items():
        np.testing.assert_array_equal(results[image_id], expected.pixels)
    assert {name for name in os.listdir("/dev/shm") if name.startswith(mine)} <= before  # every chunk, header


def test_run_copies_pixels_out_of_shared_memory(tmp_path, tiny_encoder):
    folder = tmp_path / "photos"
    tasks = [DecodeTask(i, str(p)) for i, p in enumerate(write_good_images(folder, 40))]
    pooled = {r.image_id: r.pixels for r in DecodePool(tiny_encoder.preparer, workers=2).run(tasks)}
    for task in tasks:  # held after the run, past many reuses of every chunk: still each file's own pixels
        np.testing.assert_array_equal(pooled[task.image_id], decode_file(task, tiny_encoder.preparer).pixels)


def decoder_pid(task: DecodeTask, preparer) -> Failed:
    """Runs in the worker: says which process decoded the task, or crashes on ``crash.jpg``."""
    if os.path.basename(task.path) == "crash.jpg":
        os.kill(os.getpid(), signal.SIGSEGV)
    return Failed(task.image_id, "pid", str(os.getpid()))


def test_kept_workers_serve_the_next_run_and_a_dead_one_is_replaced(tiny_encoder):
    pool = DecodePool(tiny_encoder.preparer, workers=1, timeout_s=30, decode=decoder_pid, keep_workers=True)
    try:
        first = {r.message for r in pool.run([DecodeTask(1, "a.jpg"), DecodeTask(2, "b.jpg")])}
        second = {r.message for r in pool.run([DecodeTask(3, "c.jpg")])}
        assert len(first) == 1 and second == first  # the same process: no start-up cost for the second run
        os.kill(int(first.pop()), signal.SIGKILL)  # dies while idle, between runs
        time.sleep(0.2)
        results = list(pool.run([DecodeTask(4, "d.jpg")]))
        assert [r.reason for r in results] == ["pid"] and results[0].message not in second
        crashed = {r.image_id: r for r in pool.run([DecodeTask(5, "crash.jpg"), DecodeTask(6, "e.jpg")])}
        assert crashed[5].reason == "decoder_crashed" and crashed[6].reason == "pid"
        assert crashed[6].message != results[0].message  # the crashed worker is not kept
    finally:
        pool.close()
    assert not pool._kept


def test_workers_are_not_kept_by_default(tiny_encoder):
    pool = DecodePool(tiny_encoder.preparer, workers=1, timeout_s=30, decode=decoder_pid)
    first = [r.message for r in pool.run([DecodeTask(1, "a.jpg")])]
    second = [r.message for r in pool.run([DecodeTask(2, "b.jpg")])]
    assert first != second


def test_no_tasks_starts_no_worker(tiny_encoder, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a decoder process was started for nothing")

    monkeypatch.setattr("mmretrieval.ingest.pool.Worker", refuse)
    monkeypatch.setattr("mmretrieval.ingest.pool.start_context", refuse)
    assert list(DecodePool(tiny_encoder.preparer, workers=2).run([])) == []


_UNGUARDED = """
import sys
from mmretrieval.ingest.batches import DecodeTask
from mmretrieval.ingest.pool import DecodePool
from mmretrieval.errors import CollectionError
try:
    list(DecodePool(None, workers=1).run([DecodeTask(1, sys.argv[1])]))
except CollectionError as exc:
    print("refused:", exc)
"""


def test_unguarded_script_is_refused_with_the_fix(tmp_path):
    write_good_images(tmp_path, 1)
    script = tmp_path / "unguarded.py"
    script.write_text(_UNGUARDED)
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "good00.jpg")], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert "refused:" in done.stdout and "__main__" in done.stdout


def test_csv_list_with_captions(tmp_path, tiny_encoder):
    folder = tmp_path / "photos"
    write_good_images(folder, 2)
    listing = tmp_path / "list.csv"
    listing.write_text("path,caption\nphotos/good00.jpg,first one\nphotos/good01.jpg,second\n")
    with Collection.open(tmp_path / "col", model=tiny_encoder, create=True) as col:
        col.ingest([listing], workers=0)
        captions = {os.path.basename(h.path): h.caption for h in col.search("x", k=5)}
        assert captions == {"good00.jpg": "first one", "good01.jpg": "second"}


def test_list_files_stream_with_quoted_captions_and_tilde_sources(tmp_path, tiny_encoder, monkeypatch):
    """A caption with a newline inside quotes (a CSV row over two lines), a .txt list with comments and CRLF line
    ends, and sources written with ``~`` as the Python API receives them (no shell to expand them)."""
    from mmretrieval.ingest.files import embed_files

    monkeypatch.setenv("HOME", str(tmp_path))
    write_good_images(tmp_path / "photos", 3)
    (tmp_path / "list.csv").write_text('path,caption\nphotos/good00.jpg,"two\nlines"\nphotos/good01.jpg,plain\n')
    (tmp_path / "list.txt").write_bytes(b"# a comment\r\nphotos/good02.jpg\r\n\r\n")
    with Collection.open(tmp_path / "col", model=tiny_encoder, create=True) as col:
        summary = col.ingest(["~/list.csv", "~/list.txt"], workers=0)
        assert summary.embedded == 3 and not summary.failed
        captions = {os.path.basename(h.path): h.caption for h in col.search("x", k=5)}
    assert captions == {"good00.jpg": "two\nlines", "good01.jpg": "plain", "good02.jpg": None}
    batches = list(embed_files(tiny_encoder, ["~/photos", "~/list.txt"], workers=0))
    paths = sorted(p for batch in batches for p in batch.paths)
    assert paths == sorted([str(tmp_path / "photos" / f"good0{i}.jpg") for i in range(3)] +
                           [str(tmp_path / "photos" / "good02.jpg")])
    assert not any(batch.failed for batch in batches)


def test_a_file_moved_away_while_the_run_reads_is_missing_and_retried_when_it_is_back(tmp_path, tiny_encoder):
    folder = tmp_path / "photos"
    paths = write_good_images(folder, 4)
    away = tmp_path / "away.jpg"

    def move_the_last_away(done, total):
        if done == 0:
            os.rename(paths[-1], away)

    with Collection.open(tmp_path / "col", model=tiny_encoder, create=True) as col:
        first = col.ingest([folder], workers=0, batch_size=1, progress=move_the_last_away)
        assert (first.embedded, first.failed) == (3, {"missing": 1})
        assert [(f.reason, f.message) for f in col.catalog.failures()] == [("missing", f"{paths[-1]} does not exist")]
        os.rename(away, paths[-1])  # back, with the size and time the row holds
        again = col.ingest([folder], workers=0)
        assert (again.embedded, again.unchanged, again.failed) == (1, 3, {})
        assert col.catalog.counts_by_status() == {"ok": 4}


def test_a_file_refused_for_its_size_is_retried_by_a_run_with_another_pixel_limit(tmp_path, tiny_encoder):
    """The refusal says "raise the limit with --max-pixels"; a walkthrough did, and the file stayed failed as
    unchanged, in a run that reported no failure."""
    folder = tmp_path / "photos"
    write_good_images(folder, 2)
    with Collection.open(tmp_path / "col", model=tiny_encoder, create=True) as col:
        first = col.ingest([folder], workers=0, max_pixels=1000)
        assert first.failed == {"decompression_bomb": 2}
        assert col.ingest([folder], workers=0, max_pixels=1000).unchanged == 2  # the same limit: not read again
        assert col.ingest([folder], workers=0, max_pixels=2000).unchanged == 2  # still too low for them
        again = col.ingest([folder], workers=0)  # the default limit passes them
        assert (again.embedded, again.unchanged, again.failed) == (2, 0, {})
        assert col.catalog.counts_by_status() == {"ok": 2}


def test_transient_failures_are_retried_on_the_next_run(tmp_path, tiny_encoder):
    from mmretrieval.collection.catalog import FailureWrite

    folder = tmp_path / "photos"
    paths = write_good_images(folder, 3)
    (folder / "text.jpg").write_text("not an image")
    with Collection.open(tmp_path / "col", model=tiny_encoder, create=True) as col:
        col.ingest([folder], workers=0)
        ids = [col.catalog.id_of_path(p) for p in paths]
        col.catalog.write_results([], [FailureWrite(ids[0], "decode_timeout", "took too long"),
                                       FailureWrite(ids[1], "decoder_crashed", "died")])
        again = col.ingest([folder], workers=0)
        assert (again.embedded, again.unchanged, again.failed) == (2, 2, {})  # text.jpg is not retried
        assert col.catalog.counts_by_status() == {"ok": 3, "failed": 1}
        assert sorted(col.vectors()[0].tolist()) == sorted(ids)
