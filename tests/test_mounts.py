"""A drive mounted inside a library (``lib/nas``): an ingest notes the mount point, and a later --prune keeps its
images while it is not mounted (empty, or holding a stray file), prunes them once mounted again and gone, or once
told to forget it. Mounting needs privileges a test has not: the drive is simulated by giving the folders under
``lib/nas`` another device number (os.stat) and by os.path.ismount, the two things the code asks."""

from __future__ import annotations

import os
import shutil
import stat as stat_module

import pytest

from mmretrieval.cli import main
from mmretrieval.collection.collection import Collection
from mmretrieval.errors import CollectionError
from mmretrieval.ingest.reader import discover
from test_ingest import write_good_images

_real_stat = os.stat
_real_ismount = os.path.ismount


class _OnAnotherDevice:
    """A folder's stat result, as if it lay on another file system."""

    def __init__(self, info: os.stat_result):
        self._info = info

    def __getattr__(self, name: str):
        return getattr(self._info, name)

    @property
    def st_dev(self) -> int:
        return self._info.st_dev + 1


@pytest.fixture
def drive(tmp_path, monkeypatch):
    """``lib`` with 2 images and ``lib/nas`` with 3, and a switch: ``mount()`` makes lib/nas a mount point,
    ``unmount()`` an ordinary empty folder (its images gone with the drive, kept aside to mount again)."""
    lib, nas, aside = tmp_path / "lib", tmp_path / "lib" / "nas", tmp_path / "aside"
    write_good_images(lib, 2)
    write_good_images(nas, 3, seed=5)

    def stat(path, *args, **kwargs):
        info = _real_stat(path, *args, **kwargs)
        try:
            inside = stat_module.S_ISDIR(info.st_mode) and os.path.abspath(os.fsdecode(path)).startswith(str(nas))
        except TypeError:  # a descriptor
            inside = False
        return _OnAnotherDevice(info) if inside else info

    class Drive:
        def mount(self) -> None:
            if aside.exists():
                shutil.rmtree(nas)
                aside.rename(nas)
            monkeypatch.setattr(os, "stat", stat)
            monkeypatch.setattr(os.path, "ismount", lambda path: os.path.abspath(path) == str(nas)
                                or _real_ismount(path))

        def unmount(self) -> None:
            monkeypatch.setattr(os, "stat", _real_stat)
            monkeypatch.setattr(os.path, "ismount", _real_ismount)
            nas.rename(aside)
            nas.mkdir()

    return lib, nas, Drive()


def test_the_walk_finds_mount_points_but_not_links_to_other_drives(drive, tmp_path):
    lib, nas, disk = drive
    (lib / "link-to-nas").symlink_to(nas)
    found: list[str] = []
    list(discover([str(lib)], found))
    assert found == []  # not mounted: an ordinary folder
    disk.mount()
    list(discover([str(lib)], found))
    assert found == [str(nas)]  # and not lib/link-to-nas, which leads there
    found.clear()
    list(discover([str(nas)], found))
    assert found == [str(nas)]  # a mount point given as the source itself


def test_a_prune_keeps_an_unmounted_drives_images_until_it_is_mounted_or_forgotten(drive, tiny_encoder):
    lib, nas, disk = drive
    disk.mount()
    with Collection.open(lib.parent / "col", model=tiny_encoder, create=True) as col:
        assert col.ingest([lib], workers=0).embedded == 5
        assert col.catalog.mount_points_under(os.fsencode(f"{lib}/")) == [os.fsencode(f"{nas}/")]
        assert col.info().drives == {str(nas): "mounted"}
        disk.unmount()
        assert col.info().drives == {str(nas): "not mounted"}
        (lib / "good00.jpg").unlink()  # gone for good, on the library's own disk
        summary = col.ingest([lib], workers=0, prune=True)
        assert (summary.pruned, summary.unmounted) == (1, (str(nas),))  # the drive's 3 kept, the deleted one not
        assert len(col.catalog.vector_ids()) == 4
        (nas / "NOT-MOUNTED").write_text("a marker some people leave in a mount point")
        assert col.ingest([lib], workers=0, prune=True).unmounted == (str(nas),)
        assert len(col.catalog.vector_ids()) == 4
        (nas / "NOT-MOUNTED").unlink()
        disk.mount()  # back, one image deleted on it meanwhile: pruned as any other
        (nas / "good01.jpg").unlink()
        summary = col.ingest([lib], workers=0, prune=True)
        assert (summary.pruned, summary.unmounted) == (1, ())
        disk.unmount()
        with pytest.raises(CollectionError, match="--forget-mount .*lib: no drive was seen mounted there"):
            col.ingest([lib], workers=0, prune=True, forget_mounts=[lib])
        with pytest.raises(CollectionError, match=r"add --prune \(prune=True\)"):
            col.ingest([lib], workers=0, forget_mounts=[nas])
        assert len(col.catalog.vector_ids()) == 3  # neither refusal changed anything
        summary = col.ingest([lib], workers=0, prune=True, forget_mounts=[nas])  # retired for good
        assert (summary.pruned, summary.unmounted) == (2, ())
        assert col.catalog.mount_points_under(os.fsencode(f"{lib}/")) == [] and col.info().drives == {}


