"""Links met while walking a folder: a folder's real path wins over any link to it, whatever the names' order,
and a broken link is reported as broken, not as leaving the folder or as a missing file."""

from __future__ import annotations

import os

import pytest

from mmretrieval.cli import main
from mmretrieval.collection.collection import Collection
from mmretrieval.ingest.batches import Skipped, SourceFile
from mmretrieval.ingest.reader import discover
from test_ingest import write_good_images


def found_in(root) -> dict[str, str]:
    """What discover yields under ``root``: relative path -> ``file`` or the skip's reason."""
    return {os.path.relpath(item.path, root): getattr(item, "reason", "file") for item in discover([root])}


# (real folder, link, what the link points to as written): the link sorting before and after its target,
# a sibling, a target deeper than the link, a link deeper than its target, and a link in another branch
FOLDER_LINKS = [
    ("zreal", "alink", "zreal"),
    ("areal", "zlink", "areal"),
    ("z/deep/real", "alink", "z/deep/real"),
    ("real", "a/b/link", "../../real"),
    ("m/real", "a/link", "../m/real"),
    ("b/real", "b/a-link", "real"),
]


@pytest.mark.parametrize("real, link, target", FOLDER_LINKS, ids=[link for _, link, _ in FOLDER_LINKS])
def test_a_folder_is_found_under_its_real_path_and_the_link_to_it_is_skipped(tmp_path, real, link, target):
    root = tmp_path / "tree"
    write_good_images(root / real, 3)
    (root / link).parent.mkdir(parents=True, exist_ok=True)
    (root / link).symlink_to(target, target_is_directory=True)
    found = found_in(root)
    assert found == {**{f"{real}/good{i:02d}.jpg": "file" for i in range(3)}, link: "symlink_loop"}
    skip = next(item for item in discover([root]) if isinstance(item, Skipped))
    assert str(root / real) in skip.message  # says where the files are catalogued instead


def test_a_loop_back_to_the_root_is_still_skipped_and_the_walk_order_is_stable(tmp_path):
    root = tmp_path / "tree"
    for folder in ("b", "a/inner", "c"):
        write_good_images(root / folder, 1)
    (root / "a" / "up").symlink_to(root, target_is_directory=True)
    (root / "a" / "to-c").symlink_to("../c", target_is_directory=True)
    order = [os.path.relpath(item.path, root) for item in discover([root])]
    # real folders depth-first in name order, as before; links afterwards, in the order they were met
    assert order == ["a/inner/good00.jpg", "b/good00.jpg", "c/good00.jpg", "a/to-c", "a/up"]
    assert order == [os.path.relpath(item.path, root) for item in discover([root])]
    assert found_in(root)["a/up"] == "symlink_loop"


def test_a_link_is_walked_when_it_is_the_only_way_in(tmp_path):
    root = tmp_path / "tree"
    write_good_images(root / ".hidden" / "album", 2)  # never walked by its own (hidden) path
    write_good_images(root / "z", 1)
    (root / "album").symlink_to(".hidden/album", target_is_directory=True)
    (root / "copy").symlink_to(".hidden/album", target_is_directory=True)  # the link walked second is skipped
    outside = tmp_path / "outside"
    write_good_images(outside, 1)
    (root / "out").symlink_to(outside, target_is_directory=True)
    assert found_in(root) == {"album/good00.jpg": "file", "album/good01.jpg": "file", "z/good00.jpg": "file",
                              "copy": "symlink_loop", "out": "link_outside_root"}


def test_broken_links_are_reported_as_broken_where_a_file_would_be_read(tmp_path):
    root = tmp_path / "tree"
    write_good_images(root, 1)
    (root / "dangling.jpg").symlink_to("/nonexistent/x.jpg")  # outside the folder, but first of all broken
    (root / "inside.png").symlink_to("nowhere.png")
    (root / "no-extension").symlink_to("gone")  # would be sniffed by content; it has none
    (root / "odd.xyz").symlink_to("gone.xyz")
    (root / "chain.jpg").symlink_to("inside.png")  # a link to a broken link
    (root / "notes.txt").symlink_to("/nonexistent/notes.txt")  # never read, whatever it points to
    (root / ".hidden.jpg").symlink_to("gone.jpg")  # hidden: never looked at
    (root / "self.jpg").symlink_to(root / "self.jpg")
    found = found_in(root)
    assert found == {"good00.jpg": "file", "dangling.jpg": "broken_link", "inside.png": "broken_link",
                     "no-extension": "broken_link", "odd.xyz": "broken_link", "chain.jpg": "broken_link",
                     "self.jpg": "symlink_loop"}
    dangling = next(item for item in discover([root]) if item.path.endswith("dangling.jpg"))
    assert "/nonexistent/x.jpg" in dangling.message and "does not exist" in dangling.message
    assert "outside" not in dangling.message


def test_file_links_are_read_as_before(tmp_path):
    root = tmp_path / "tree"
    good = write_good_images(root / "real", 1)[0]
    (root / "copy.jpg").symlink_to("real/good00.jpg")  # inside: read under the link's own path
    outside = write_good_images(tmp_path / "outside", 1)[0]
    (root / "out.jpg").symlink_to(outside)
    items = {os.path.relpath(item.path, root): item for item in discover([root])}
    assert set(items) == {"real/good00.jpg", "copy.jpg", "out.jpg"}
    assert isinstance(items["copy.jpg"], SourceFile) and items["copy.jpg"].size == good.stat().st_size
    assert items["out.jpg"].reason == "link_outside_root"


