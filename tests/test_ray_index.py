"""Building the index on Ray (``mmr index --ray``): shards added in parallel tasks and merged on disk answer as
a one-process build, and the collection keeps an ordinary, self-contained index file that later ingests
change safely. One local Ray per module (starting one costs seconds)."""

from __future__ import annotations

import json

import faiss
import numpy as np
import pytest

from mmretrieval.cli import main
from mmretrieval.collection.collection import Collection
from mmretrieval.collection.index import IndexConfig, VectorIndex
from mmretrieval.ingest.ray_index import RayIndexFill, ShardPlan, add_on_ray

from test_collection import _fill_catalog
from test_index_upkeep import POLICY, clustered

ray = pytest.importorskip("ray")

pytestmark = pytest.mark.usefixtures("local_ray")  # one local Ray per module (tests/conftest.py)


@pytest.mark.slow
@pytest.mark.parametrize("config", [dict(type="ivf", nlist=32, nprobe=6),
                                    dict(type="ivfpq", nlist=32, nprobe=6, pq_m=8, pq_bits=4, opq=1)])
def test_parallel_index_build_answers_as_a_one_process_build(tmp_path, config):
    dim, count = 32, 12_000
    vectors = clustered(count, dim)
    ids = np.arange(count, dtype=np.int64) * 3 + 7  # global catalog ids, not positions
    trained = VectorIndex.trained(IndexConfig(**config), dim, vectors[::4]).faiss_index
    reference = faiss.deserialize_index(faiss.serialize_index(trained))
    reference.add_with_ids(vectors, ids)
    blocks = [(ids[s:s + 2500], vectors[s:s + 2500]) for s in range(0, count, 2500)]
    seen = []
    merged = add_on_ray(trained, blocks, count, tmp_path / "work", tmp_path / "index.ivfdata",
                        ShardPlan(in_flight=2), progress=lambda done, total: seen.append(done))
    assert merged.ntotal == count and seen[-1] == count and len(seen) == len(blocks)
    assert not list((tmp_path / "work").iterdir())  # shards removed after the merge
    queries = clustered(20, dim, seed=1)
    for index in (merged, reference):
        faiss.extract_index_ivf(index).nprobe = 6
    scores, found = merged.search(queries, 10)
    expected_scores, expected = reference.search(queries, 10)
    np.testing.assert_allclose(scores, expected_scores, atol=1e-4)
    assert (np.sort(found, axis=1) == np.sort(expected, axis=1)).mean() > 0.98  # ties may swap places
    assert set(found.ravel().tolist()) <= set(ids.tolist())

    faiss.write_index(merged, str(tmp_path / "index.faiss"))  # refers to index.ivfdata, mapped on read
    reread = faiss.read_index(str(tmp_path / "index.faiss"), faiss.IO_FLAG_READ_ONLY)  # never written in place
    faiss.extract_index_ivf(reread).nprobe = 6
    assert np.array_equal(reread.search(queries, 10)[1], found)
    assert faiss.downcast_InvertedLists(faiss.extract_index_ivf(reread).invlists).read_only


def _neighbours(col: Collection, query_ids: np.ndarray) -> list[set[int]]:
    return [{hit.id for hit in col.similar(int(i), k=10)} for i in query_ids]


def _saved_index(directory) -> faiss.Index:
    manifest = json.loads((directory / "index.json").read_text())
    return faiss.read_index(str(directory / manifest["file"]))


