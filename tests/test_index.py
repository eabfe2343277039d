"""The FAISS layer against a brute-force numpy reference: exact and approximate types, incremental adds and
removals, no -1 padding whatever k, filtered search, and manifest/checksum checks on load."""

from __future__ import annotations

import numpy as np
import pytest

from mmretrieval.errors import CollectionError
from mmretrieval.collection import index as index_module
from mmretrieval.collection.exact_search import exact_search
from mmretrieval.collection.index import VectorIndex, choose_config
from mmretrieval.collection.index_manifest import Manifest

DIM = 16


def clustered(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(20, DIM))
    vectors = centres[rng.integers(0, 20, n)] + 0.3 * rng.normal(size=(n, DIM))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def brute_force(vectors: np.ndarray, ids: np.ndarray, query: np.ndarray, k: int) -> list[int]:
    scores = vectors @ query
    return ids[np.argsort(-scores, kind="stable")[:k]].tolist()


@pytest.mark.parametrize("index_type", ["flat", "ivf", "hnsw"])
def test_search_matches_brute_force_and_never_pads(index_type):
    vectors = clustered(400)
    ids = np.arange(400, dtype=np.int64) * 7 + 3  # ids are catalog ids, not positions
    config = choose_config(400, index_type, nprobe=64, ef_search=256)
    index = VectorIndex.build(config, ids, vectors, DIM)
    queries = clustered(5, seed=1)
    for query in queries:
        _, found = index.search(query[None], 10)
        overlap = len(set(found[0].tolist()) & set(brute_force(vectors, ids, query, 10)))
        assert overlap >= (10 if index_type == "flat" else 9)
    scores, found = index.search(queries[:1], 1000)
    assert found.shape == (1, 400) and (found >= 0).all() and len(set(found[0].tolist())) == 400
    assert np.all(np.diff(scores[0]) <= 1e-6)


@pytest.mark.parametrize("index_type", ["flat", "ivf", "hnsw"])
def test_allowed_ids_filter_and_small_k(index_type):
    vectors = clustered(300)
    ids = np.arange(300, dtype=np.int64) + 1
    index = VectorIndex.build(choose_config(300, index_type, nprobe=64), ids, vectors, DIM)
    allowed = np.array([5, 17, 250], dtype=np.int64)
    _, found = index.search(vectors[:1], 10, allowed)
    assert set(found[0].tolist()) <= set(allowed.tolist()) and (found >= 0).all()
    assert sorted(found[0].tolist()) == [5, 17, 250]


@pytest.mark.parametrize("index_type", ["flat", "ivf"])
def test_incremental_add_and_remove_equal_a_rebuild(index_type):
    vectors = clustered(300)
    ids = np.arange(300, dtype=np.int64) + 1
    config = choose_config(300, index_type, nprobe=64)
    index = VectorIndex.build(config, ids[:200], vectors[:200], DIM)
    index.add(ids[200:], vectors[200:])
    removed = ids[::3]
    assert index.remove(removed) == len(removed)
    keep = ~np.isin(ids, removed)
    assert sorted(index.ids().tolist()) == ids[keep].tolist()
    for query in clustered(5, seed=2):
        scores, found = index.search(query[None], 20)
        assert not set(found[0].tolist()) & set(removed.tolist())
        assert set(found[0].tolist()) == set(brute_force(vectors[keep], ids[keep], query, 20))
        np.testing.assert_allclose(scores[0], vectors[np.searchsorted(ids, found[0])] @ query, atol=2e-3)


def test_hnsw_refuses_removal():
    index = VectorIndex.build(choose_config(50, "hnsw"), np.arange(50), clustered(50), DIM)
    with pytest.raises(CollectionError):
        index.remove(np.array([1]))


def test_empty_index_returns_nothing():
    index = VectorIndex.build(choose_config(0), np.zeros(0, np.int64), np.zeros((0, DIM), np.float32), DIM)
    scores, found = index.search(clustered(1), 10)
    assert found.shape == (1, 0)


def test_auto_choice_and_unknown_type():
    assert choose_config(1000).type == "flat"
    big = choose_config(1_000_000)
    assert big.type == "ivf" and big.nlist == 4096 and big.nprobe == 32
    with pytest.raises(CollectionError):
        choose_config(10, "lsh")


def _manifest(generation: int = 1) -> Manifest:
    return Manifest(model_key="abc", dim=DIM, index_type="", params={}, count=0, generation=generation)