def test_cli_names_the_unmounted_folder_and_the_way_to_prune_it(drive, tiny_model_dir, capsys):
    lib, nas, disk = drive
    collection = str(lib.parent / "col")
    disk.mount()
    assert main(["ingest", str(lib), "--collection", collection, "--model", str(tiny_model_dir),
                 "--workers", "0"]) == 0
    disk.unmount()
    capsys.readouterr()
    assert main(["ingest", str(lib), "--collection", collection, "--prune", "--json", "--workers", "0"]) == 0
    captured = capsys.readouterr()
    assert f"kept the images under {nas}/: a drive was mounted there" in captured.err
    assert f"--forget-mount {nas} to prune them" in captured.err
    assert '"unmounted": ["' + str(nas) + '"]' in captured.out
    assert main(["ingest", str(lib), "--collection", collection, "--forget-mount", str(nas), "--workers", "0"]) == 2
    assert "--forget-mount lets --prune reach the images of a drive that is not mounted; add --prune" in (
        capsys.readouterr().err)


def test_a_prune_inside_an_unmounted_drive_or_of_listed_files_on_it_keeps_them(drive, tiny_encoder, tmp_path):
    """The drive's own subfolder pruned alone (a stray file there, the drive not mounted), a list file naming its
    files, and the library given twice: the drive's images are kept, and the folder named once."""
    lib, nas, disk = drive
    disk.mount()
    with Collection.open(lib.parent / "col", model=tiny_encoder, create=True) as col:
        col.ingest([lib], workers=0)
        disk.unmount()
        write_good_images(nas, 1, seed=9)  # something lies under the mount point: not empty, not the drive
        (nas / "good00.jpg").rename(nas / "stray.jpg")
        summary = col.ingest([nas], workers=0, prune=True)
        assert (summary.pruned, summary.unmounted) == (0, (str(nas),))
        listed = tmp_path / "on-the-drive.txt"
        listed.write_text("".join(f"{nas}/good{i:02d}.jpg\n" for i in range(3)))
        summary = col.ingest([listed], workers=0, prune=True)
        assert (summary.pruned, summary.unmounted) == (0, (str(nas),))
        assert col.ingest([lib, f"{lib}/"], workers=0, prune=True).unmounted == (str(nas),)
        assert sum(path.startswith(f"{nas}/good") for path in map(str, _paths(col))) == 3


def test_a_drive_given_as_its_own_source_is_retired_with_forget_mount(drive, tiny_encoder, capsys):
    """The mount point pruned as a source, empty once the drive is gone: refused, saying --forget-mount retires it
    (pruning the folder above would keep its images); with it, its images go."""
    lib, nas, disk = drive
    disk.mount()
    with Collection.open(lib.parent / "col", model=tiny_encoder, create=True) as col:
        col.ingest([nas], workers=0)
        disk.unmount()
        with pytest.raises(CollectionError, match=f"if its drive is gone for good, add --forget-mount {nas}"):
            col.ingest([nas], workers=0, prune=True)
        assert col.ingest([nas], workers=0, prune=True, forget_mounts=[nas]).pruned == 3
        assert _paths(col) == []


def _paths(col: Collection) -> list[str]:
    ids = col.catalog.vector_ids().tolist()
    return sorted(row.path for row in col.catalog.rows(ids).values())


def test_a_catalog_older_than_the_mount_table_is_described_when_read_only(tmp_path, tiny_encoder):
    """`mmr info` on a collection made before drives were noted, opened read-only (nothing adds the table): no
    drives, no error."""
    import sqlite3

    with Collection.open(tmp_path / "col", model=tiny_encoder, create=True) as col:
        col.ingest([write_good_images(tmp_path / "lib", 2)[0]], workers=0)
    with sqlite3.connect(tmp_path / "col" / "catalog.sqlite") as db:
        db.execute("DROP TABLE mount_points")
    with Collection.open(tmp_path / "col", read_only=True) as col:
        assert col.info().drives == {} and col.info().vectors == 1
