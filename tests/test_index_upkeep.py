"""The index at scale, in miniature: size bands with lowered thresholds, recall tuning, readers that never
write (during an ingest, and on a read-only collection), and prune scoped to the sources of the command."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import pytest

from mmretrieval.cli import main
from mmretrieval.collection.collection import Collection
from mmretrieval.collection.index import IndexPolicy, VectorIndex, choose_config, training_size
from mmretrieval.collection.sizing import TRAIN_PER_LIST
from mmretrieval.errors import CollectionError
from test_collection import _fill_catalog
from test_ingest import write_good_images

POLICY = IndexPolicy(flat_below=300, pq_from=1500, recall_target=0.9, tuning_queries=40)


def clustered(n: int, dim: int = 32, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(30, dim))
    vectors = centres[rng.integers(0, 30, n)] + 0.5 * rng.normal(size=(n, dim))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def test_size_bands_and_memory_budget():
    assert choose_config(299, policy=POLICY, dim=32).type == "flat"
    assert choose_config(300, policy=POLICY, dim=32).type == "ivf"
    pq = choose_config(1500, policy=POLICY, dim=32)
    assert pq.type == "ivfpq" and pq.factory(32).startswith("IVF") and "_HNSW32,PQ" in pq.factory(32)
    big = choose_config(10_000_000, policy=IndexPolicy(memory_budget_bytes=6 << 30), dim=512)
    assert big.type == "ivfpq" and big.pq_m == 128 and big.opq == 1  # 4 dimensions a sub-quantizer: the most
    assert big.factory(512) == f"OPQ128_512,IVF{big.nlist}_HNSW32,PQ128x8"
    assert choose_config(100_000_000, policy=IndexPolicy(memory_budget_bytes=6 << 30), dim=512).pq_m == 32
    # no more lists than the capped training sample gives TRAIN_PER_LIST points each
    assert training_size(big, 10_000_000) >= TRAIN_PER_LIST * big.nlist and big.nlist == 4096
    tight = IndexPolicy(flat_below=300, pq_from=10**9, memory_budget_bytes=50_000)
    assert choose_config(1000, policy=tight, dim=32).type == "ivfpq"  # IVF would not fit: compressed codes
    assert choose_config(1_000_000).type == "ivf"  # defaults unchanged below a few million


def test_only_approximate_codes_are_re_ranked():
    float16, float32 = "float16", "float32"
    sample = clustered(5000)
    exact = {kind: VectorIndex.trained(choose_config(5000, kind, dim=32, policy=POLICY), 32, sample).scores_exact
             for kind in ("flat", "ivf", "hnsw", "ivfpq")}
    assert [exact[kind](float16) for kind in ("flat", "ivf", "hnsw", "ivfpq")] == [True, True, True, False]
    assert not exact["ivf"](float32)  # fp16 codes are not a float32 store's values


@pytest.mark.parametrize("count, expected", [(200, "flat"), (800, "ivf"), (2000, "ivfpq")])
def test_each_band_is_built_tuned_and_reported(tmp_path, tiny_encoder, count, expected):
    vectors = clustered(count)
    with Collection.open(tmp_path / "col", model=tiny_encoder, create=True, index_policy=POLICY) as col:
        ids = _fill_catalog(col, vectors, lambda i: "photos")
        manifest = col.rebuild_index()
        assert manifest.index_type == expected and manifest.count == count
        assert manifest.memory_bytes > 0
        if expected == "flat":
            assert manifest.recall == 1.0
        else:
            assert manifest.recall >= POLICY.recall_target
        stored = vectors.astype(np.float16).astype(np.float32)
        stored /= np.linalg.norm(stored, axis=1, keepdims=True)  # float16 leaves them 1 +- 4e-5 long
        found = 0
        for query_row in range(0, count, count // 20):
            hits = col.similar(int(ids[query_row]), k=10)
            scores = stored @ stored[query_row]
            scores[query_row] = -np.inf
            truth = set(ids[np.argsort(-scores)[:10]].tolist())
            found += len(truth & {h.id for h in hits})
            assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
            by_id = dict(zip(ids.tolist(), stored))
            # every type's scores are exact cosines with the stored vectors (at unit length), scored again from
            # the segments
            np.testing.assert_allclose([h.score for h in hits], [by_id[h.id] @ stored[query_row] for h in hits],
                                       atol=1e-5)
        assert found / (10 * len(range(0, count, count // 20))) >= 0.85
    assert main(["info", "--collection", str(tmp_path / "col"), "--json"]) == 0


def test_an_index_build_reports_its_progress(tmp_path, tiny_encoder):
    reports = []
    with Collection.open(tmp_path / "col", model=tiny_encoder, create=True, index_policy=POLICY,
                         index_progress=lambda done, total: reports.append((done, total))) as col:
        _fill_catalog(col, clustered(900), lambda i: "photos")
        col.rebuild_index()
    assert reports and reports[-1] == (900, 900)
    assert [done for done, _ in reports] == sorted(done for done, _ in reports)


def test_info_shows_index_recall_and_memory(tmp_path, tiny_encoder, capsys):
    import json

    with Collection.open(tmp_path / "col", model=tiny_encoder, create=True, index_policy=POLICY) as col:
        _fill_catalog(col, clustered(800), lambda i: "photos")
        col.rebuild_index()
    capsys.readouterr()
    assert main(["info", "--collection", str(tmp_path / "col"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    # a plain open uses the default policy: the saved ivf index is served as it is, with its figures
    assert info["index_type"] == "ivf" and info["index_recall"] >= 0.9 and info["index_memory"] > 0
    assert info["index_params"]["nprobe"] >= 1 and info["vectors"] == 800 and info["index_saved"] is True


def _index_files(directory) -> dict[str, tuple]:
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns, p.stat().st_size)
            for p in directory.iterdir() if p.name.startswith("index")}


def test_a_search_during_an_ingest_sees_new_rows_and_writes_nothing(tmp_path, tiny_encoder):
    write_good_images(tmp_path / "photos", 4)
    with Collection.open(tmp_path / "col", model=tiny_encoder, create=True) as writer:
        writer.ingest([tmp_path / "photos"], workers=0)
    write_good_images(tmp_path / "photos" / "more", 6, seed=5)
    seen = []
    with Collection.open(tmp_path / "col", model=tiny_encoder) as reader, \
            Collection.open(tmp_path / "col", model=tiny_encoder) as writer:
        before = _index_files(tmp_path / "col")
        assert len(reader.search("x", k=100)) == 4

        def search_between_commits(done: int, total: int) -> None:
            seen.append(len(reader.search("x", k=100)))
            assert _index_files(tmp_path / "col") == before  # the reader caught up in memory only

        writer.ingest([tmp_path / "photos"], workers=0, batch_size=2, progress=search_between_commits)
        assert seen[0] == 4 and seen[-1] == 10 and seen == sorted(seen)
        assert _index_files(tmp_path / "col") != before  # the writer saved on its way out
        assert reader.info().index_vectors == 10


def _tree(directory) -> dict[str, tuple]:
    # SQLite's WAL side files are made by any reader where it can (in a folder it cannot write, it opens
    # the catalog immutable instead); everything of the collection itself must stay as it was.
    return {str(p.relative_to(directory)): (p.stat().st_mtime_ns, p.stat().st_size)
            for p in sorted(directory.rglob("*")) if not p.name.endswith(("-wal", "-shm"))}


def test_reader_on_a_read_only_collection_changes_nothing(tmp_path, tiny_encoder):
    write_good_images(tmp_path / "photos", 5)
    with Collection.open(tmp_path / "col", model=tiny_encoder, create=True) as col:
        col.ingest([tmp_path / "photos"], workers=0)
    (tmp_path / "col" / "index.json").unlink()  # a reader must rebuild in memory, never save
    before = _tree(tmp_path / "col")
    with Collection.open(tmp_path / "col", model=tiny_encoder, read_only=True) as col:
        assert len(col.search("x", k=10)) == 5 and col.info().index_saved is False
        with pytest.raises(CollectionError, match="read-only"):
            col.ingest([tmp_path / "photos"], workers=0)
        with pytest.raises(CollectionError, match="read-only"):
            col.compact()
    assert _tree(tmp_path / "col") == before


_READER = textwrap.dedent("""
    import os, sys
    from mmretrieval.collection.collection import Collection
    from mmretrieval.models.encoder import load_encoder

    encoder = load_encoder(sys.argv[2], device="cpu")  # read while still allowed to
    if os.geteuid() == 0:  # root writes anywhere: become nobody, for whom the folder is truly read-only
        os.setgid(65534)
        os.setuid(65534)
    with Collection.open(sys.argv[1], model=encoder, device="cpu") as col:
        print(len(col.search("x", k=10)), col.catalog.writable)
