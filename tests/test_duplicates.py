"""Near-duplicates: a generated set of originals and edited copies is grouped with precision and recall
>= 0.95 at the default threshold; the graph, the components and the kept copy against brute force; the CLI."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from mmretrieval.cli import main
from mmretrieval.collection.collection import Collection
from mmretrieval.collection.duplicates import DEFAULT_THRESHOLDS, connected_groups, similar_pairs
from mmretrieval.errors import CollectionError, QueryError
from mmretrieval.training.copies import pair_scores, write_near_duplicate_set


@pytest.fixture(scope="module")
def copies(tmp_path_factory, shapes_encoder):
    root = tmp_path_factory.mktemp("dups")
    truth = write_near_duplicate_set(root / "images", originals=24, size=160)
    with Collection.open(root / "col", model=shapes_encoder, create=True) as col:
        col.ingest([root / "images"], workers=1)
    return root, truth


@pytest.mark.slow
def test_default_threshold_finds_edited_copies_with_high_precision_and_recall(copies):
    root, truth = copies
    with Collection.open(root / "col") as col:
        groups = col.duplicates()
    precision, recall = pair_scores([g.paths for g in groups], truth)
    assert precision >= 0.95 and recall >= 0.95, (precision, recall)
    for group in groups:
        assert group.scores[0] == pytest.approx(1.0, abs=1e-5)
        assert all(s >= group.score for s in group.scores)
        # the kept copy has the most pixels of its group (the generated copies carry no capture metadata)
        assert group.keep.width * group.keep.height == max(c.width * c.height for c in group.copies)


def test_cli_tsv_json_and_organize(copies, tmp_path, capsys):
    root, truth = copies
    assert main(["duplicates", "--collection", str(root / "col"), "--threshold",
                 str(DEFAULT_THRESHOLDS["shapes"])]) == 0
    tsv = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    assert tsv and all(len(fields) >= 3 and 0 < float(fields[0]) <= 1.0 for fields in tsv)
    assert main(["duplicates", "--collection", str(root / "col"), "--json", "--organize", str(tmp_path / "review")]) == 0
    groups = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [g["paths"] for g in groups] == [fields[1:] for fields in tsv]
    assert all(g["keep"] == g["paths"][0] and len(g["scores"]) == len(g["paths"]) for g in groups)
    folders = sorted(p for p in (tmp_path / "review").iterdir() if p.is_dir())
    assert len(folders) == len(groups)
    links = list(folders[0].iterdir())
    assert all(link.is_symlink() for link in links) and len(links) == len(groups[0]["paths"])
    assert sum(link.name.startswith("keep-") for link in links) == 1
    assert all(os.path.exists(p) for p in truth)  # nothing deleted
    assert main(["duplicates", "--collection", str(root / "col"), "--threshold", "1.5"]) == 2
    capsys.readouterr()
    # a re-run (here with a stricter threshold: fewer groups) replaces its review folder: no group of the
    # first run stays beside the new ones
    assert main(["duplicates", "--collection", str(root / "col"), "--threshold", "0.999", "--organize",
                 str(tmp_path / "review")]) == 0
    fewer = [line for line in capsys.readouterr().out.splitlines()]
    assert 0 < len(fewer) < len(groups)
    assert sorted(p.name for p in (tmp_path / "review").iterdir() if p.is_dir()) == [
        f"{n:05d}" for n in range(1, len(fewer) + 1)]
    # a folder holding anything else is refused before the search, and left as it was
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    assert main(["duplicates", "--collection", str(root / "col"), "--organize", str(tmp_path / "mine")]) == 2
    assert "is not empty: its files would mix with these" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no hidden leftovers


def test_an_interrupted_organize_leaves_no_half_review_folder(copies, tmp_path, monkeypatch):
    from pathlib import Path

    from mmretrieval.collection.collection import Collection
    from mmretrieval.collection.duplicate_review import organize_duplicates

    root, _ = copies
    with Collection.open(root / "col") as collection:
        groups = collection.duplicates(DEFAULT_THRESHOLDS["shapes"])
    links = sum(len(group.copies) for group in groups)
    assert links >= 2
    real_symlink, made = Path.symlink_to, []

    def dies_half_way(self, target, *args):
        if len(made) == links // 2:
            raise KeyboardInterrupt  # as Ctrl-C would
        made.append(self)
        real_symlink(self, target, *args)

    monkeypatch.setattr(Path, "symlink_to", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        organize_duplicates(groups, tmp_path / "review")
    assert not (tmp_path / "review").exists() and not list(tmp_path.glob(".review.*"))
    monkeypatch.setattr(Path, "symlink_to", real_symlink)
    assert organize_duplicates(groups, tmp_path / "review") == links  # the re-run is not refused
    assert sorted(p.name for p in (tmp_path / "review").iterdir() if p.is_dir()) == [
        f"{n:05d}" for n in range(1, len(groups) + 1)]


def test_graph_and_components_match_brute_force():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(30, 16))
    vectors = np.concatenate([centres, centres[:10] + rng.normal(scale=0.05, size=(10, 16))])
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    ids = np.arange(100, 140, dtype=np.int64)

    def load(wanted):
        positions = np.searchsorted(ids, wanted)
        return ids[positions], vectors[positions]

    def search(queries, k):  # approximate scores (as PQ gives them): only the neighbours are trusted
        scores = queries @ vectors.T + rng.uniform(-0.08, 0.08, size=(len(queries), len(vectors)))
        order = np.argsort(-scores, axis=1)[:, :k]
        return np.take_along_axis(scores, order, 1), ids[order]

    threshold = 0.9
    blocks = ((ids[i:i + 7], vectors[i:i + 7]) for i in range(0, 40, 7))
    groups = connected_groups(similar_pairs(blocks, 40, search, load, threshold, k=3))
    sims = vectors @ vectors.T
    expected_pairs = {(int(ids[i]), int(ids[j])) for i in range(40) for j in range(i + 1, 40) if sims[i, j] >= threshold}
    assert {(g[0], g[1]) for g in groups if len(g) == 2} == expected_pairs  # well separated: pairs only
    assert all(len(g) == 2 for g in groups) and len(groups) == 10


def test_chains_join_and_bad_arguments_are_refused():
    pairs = [(np.array([1, 5]), np.array([2, 6])), (np.array([2]), np.array([3])), (np.array([9]), np.array([9]))]
    assert connected_groups(pairs) == [[1, 2, 3], [5, 6]]
    with pytest.raises(CollectionError):
        list(similar_pairs([], 0, lambda q, k: (q, q), lambda ids: (ids, ids), 0.9, k=0))


def test_groups_joined_through_chains_say_how_far_and_how_large(copies, capsys):
    from mmretrieval.collection.duplicates import chaining_note

    root, _ = copies
    assert main(["duplicates", "--collection", str(root / "col"), "--threshold", "0.5"]) == 0
    err = capsys.readouterr().err  # every scene is a shape: at 0.5 they chain into one group
    assert "1 of 1 groups joined images less alike than 0.500" in err and "the largest group has 120 images" in err
    assert chaining_note([], 0.9) is None


def test_the_chaining_note_counts_only_groups_below_the_threshold():
    from mmretrieval.collection.duplicates import Copy, DuplicateGroup, chaining_note

    def group(*scores):
        return DuplicateGroup(tuple(Copy(i, f"/p/{i}.jpg", s, 10, 10, 1, 0) for i, s in enumerate(scores)))

    groups = [group(1.0, 0.97), group(1.0, 0.96, 0.90, 0.93), group(1.0, 0.95)]  # 0.95 is at the threshold: in
    note = chaining_note(groups, 0.95)
    assert note.startswith("1 of 3 groups joined images less alike than 0.950")
    assert "cosine down to 0.900" in note and "the largest group has 4 images" in note
    assert chaining_note(groups, 0.90) is None


def test_the_kept_copy_has_the_most_pixels_then_is_the_oldest_then_lossless(tmp_path, shapes_encoder):
    """A larger JPEG is kept over smaller PNGs; at equal pixels the oldest file (the source the others were made
    from: a later PNG conversion holds nothing more, a later q100 re-save only more noise); at equal times too, a
    lossless format."""
    from mmretrieval.training import scenes

    picture = scenes.generate(3, 0, size=160).image
    folder = tmp_path / "photos"
    folder.mkdir()
    picture.save(folder / "original.jpg", quality=90)
    picture.save(folder / "noisy.jpg", quality=100, subsampling=0)
    picture.save(folder / "converted.png")
    picture.resize((320, 320)).save(folder / "bigger.jpg", quality=95)
    for age, name in enumerate(["original.jpg", "noisy.jpg", "converted.png", "bigger.jpg"]):
        os.utime(folder / name, ns=(1_700_000_000 * 10**9 + age * 10**9,) * 2)  # made in this order
    assert (folder / "noisy.jpg").stat().st_size > (folder / "original.jpg").stat().st_size
    with Collection.open(tmp_path / "col", model=shapes_encoder, create=True) as col:
        col.ingest([folder], workers=0)
        (group,) = col.duplicates(0.9)
        assert os.path.basename(group.keep.path) == "bigger.jpg"
        (folder / "bigger.jpg").unlink()
        (group,) = col.duplicates(0.9)  # without --prune: the file gone is left out, and named
        assert os.path.basename(group.keep.path) == "original.jpg"
        assert group.gone == (str(folder / "bigger.jpg"),)
        (folder / "original.jpg").unlink()
        for name in ("noisy.jpg", "converted.png"):  # the same time: lossless decides
            os.utime(folder / name, ns=(1_700_000_000 * 10**9,) * 2)
        col.ingest([folder], workers=0, prune=True)
        (group,) = col.duplicates(0.9)
    assert os.path.basename(group.keep.path) == "converted.png" and group.gone == ()
    assert {os.path.basename(p) for p in group.paths} == {"converted.png", "noisy.jpg"}


def test_the_kept_copy_is_a_file_not_a_link_and_the_original_not_its_stripped_conversion(tmp_path, shapes_encoder):
    """A symbolic link to a photo is never kept over the photo (deleting the "other copy" would then delete the
    only file); and a camera original with its EXIF time, camera and position is kept over a PNG conversion of
    it that lost them, though lossless."""
    from PIL import Image

    from mmretrieval.training import scenes

    picture = scenes.generate(5, 0, size=160).image
    photos, album = tmp_path / "library" / "photos", tmp_path / "library" / "album"
    photos.mkdir(parents=True)
    album.mkdir()
    exif = Image.Exif()
    exif[0x010F], exif[0x0110] = "Canon", "Canon EOS R5"  # Make, Model
    exif.get_ifd(0x8769)[0x9003] = "2024:06:01 14:30:00"  # DateTimeOriginal
    picture.save(photos / "IMG_0001.JPG", quality=92, exif=exif)
    picture.save(photos / "IMG_0001.png")
    (album / "a-best.jpg").symlink_to(photos / "IMG_0001.JPG")  # sorts first, and is as large as its target
    with Collection.open(tmp_path / "col", model=shapes_encoder, create=True) as col:
        col.ingest([tmp_path / "library"], workers=0)  # the link stays inside the folder ingested
        (group,) = col.duplicates(0.9)
    assert {os.path.basename(p) for p in group.paths} == {"IMG_0001.JPG", "IMG_0001.png"}
    assert group.keep.path == str(photos / "IMG_0001.JPG")
    # the link names the kept file: deleting it as a copy would be harmless, but it is no copy either
    assert [(a.path, a.same_as) for a in group.aliases] == [(str(album / "a-best.jpg"), group.keep.path)]


def test_a_byte_identical_copy_scores_one(tmp_path, shapes_encoder):
    """Cosines between stored float16 vectors are of the renormalised vectors: the same bytes score 1.000 (the
    float16 norms of eight pictures, 0.9999 to 1.0001, made some such pairs 0.9999)."""
    import shutil

    from mmretrieval.training import scenes

    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(8):
        scenes.generate(9, i, size=160).image.save(folder / f"{i}a.jpg", quality=90)
        shutil.copy(folder / f"{i}a.jpg", folder / f"{i}b.jpg")
    with Collection.open(tmp_path / "col", model=shapes_encoder, create=True) as col:
        col.ingest([folder], workers=0)
        pairs = [group for group in col.duplicates(0.999) if len(group.copies) == 2]
    assert len(pairs) == 8 and [group.scores for group in pairs] == [(1.0, 1.0)] * 8


def test_preferred_folders_decide_the_kept_copy_before_pixels_and_metadata_but_never_keep_a_link(tmp_path,
                                                                                              shapes_encoder, capsys):
    """A library of originals and a Downloads folder of bigger re-saves: by the usual rule the bigger copy is kept;
    --prefer library keeps the library's, the first preferred folder before the second, and a link in a preferred
    folder is still never kept over the file it names."""
    from mmretrieval.training import scenes

    picture = scenes.generate(7, 0, size=160).image
    library, downloads, album = tmp_path / "library", tmp_path / "downloads", tmp_path / "album"
    for folder in (library, downloads, album):
        folder.mkdir()
    picture.save(library / "original.jpg", quality=90)
    picture.resize((320, 320)).save(downloads / "bigger.jpg", quality=95)
    (album / "link.jpg").symlink_to(downloads / "bigger.jpg")
    with Collection.open(tmp_path / "col", model=shapes_encoder, create=True) as col:
        col.ingest([library, downloads, album], workers=0)

        def kept(*prefer) -> str:
            (group,) = col.duplicates(0.9, prefer=prefer)
            return os.path.relpath(group.keep.path, tmp_path)

        assert kept() == "downloads/bigger.jpg"  # the most pixels
        assert kept(library) == "library/original.jpg"
        assert kept(str(library) + "/") == "library/original.jpg"  # a trailing separator changes nothing
        assert kept(downloads, library) == "downloads/bigger.jpg" and kept(library, downloads) == "library/original.jpg"
        (tmp_path / "lib").mkdir()
        assert kept(tmp_path / "lib") == "downloads/bigger.jpg"  # a folder, not a prefix of names: library/ is no lib/
        assert kept(album) == "downloads/bigger.jpg"  # album/link.jpg names the bigger file: an alias, never kept
        with pytest.raises(QueryError, match="the folder to prefer 'librar' is not a folder here"):
            col.duplicates(0.9, prefer=["librar"])  # a typo would keep other copies than meant: refused
    assert main(["duplicates", "--collection", str(tmp_path / "col"), "--threshold", "0.9", "--prefer",
                 str(library), "--null"]) == 0
    assert capsys.readouterr().out.split("\0")[:-1] == [str(downloads / "bigger.jpg")]


def test_a_preferred_folder_given_through_a_link_still_decides(tmp_path, shapes_encoder):
    """~/Pictures linking to a data disk: the collection holds the paths it was ingested by, and --prefer (and
    --prefix) through the other path matched nothing, so the copies meant to be kept were listed to trash."""
    from mmretrieval.training import scenes

    picture = scenes.generate(7, 0, size=160).image
    library, downloads = tmp_path / "disk" / "library", tmp_path / "disk" / "downloads"
    library.mkdir(parents=True)
    downloads.mkdir()
    picture.save(library / "original.jpg", quality=90)
    picture.resize((320, 320)).save(downloads / "bigger.jpg", quality=95)
    (tmp_path / "home").symlink_to(tmp_path / "disk")
    with Collection.open(tmp_path / "col", model=shapes_encoder, create=True) as col:
        col.ingest([tmp_path / "disk"], workers=0)
        (group,) = col.duplicates(0.9)
        assert group.keep.path == str(downloads / "bigger.jpg")  # the most pixels
        (group,) = col.duplicates(0.9, prefer=[tmp_path / "home" / "library"])
        assert group.keep.path == str(library / "original.jpg")
        hits = col.search("a shape", path_prefix=str(tmp_path / "home" / "library") + os.sep)
        assert [hit.path for hit in hits] == [str(library / "original.jpg")]
    with Collection.open(tmp_path / "col2", model=shapes_encoder, create=True) as col:  # the other way round
        col.ingest([tmp_path / "home"], workers=0)
        (group,) = col.duplicates(0.9, prefer=[library])
        assert group.keep.path == str(tmp_path / "home" / "library" / "original.jpg")


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc, where no folder can be made")
def test_a_review_folder_that_cannot_be_made_prints_no_group(copies, capsys):
    """The groups were printed first and the folder made after: `--null | xargs` had acted on the list when the
    command failed, with a raw errno message (a walkthrough tried /proc)."""
    root, _ = copies
    assert main(["duplicates", "--collection", str(root / "col"), "--null", "--organize", "/proc/mmr-review"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "cannot fill /proc/mmr-review: /proc takes no new files" in captured.err, captured.err
