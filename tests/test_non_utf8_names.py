"""Names whose bytes are not UTF-8 (Linux allows any byte but '/' and NUL): Python holds them as lone surrogates,
which SQLite, FAISS and pyarrow refuse as text. Found by a walkthrough: each crashed a whole command."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from mmretrieval.cli import main
from mmretrieval.collection.collection import Collection
from mmretrieval.collection.exports import export_embeddings
from mmretrieval.json_lines import bytes_escaped
from test_ingest import write_good_images

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="file names of any bytes are Linux's")


def _named(folder: Path, raw: bytes) -> Path:
    """``folder / raw`` for a name given as bytes."""
    return Path(os.fsdecode(os.path.join(os.fsencode(folder), raw)))


def test_bytes_escaped_writes_a_names_odd_bytes_as_escapes():
    assert bytes_escaped("plain café") == "plain café"
    assert bytes_escaped(os.fsdecode(b"dangl\xe9.png")) == "dangl\\xe9.png"
    assert bytes_escaped("lone \ud800 surrogate") == "lone \\ud800 surrogate"


def test_a_broken_link_whose_name_is_not_utf8_is_skipped_and_the_rest_ingested(tmp_path, tiny_model_dir, capsys):
    photos = tmp_path / "photos"
    write_good_images(photos, 2)
    link = _named(photos, b"dangl\xe9.png")
    link.symlink_to("nowhere.png")
    collection = str(tmp_path / "col")
    assert main(["ingest", str(photos), "--collection", collection, "--model", str(tiny_model_dir),
                 "--device", "cpu", "--workers", "0"]) == 0
    assert "embedded 2" in capsys.readouterr().err
    assert main(["info", "--collection", collection, "--failures", "--json"]) == 0
    import json

    (failure,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert os.fsencode(failure["path"]) == os.fsencode(link) and failure["reason"] == "broken_link"
    assert "dangl\\xe9.png is a broken link" in failure["message"]


def test_a_collection_in_a_folder_whose_name_is_not_utf8_saves_and_loads_its_index(tmp_path, tiny_encoder, caplog):
    photos = tmp_path / "photos"
    write_good_images(photos, 4)
    folder = _named(tmp_path, b"col\xff.mmr")
    with Collection.open(folder, model=tiny_encoder, create=True) as col:
        col.ingest([photos], workers=0)
        expected = [(hit.path, hit.score) for hit in col.search("a shape", k=4)]
    (saved,) = [name for name in os.listdir(folder) if name.endswith(".faiss")]
    with Collection.open(folder, model=tiny_encoder) as col, caplog.at_level("WARNING"):
        assert [(hit.path, hit.score) for hit in col.search("a shape", k=4)] == expected
    assert "ignoring the saved index" not in caplog.text  # read back, not rebuilt in memory
    assert [name for name in os.listdir(folder) if name.endswith(".faiss")] == [saved]


def test_import_from_a_folder_whose_name_is_not_utf8_is_recorded_and_not_repeated(tmp_path, tiny_model_dir, capsys):
    photos = tmp_path / "photos"
    write_good_images(photos, 3)
    source = str(tmp_path / "source")
    base = ["--device", "cpu", "--workers", "0"]
    assert main(["ingest", str(photos), "--collection", source, "--model", str(tiny_model_dir), *base]) == 0
    exported = _named(tmp_path, b"exp\xff")
    with Collection.open(source) as col:  # (the command prints the name, which capsys's strict stderr cannot)
        export_embeddings(col, exported)
    target = str(tmp_path / "target")
    assert main(["import", str(exported), "--collection", target, "--model", str(tiny_model_dir)]) == 0
    assert "imported 3 vectors (1 shard read)" in capsys.readouterr().err
    assert main(["import", str(exported), "--collection", target]) == 0
    assert "1 already imported shard," in capsys.readouterr().err


def test_ray_in_a_collection_whose_folder_is_not_utf8(tmp_path, tiny_model_dir):
    """Ray sends its driver's command line to the cluster as UTF-8, and its file systems (pyarrow) and FAISS's
    on-disk lists take paths as UTF-8: a collection folder named in other bytes made `ray.init` and the work
    folders fail with a bare UnicodeEncodeError. A subprocess, so that the command line holds the name."""
    pytest.importorskip("ray")
    import subprocess

    folder = _named(tmp_path, b"caf\xe9")
    write_good_images(folder / "photos", 6)
    collection = folder / "col"
    command = [sys.executable, "-m", "mmretrieval", "ingest", "--collection", str(collection), "--model",
               str(tiny_model_dir), "--ray"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_ADDRESS": "", "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"}

    refused = subprocess.run([*command, "--", str(folder / "photos")], capture_output=True, env=env, timeout=300)
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr.decode().strip() == (
        f"mmr ingest: error: Ray cannot work in {bytes_escaped(str(collection))}/ray-results: its path is not UTF-8 "
        "text, which Ray's file systems and FAISS need; give --ray-output a folder whose path is UTF-8 (one every "
        "node reaches)")

    done = subprocess.run([*command, "--ray-output", str(tmp_path / "out"), "--", str(folder / "photos")],
                          capture_output=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    with Collection.open(collection) as opened:
        assert opened.catalog.vector_ids().size == 6
        searchable = opened.search(opened.vectors()[1][:1], k=3)

    index = subprocess.run([sys.executable, "-m", "mmretrieval", "index", "--collection", str(collection), "--type",
                            "ivf", "--nlist", "2", "--ray"], capture_output=True, env=env, timeout=300)
    assert index.returncode == 2 and b"give --ray-work a folder whose path is UTF-8" in index.stderr, index.stderr
    with Collection.open(collection) as opened:  # the refused build changed nothing
        assert [hit.id for hit in opened.search(opened.vectors()[1][:1], k=3)] == [hit.id for hit in searchable]


def test_the_demo_scenes_can_be_drawn_in_a_folder_whose_name_is_not_utf8(tmp_path):
    from mmretrieval.demo import DemoConfig, write_scenes
    from mmretrieval.ingest.batches import SourceFile
    from mmretrieval.ingest.reader import discover

    root = _named(tmp_path, b"d\xe9mo")
    listed = write_scenes(root, DemoConfig(count=3))
    found = list(discover([listed]))
    assert all(isinstance(item, SourceFile) and os.path.isfile(item.path) for item in found), found
    assert [os.path.basename(item.path) for item in found] == [f"scene-{i:05d}.png" for i in range(3)]


def test_results_from_a_uri_are_not_staged_in_a_folder_whose_name_is_not_utf8(tmp_path):
    pytest.importorskip("pyarrow")
    from mmretrieval.errors import CollectionError
    from mmretrieval.ingest.ray_segments import ResultDrop

    staging = _named(tmp_path, b"caf\xe9") / "ray-staging"
    with pytest.raises(CollectionError, match=r"caf\\xe9/ray-staging: .* move the collection to a folder whose path"):
        ResultDrop("s3://bucket/run1", str(staging)).prepare()
    assert not staging.exists()