def test_save_load_and_detect_corruption(tmp_path):
    vectors = clustered(100)
    index = VectorIndex.build(choose_config(100), np.arange(100), vectors, DIM)
    saved = index.save(tmp_path, _manifest(3))
    assert saved.file.startswith("index-3-") and saved.file.endswith(".faiss") and saved.count == 100
    loaded, manifest = VectorIndex.load(tmp_path, "abc", DIM)
    assert manifest == saved and loaded.count == 100
    assert VectorIndex.load(tmp_path, "another-model", DIM) is None
    path = tmp_path / saved.file
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte: FAISS would load this silently
    path.write_bytes(bytes(data))
    assert VectorIndex.load(tmp_path, "abc", DIM) is None
    path.write_bytes(bytes(data[:100]))
    assert VectorIndex.load(tmp_path, "abc", DIM) is None


def test_save_replaces_the_previous_generation(tmp_path):
    index = VectorIndex.build(choose_config(10), np.arange(10), clustered(10), DIM)
    index.save(tmp_path, _manifest(1))
    index.add(np.array([99]), clustered(1, seed=3))
    saved = index.save(tmp_path, _manifest(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([saved.file, "index.json"])
    assert VectorIndex.load(tmp_path, "abc", DIM)[0].count == 11


def test_a_save_killed_before_its_manifest_leaves_the_saved_index_loadable(tmp_path, monkeypatch):
    """``mmr index --type hnsw`` rebuilds at the same generation; killed between writing the new index file and
    the manifest, the old manifest must still name an intact file (it named the one the rebuild overwrote)."""
    vectors = clustered(200)
    flat = VectorIndex.build(choose_config(200, "flat"), np.arange(200), vectors, DIM)
    saved = flat.save(tmp_path, _manifest(4))
    hnsw = VectorIndex.build(choose_config(200, "hnsw"), np.arange(200), vectors, DIM)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # stands for SIGKILL: nothing after this point runs

    monkeypatch.setattr(index_module, "atomic_write_text", killed)
    with pytest.raises(KeyboardInterrupt):
        hnsw.save(tmp_path, _manifest(4))
    monkeypatch.undo()
    loaded = VectorIndex.load(tmp_path, "abc", DIM)
    assert loaded is not None, "the manifest names a file the interrupted save replaced"
    assert loaded[1] == saved and loaded[0].config.type == "flat" and loaded[0].count == 200


def _far_allowed(vectors: np.ndarray, ids: np.ndarray, query: np.ndarray, count: int = 50) -> np.ndarray:
    """``count`` ids among the vectors least like ``query``: outside every list or graph region it visits."""
    return np.sort(ids[np.argsort(vectors @ query)[:count]])


@pytest.mark.parametrize("index_type", ["ivf", "hnsw"])
def test_filtered_search_of_far_ids_returns_k_exact_hits(index_type):
    vectors = clustered(4000)
    ids = np.arange(4000, dtype=np.int64) + 1
    config = choose_config(4000, index_type, nlist=64, nprobe=1, ef_search=16)
    index = VectorIndex.build(config, ids, vectors, DIM)
    for query in clustered(3, seed=5):
        allowed = _far_allowed(vectors, ids, query)
        scores, found = index.search(query[None], 10, allowed)
        in_allowed = np.isin(ids, allowed)
        expected = brute_force(vectors[in_allowed], ids[in_allowed], query, 10)
        assert found.shape == (1, 10) and set(found[0].tolist()) == set(expected)
        assert np.all(np.diff(scores[0]) <= 1e-6)


def test_exact_search_in_small_chunks_equals_one_pass():
    vectors = clustered(500)
    ids = np.arange(500, dtype=np.int64) * 3 + 1
    allowed = ids[::4]
    load = lambda wanted: (wanted, vectors[np.searchsorted(ids, wanted)])  # noqa: E731
    query = clustered(1, seed=9)
    one_pass = exact_search(query, 10, allowed, load)
    chunked = exact_search(query, 10, allowed, load, chunk=7)
    np.testing.assert_array_equal(one_pass[1], chunked[1])
    assert chunked[1][0].tolist() == brute_force(vectors[::4], allowed, query[0], 10)


@pytest.mark.parametrize("config", [
    dict(type="ivf", nlist=16, nprobe=4),
    dict(type="ivfpq", nlist=16, nprobe=4, pq_m=8, pq_bits=4, opq=1),  # behind an OPQ rotation
])
def test_a_presized_fill_makes_the_index_block_by_block_adds_make(config):
    """Lists allocated at their final size first, then filled with the first pass's assignments: every list holds
    the same ids, in the same order, with the same codes, as add_with_ids block by block gives."""
    import faiss

    from mmretrieval.collection.index import IndexConfig

    rng = np.random.default_rng(4)
    vectors = rng.standard_normal((3000, 32)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = np.arange(10, 3010, dtype=np.int64)
    config = IndexConfig(**config)
    blocks = lambda: ((ids[s:s + 700], vectors[s:s + 700]) for s in range(0, len(ids), 700))  # noqa: E731
    plain = VectorIndex.trained(config, 32, vectors[:1500])
    for block_ids, block in blocks():
        plain.add(block_ids, block)
    presized = VectorIndex.trained(config, 32, vectors[:1500])
    progress = []
    presized.fill(blocks, len(ids), lambda done, total: progress.append((done, total)))
    assert presized.count == plain.count == len(ids) and progress[-1] == (len(ids), len(ids))
    mine, theirs = (faiss.extract_index_ivf(i.faiss_index).invlists for i in (presized, plain))
    for list_no in range(config.nlist):
        size = theirs.list_size(list_no)
        assert mine.list_size(list_no) == size
        assert np.array_equal(faiss.rev_swig_ptr(mine.get_ids(list_no), size),
                              faiss.rev_swig_ptr(theirs.get_ids(list_no), size))
        code_bytes = size * theirs.code_size
        assert np.array_equal(faiss.rev_swig_ptr(mine.get_codes(list_no), code_bytes),
                              faiss.rev_swig_ptr(theirs.get_codes(list_no), code_bytes))
    assert np.array_equal(presized.search(vectors[:5], 10)[1], plain.search(vectors[:5], 10)[1])
    with pytest.raises(CollectionError, match="changed while the index was being built"):
        calls = iter([blocks(), iter(list(blocks())[:-1])])  # the second pass ends early
        VectorIndex.trained(config, 32, vectors[:1500]).fill(lambda: next(calls), len(ids))


def test_a_pq_m_that_does_not_divide_the_dimension_builds_through_opq():
    """FAISS's PQ splits a vector into pq_m equal parts: without OPQ's rotation (automatic from 20,000 vectors) a
    pq_m of 7 at 32-d stopped on FAISS's C++ assertion."""
    config = choose_config(2000, "ivfpq", dim=DIM * 2, pq_m=7)
    assert config.opq == 1 and choose_config(2000, "ivfpq", dim=DIM * 2, pq_m=8).opq == 0
    vectors = np.concatenate([clustered(2000), clustered(2000, seed=1)], axis=1) / np.sqrt(2)
    index = VectorIndex.build(config, np.arange(2000), vectors.astype(np.float32), DIM * 2)
    _, found = index.search(vectors[:5].astype(np.float32), 10)
    assert found.shape == (5, 10) and (found >= 0).all()
    with pytest.raises(CollectionError, match="--pq-m 40: .* at most 32"):
        choose_config(2000, "ivfpq", dim=32, pq_m=40)


@pytest.mark.parametrize("index_type", ["ivf", "ivfpq"])
def test_only_the_queries_whose_lists_were_short_probe_more(index_type):
    """One short query made the whole batch probe twice as many lists: the tuner, which sends its queries as one
    batch, measured nprobe=1 as 2, saw no gain from 1 to 2 and kept 1 (recall@10 0.35 against a 0.95 target, at
    200,000 vectors). Each query of a batch now gets what it would get alone."""
    vectors = clustered(3000)
    ids = np.arange(3000, dtype=np.int64)
    index = VectorIndex.build(choose_config(3000, index_type, dim=DIM, nlist=64, nprobe=1, pq_m=8), ids, vectors, DIM)
    queries = clustered(60, seed=3)
    k = 40  # about the size of a list: some queries' one list holds fewer, others' more
    batch_scores, batch_ids = index.search(queries, k)
    alone = [index.search(query[None], k) for query in queries]
    _, probed_once = index.faiss_index.search(queries, k, params=index._search_params(k, None, nprobe=1))
    assert 0 < (probed_once < 0).any(axis=1).sum() < len(queries)  # the case: a batch of short and long queries
    for row, (scores, found) in enumerate(alone):
        assert batch_ids[row].tolist() == found[0].tolist()
        np.testing.assert_allclose(batch_scores[row], scores[0], atol=1e-6)
    assert (batch_ids >= 0).all()


@pytest.mark.parametrize("index_type", ["ivf", "ivfpq"])
def test_an_ivf_search_returns_k_hits_when_the_probed_lists_hold_fewer(index_type):
    """nprobe lists of a 64-list IVF over 3,000 vectors hold ~50 vectors each: a search for 500 came back with
    the ~170 that the probed lists held (the web UI's pages stopped at 107 of 7,500 images)."""
    vectors = clustered(3000)
    ids = np.arange(3000, dtype=np.int64)
    config = choose_config(3000, index_type, dim=DIM, nlist=64, nprobe=2, pq_m=8)
    index = VectorIndex.build(config, ids, vectors, DIM)
    scores, found = index.search(vectors[:3], 500)
    assert found.shape == (3, 500) and (found >= 0).all()
    assert all(len(set(row)) == 500 for row in found.tolist())
    assert np.all(np.diff(scores, axis=1) <= 1e-6)  # still best first
    top, _ = index.search(vectors[:3], 5)  # a small k is answered with the tuned nprobe, as before
    assert top.shape == (3, 5)