""")


@pytest.mark.slow
def test_search_in_a_folder_without_write_permission(tmp_path, tiny_model_dir):
    base = Path(tempfile.mkdtemp(prefix="mmr-readonly-"))  # outside pytest's private tmp: another user can reach it
    try:
        os.chmod(base, 0o755)
        write_good_images(tmp_path / "photos", 3)
        with Collection.open(base / "col", model=str(tiny_model_dir), create=True, device="cpu") as col:
            col.ingest([tmp_path / "photos"], workers=0)
        (base / "col" / "index.json").unlink()  # the reader also has to build the index, in memory
        for path in (base / "col").rglob("*"):
            os.chmod(path, 0o555 if path.is_dir() else 0o444)
        os.chmod(base / "col", 0o555)
        before = sorted(p.name for p in (base / "col").rglob("*"))
        script = tmp_path / "reader.py"
        script.write_text(_READER)
        child = subprocess.run([sys.executable, str(script), str(base / "col"), str(tiny_model_dir)],
                               capture_output=True, text=True, timeout=600,
                               env={**os.environ, "PYTHONPATH": os.getcwd()})
        assert child.returncode == 0, child.stderr
        assert child.stdout.split() == ["3", "False"]
        assert sorted(p.name for p in (base / "col").rglob("*")) == before
    finally:
        for path in [base, *base.rglob("*")]:
            os.chmod(path, 0o755)
        shutil.rmtree(base)


def test_prune_touches_only_the_sources_given_and_refuses_a_missing_root(tmp_path, tiny_encoder):
    write_good_images(tmp_path / "A", 3)
    write_good_images(tmp_path / "B", 4, seed=2)
    with Collection.open(tmp_path / "col", model=tiny_encoder, create=True) as col:
        col.ingest([tmp_path / "A", tmp_path / "B"], workers=0)
        shutil.move(tmp_path / "B", tmp_path / "B-unmounted")  # as an unplugged drive would vanish
        (tmp_path / "A" / "good00.jpg").unlink()
        summary = col.ingest([tmp_path / "A"], workers=0, prune=True)
        assert summary.pruned == 1  # A's deleted file only: nothing of B
        assert col.catalog.counts_by_status() == {"ok": 6} and col.info().vectors == 6
        generation = col.catalog.generation
        with pytest.raises(CollectionError, match=rf"{tmp_path / 'B'}.*missing.*nothing was deleted"):
            col.ingest([tmp_path / "B"], workers=0, prune=True)
        assert col.catalog.counts_by_status() == {"ok": 6} and col.catalog.generation == generation
    assert main(["ingest", str(tmp_path / "B"), "--collection", str(tmp_path / "col"), "--prune"]) == 2


def test_prune_pages_through_a_folder_and_leaves_its_namesakes_and_unlistable_folders(tmp_path, tiny_encoder,
                                                                                     monkeypatch):
    from mmretrieval.collection import pruning
    from mmretrieval.collection.catalog import encode_path

    monkeypatch.setattr(pruning, "PRUNE_PAGE", 2)  # several pages for a handful of rows
    folders = {name: write_good_images(tmp_path / name, 3, seed=i)
               for i, name in enumerate(["A", "A/sub", "A/locked", "A-2", "AB"])}
    with Collection.open(tmp_path / "col", model=tiny_encoder, create=True) as col:
        col.ingest([tmp_path / "A", tmp_path / "A-2", tmp_path / "AB"], workers=0)
        for paths in folders.values():  # every file gone, as if the folders were emptied
            for path in paths:
                path.unlink()
        prefix = encode_path(str(tmp_path / "A")) + os.sep.encode()
        pruned = col.catalog.prune_missing([prefix], keep_under=[encode_path(str(tmp_path / "A" / "locked")) + b"/"])
        left = sorted(os.fsdecode(path) for path, in col.catalog._query("SELECT path FROM images"))
    assert pruned == 6  # A and A/sub; not A/locked (could not be listed), nor A-2 and AB (other folders)
    assert left == sorted(str(path) for name in ("A/locked", "A-2", "AB") for path in folders[name])


def test_prune_through_a_list_file_streams_its_entries_in_chunks(tmp_path, tiny_encoder, monkeypatch):
    from mmretrieval.collection import pruning

    monkeypatch.setattr(pruning, "IN_LIST_SIZE", 2)  # several IN (...) queries for a short list
    listed = write_good_images(tmp_path / "listed", 5)
    single, other = write_good_images(tmp_path / "loose", 2, seed=3)
    (tmp_path / "list.txt").write_text("".join(f"listed/{p.name}\n" for p in listed))
    with Collection.open(tmp_path / "col", model=tiny_encoder, create=True) as col:
        col.ingest([tmp_path / "list.txt", single, other], workers=0)
        for path in (*listed[:3], other):
            path.unlink()
        summary = col.ingest([tmp_path / "list.txt", single], workers=0, prune=True)
        assert summary.pruned == 3  # the three listed files gone; `other` is gone too, but was not given
        assert col.catalog.counts_by_status() == {"ok": 4}


def test_cli_compact_auto_compaction_and_index_options(tmp_path, tiny_model_dir, capsys):
    import json

    from test_ingest import scene_jpeg

    paths = write_good_images(tmp_path / "photos", 6)
    collection = str(tmp_path / "col")
    base = ["--collection", collection, "--workers", "0"]
    assert main(["ingest", str(tmp_path / "photos"), *base, "--model", str(tiny_model_dir), "--device", "cpu"]) == 0
    for path in paths[:3]:
        path.unlink()
    assert main(["ingest", str(tmp_path / "photos"), *base, "--prune"]) == 0
    capsys.readouterr()
    assert main(["info", "--collection", collection, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["vectors"] == 3 and info["waste_ratio"] == 0.0  # 50% dead: the writer compacted on its way out
    paths[3].write_bytes(scene_jpeg(40))
    os.utime(paths[3], ns=(10**18, 10**18))
    assert main(["ingest", str(tmp_path / "photos"), *base]) == 0  # one re-embedded: 25% dead, left for later
    capsys.readouterr()
    assert main(["info", "--collection", collection, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["waste_ratio"] == 0.25
    assert main(["compact", "--collection", collection]) == 0
    assert "2 vectors kept, 1 dead rows reclaimed" in capsys.readouterr().err  # only the segment with waste
    assert main(["compact", "--collection", collection]) == 0
    assert ("nothing to compact: no segment holds dead rows, and the catalog's free pages are under 10% of it\n"
            in capsys.readouterr().err)
    assert main(["info", "--collection", collection, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["waste_ratio"] == 0.0 and info["stored_rows"] == 3 and info["vector_dtype"] == "float16"
    assert main(["index", "--collection", collection, "--type", "ivfpq", "--memory-budget", "1M"]) == 0
    assert "built flat index over 3 vectors" in capsys.readouterr().err  # too few to train: noted, flat
    with pytest.raises(SystemExit) as exited:  # argparse's usage error
        main(["index", "--collection", collection, "--memory-budget", "lots"])
    assert exited.value.code == 2 and "not a size" in capsys.readouterr().err


def test_an_index_that_cannot_be_saved_says_the_run_is_committed(tmp_path, tiny_encoder, monkeypatch):
    """A full disk when the writer saves the index on its way out: the ingest's rows are in, and the error says
    so (a bare OSError read as if the run had failed), and the next writer saves the index."""
    import errno

    from mmretrieval.collection.upkeep import IndexKeeper

    def full(self, force=False):
        raise OSError(errno.ENOSPC, "No space left on device")

    write_good_images(tmp_path / "photos", 4)
    with Collection.open(tmp_path / "col", model=tiny_encoder, create=True) as col:
        with monkeypatch.context() as patched:
            patched.setattr(IndexKeeper, "persist", full)
            with pytest.raises(CollectionError, match="everything this run added is committed, but tidying .*"
                                                      "No space left on device.*`mmr index`"):
                col.ingest([tmp_path / "photos"], workers=0)
        assert col.catalog.counts_by_status() == {"ok": 4}
        assert len(col.search("a red circle", k=10)) == 4  # caught up in memory
        col.ingest([tmp_path / "photos"], workers=0)  # the next writer saves it
    with Collection.open(tmp_path / "col") as col:
        assert col.info().index_saved


def test_an_interrupted_rebuild_keeps_the_earlier_index_choice(tmp_path, tiny_encoder):
    """``mmr index --type hnsw`` stopped during the build (Ctrl-C, a kill) must not leave hnsw stored as the choice
    that the next writer then builds unasked."""
    with Collection.open(tmp_path / "col", model=tiny_encoder, create=True, index_policy=POLICY) as col:
        _fill_catalog(col, clustered(400), lambda i: "photos")
        assert col.rebuild_index("flat").index_type == "flat"

        def interrupted(index, blocks, count):
            raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            col.rebuild_index("hnsw", fill=interrupted)
        assert col.info().index_type == "flat"
    (tmp_path / "col" / "index.json").unlink()  # lost: the next writer builds the stored choice again
    with Collection.open(tmp_path / "col", model=tiny_encoder, index_policy=POLICY) as col:
        _fill_catalog(col, clustered(10, seed=1), lambda i: "more")
        col.load_index()
        assert col.info().index_type == "flat"  # "auto" would be ivf at 410, and hnsw was never built


def test_a_commit_between_a_readers_reads_is_not_taken_for_a_broken_index(tmp_path, tiny_encoder, caplog,
                                                                           monkeypatch):
    """A reader catching up during an ingest read the catalog's count, then the new vectors; a batch committed in
    between made the index look one batch ahead, and every such search rebuilt it in memory (12 s, not 2 s)."""
    vectors = clustered(364)
    with Collection.open(tmp_path / "col", model=tiny_encoder, create=True, index_policy=POLICY) as col:
        _fill_catalog(col, vectors[:300], lambda i: "a")
        col.rebuild_index("flat")
    reader = Collection.open(tmp_path / "col", model=tiny_encoder, read_only=True, index_policy=POLICY)
    writer = Collection.open(tmp_path / "col", model=tiny_encoder, index_policy=POLICY)
    try:
        reader.load_index()
        _fill_catalog(writer, vectors[300:332], lambda i: "b")  # something new for the reader to catch up on
        counted = type(reader.catalog).vector_count
        fired = []

        def vector_count(catalog):
            count = counted(catalog)
            if catalog is reader.catalog and not fired:
                fired.append(True)
                _fill_catalog(writer, vectors[332:364], lambda i: "c")  # a writer commits right after the count
            return count

        monkeypatch.setattr(type(reader.catalog), "vector_count", vector_count)
        with caplog.at_level(logging.INFO, logger="mmretrieval.collection.upkeep"):
            reader.load_index()
        assert fired and "rebuilding" not in caplog.text, caplog.text
        monkeypatch.undo()
        reader.load_index()  # the next catch-up takes the batch the first one did not see
        assert reader.info().index_vectors == reader.catalog.vector_count() == 364
    finally:
        reader.close()
        writer.close()