@pytest.mark.slow
@pytest.mark.parametrize("count, expected", [(800, "ivf"), (2000, "ivfpq")])
def test_a_collection_index_built_on_ray_is_the_local_build(tmp_path, tiny_encoder, count, expected):
    vectors = clustered(count)
    with Collection.open(tmp_path / "local", model=tiny_encoder, create=True, index_policy=POLICY) as local:
        ids = _fill_catalog(local, vectors, lambda i: "photos")
        local_manifest = local.rebuild_index()
        query_ids = ids[:: count // 20][:20]
        local_hits = _neighbours(local, query_ids)
    seen = []
    fill = RayIndexFill(str(tmp_path / "work"), plan=ShardPlan(in_flight=2, rows_per_task=300),
                        progress=lambda done, total: seen.append((done, total)))
    with Collection.open(tmp_path / "ray", model=tiny_encoder, create=True, index_policy=POLICY) as col:
        assert np.array_equal(_fill_catalog(col, vectors, lambda i: "photos"), ids)
        manifest = col.rebuild_index(fill=fill)
        assert len(seen) == -(-count // 300) and seen[-1] == (count, count)  # several shards, all added
        assert not list((tmp_path / "work").iterdir())  # shards and merged lists deleted
    # the collection's choice of type, parameters and tuning, whoever added the vectors
    assert (manifest.index_type, manifest.params, manifest.count) == (expected, local_manifest.params, count)
    assert manifest.recall == local_manifest.recall
    assert not list((tmp_path / "ray").rglob("*.ivfdata"))
    saved = _saved_index(tmp_path / "ray")  # one self-contained file, its lists in memory once read
    assert isinstance(faiss.downcast_InvertedLists(faiss.extract_index_ivf(saved).invlists), faiss.ArrayInvertedLists)

    with Collection.open(tmp_path / "ray", index_policy=POLICY) as col:  # a fresh open reads the saved file
        assert col.info().index_type == expected and col.info().index_saved is True
        ray_hits = _neighbours(col, query_ids)
        overlap = np.mean([len(a & b) / 10 for a, b in zip(ray_hits, local_hits)])
        if expected == "ivf":
            assert ray_hits == local_hits  # fp16 codes of the vectors: the same lists, the same scores
        else:
            assert overlap >= 0.95

        more = clustered(300, seed=3)
        new_ids = _fill_catalog(col, more, lambda i: "more")  # as an ingest would, then a search catches up
        hits = col.similar(int(new_ids[0]), k=5)
        assert hits and hits[0].id in set(new_ids.tolist())
        with col.writing():  # a writer's exit saves the index it changed in memory
            pass
        expected_count = col.catalog.vector_count()
    assert expected_count == count + 300
    reloaded = _saved_index(tmp_path / "ray")
    reloaded_ids = VectorIndex(reloaded, IndexConfig(type=expected), 32).ids()
    assert len(reloaded_ids) == len(np.unique(reloaded_ids)) == expected_count
    with Collection.open(tmp_path / "ray", index_policy=POLICY) as col:
        assert col.info().index_vectors == expected_count and col.info().index_saved is True
        assert col.similar(int(new_ids[1]), k=5)[0].id in set(new_ids.tolist())


@pytest.mark.slow
def test_mmr_index_ray_from_the_command_line(tmp_path, tiny_encoder, capfd):
    collection = str(tmp_path / "col")
    with Collection.open(collection, model=tiny_encoder, create=True) as col:
        _fill_catalog(col, clustered(3000), lambda i: "photos")
    capfd.readouterr()
    assert main(["index", "--collection", collection, "--ray"]) == 0  # 3,000 vectors: auto is flat
    err = capfd.readouterr().err
    assert "built flat index over 3000 vectors" in err and "built in this process, without Ray" in err
    assert main(["index", "--collection", collection, "--type", "ivf", "--nlist", "32", "--ray"]) == 0
    out, err = capfd.readouterr()
    assert "built ivf index over 3000 vectors nlist=32" in err and "without Ray" not in err
    assert out == ""  # FAISS's own merge messages too stay off stdout
    assert main(["info", "--collection", collection, "--json"]) == 0
    info = json.loads(capfd.readouterr().out)
    assert (info["index_type"], info["index_vectors"], info["index_saved"]) == ("ivf", 3000, True)
    assert info["index_params"]["nlist"] == 32 and info["index_recall"] >= 0.9
    assert main(["index", "--collection", collection, "--ray-work", str(tmp_path / "w")]) == 2
    assert "--ray-work needs --ray" in capfd.readouterr().err