def test_the_real_folder_is_catalogued_and_survives_removing_the_link(tmp_path, tiny_encoder):
    root = tmp_path / "tree3"
    write_good_images(root / "zreal", 3)
    (root / "alink").symlink_to("zreal", target_is_directory=True)
    with Collection.open(tmp_path / "v2", model=tiny_encoder, create=True) as col:
        summary = col.ingest([root], workers=0)
        assert summary.embedded == 3 and summary.skipped == {"symlink_loop": 1}
        assert [(f.path, f.reason) for f in col.failures()] == [(str(root / "alink"), "symlink_loop")]
        assert len(col.search("a shape", k=10, path_prefix=str(root / "zreal"))) == 3
        (root / "alink").unlink()
        again = col.ingest([root], workers=0, prune=True)
        assert (again.embedded, again.duplicates, again.unchanged) == (0, 0, 3)


def test_info_failures_names_a_broken_link_as_broken(tmp_path, tiny_model_dir, capsys):
    photos = tmp_path / "photos"
    write_good_images(photos, 2)
    (photos / "dangling.jpg").symlink_to("/nonexistent/x.jpg")
    collection = str(tmp_path / "col")
    assert main(["ingest", str(photos), "--collection", collection, "--model", str(tiny_model_dir),
                 "--device", "cpu", "--workers", "0"]) == 0
    assert "skipped 1 (broken_link 1)" in capsys.readouterr().err
    assert main(["info", "--collection", collection, "--failures"]) == 0
    path, reason, message = capsys.readouterr().out.rstrip("\n").split("\t")
    assert (path, reason) == (str(photos / "dangling.jpg"), "broken_link")
    assert "/nonexistent/x.jpg does not exist" in message


def test_a_folder_given_twice_by_a_link_or_from_inside_is_walked_once(tmp_path):
    """``mmr ingest w2 w2link`` catalogued every image twice, once under each path; a folder inside another
    source (either order) is read once too, and is not reported as a link loop."""
    write_good_images(tmp_path / "w2" / "sub", 2)
    write_good_images(tmp_path / "w2", 1)
    (tmp_path / "w2link").symlink_to("w2", target_is_directory=True)
    for sources in (["w2", "w2link"], ["w2link", "w2"], ["w2/sub", "w2"], ["w2", "w2/sub"]):
        found = list(discover([str(tmp_path / source) for source in sources]))
        files = [item.path for item in found if isinstance(item, SourceFile)]
        assert sorted(os.path.realpath(path) for path in files) == sorted(
            str(tmp_path / name) for name in ("w2/good00.jpg", "w2/sub/good00.jpg", "w2/sub/good01.jpg")), sources
        assert not [item for item in found if isinstance(item, Skipped)], sources


def test_a_link_to_a_folder_ingested_before_adds_nothing_in_a_later_run(tmp_path, tiny_encoder):
    """`mmr ingest w2`, then `mmr ingest w2link` in another run, catalogued every image twice (search showed
    each twice). Its files are counted as aliases, run after run, and never recorded; but another card mounted
    where the first was (other files under the same names) is no alias of the rows the first one left."""
    write_good_images(tmp_path / "w2" / "sub", 2)
    (tmp_path / "w2link").symlink_to("w2", target_is_directory=True)
    with Collection.open(tmp_path / "col", model=tiny_encoder, create=True) as col:
        assert col.ingest([tmp_path / "w2"], workers=0).embedded == 2
        for _ in range(2):
            again = col.ingest([tmp_path / "w2link"], workers=0)
            assert (again.embedded, again.duplicates, again.skipped) == (0, 0, {"alias": 2})
            assert col.catalog.counts_by_status() == {"ok": 2}
        assert len(col.search("x", k=10)) == 2
        assert main(["ingest", str(tmp_path / "w2link"), "--collection", str(tmp_path / "col"), "--workers", "0"]) == 0
        card = tmp_path / "w2" / "sub" / "good00.jpg"
        card.write_bytes(card.read_bytes() + b"\0")  # another picture under the same name
        other = col.ingest([tmp_path / "w2link"], workers=0)
        assert (other.embedded, other.skipped) == (1, {"alias": 1})  # not the row of the old good00.jpg


def test_a_broken_link_named_as_a_source_or_in_a_list_is_a_broken_link_as_in_a_walk(tmp_path):
    """Named directly it was recorded as 'missing' ("cannot stat ..."), found by a walk as 'broken_link': which one
    a run recorded depended on the order of its sources."""
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "plain.png").symlink_to("nothing.png")
    (tmp_path / "list.txt").write_text("w/plain.png\n")
    for sources in (["w/plain.png"], ["list.txt"], ["w"]):
        (found,) = discover([str(tmp_path / source) for source in sources])
        assert isinstance(found, Skipped) and found.reason == "broken_link", (sources, found)
        assert found.message.endswith("nothing.png does not exist")
