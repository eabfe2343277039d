"""A Ray node lost mid-ingest: its decode tasks and model actor die with it, a fresh node takes over, and the
collection ends with every file exactly once and the single-machine vectors. A cluster of its own (a head
without CPUs, so all work runs on worker nodes), hence a module of its own."""

from __future__ import annotations

import pytest

from mmretrieval.collection.collection import Collection

from test_ray_ingest import assert_nothing_lost_or_duplicated, small_config
from test_ray_ingest import photos, single_machine  # noqa: F401  (fixtures: pytest finds them by name)

ray = pytest.importorskip("ray")
cluster_utils = pytest.importorskip("ray.cluster_utils")

_NODE = {"num_cpus": 2, "object_store_memory": 100 * 1024**2}


@pytest.fixture(scope="module")
def cluster():
    # The head gets no CPUs: decode tasks and the embed actor can only run on the worker node the test removes.
    cluster = cluster_utils.Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "object_store_memory": 100 * 1024**2, "include_dashboard": False})
    cluster.add_node(**_NODE)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


@pytest.mark.slow
def test_losing_a_node_mid_run_loses_and_duplicates_nothing(cluster, photos, single_machine, shapes_encoder,  # noqa: F811
                                                            tmp_path):
    folder, _ = photos
    removed_at = []

    def remove_the_worker_once(done: int, total: int) -> None:
        if done and not removed_at:
            (worker,) = cluster.worker_nodes
            cluster.remove_node(worker, allow_graceful=False)  # as a machine that loses power
            removed_at.append((done, total))
            cluster.add_node(**_NODE)  # a fresh machine joins, so the work can finish

    with Collection.open(tmp_path / "col", model=shapes_encoder, create=True) as col:
        summary = col.ingest([folder], ray=small_config(segment_rows=2, batch_size=2), progress=remove_the_worker_once)
        # the node went with work still to do; the head has no CPUs, so the rest ran on the fresh node
        assert removed_at and removed_at[0][0] < removed_at[0][1]
        assert_nothing_lost_or_duplicated(col, summary, single_machine, folder)
