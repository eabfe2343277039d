"""Near-duplicates as a curator cleaning a library broke them: a deleted file suggested as the one to keep, one
file reached by two paths listed as its own copy, TSV that renamed a file into another, a review folder whose
re-run deleted the user's own files, a name too long to link, the keep rule choosing the upscaled copy over the
camera original, and a chaining note at threshold 1.0 that contradicted itself."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmretrieval.cli import main
from mmretrieval.collection.collection import Collection
from mmretrieval.collection.duplicates import chaining_note, similar_pairs
from mmretrieval.errors import CollectionError
from mmretrieval.ingest.planning import plan
from mmretrieval.ingest.reader import discover
from mmretrieval.training.copies import distinct_originals


def _ingest(root: Path, encoder, *sources: Path) -> Path:
    collection = root / "col"
    with Collection.open(collection, model=encoder, create=True) as col:
        col.ingest(list(sources), workers=0)
    return collection


def _run(capsysbinary, *argv: str) -> tuple[int, bytes, str]:
    code = main(list(argv))
    captured = capsysbinary.readouterr()
    return code, captured.out, captured.err.decode()


def test_a_file_gone_since_ingest_is_never_the_copy_to_keep(tmp_path, shapes_encoder, capsysbinary):
    (picture,) = distinct_originals(1, seed=5, size=400)
    picture.save(tmp_path / "big.png")
    picture.resize((300, 300)).save(tmp_path / "small.jpg", quality=80)
    picture.save(tmp_path / "q50.jpg", quality=50)
    collection = _ingest(tmp_path, shapes_encoder, tmp_path)
    (tmp_path / "big.png").unlink()  # the largest: it was the keeper
    code, out, err = _run(capsysbinary, "duplicates", "--collection", str(collection))
    assert code == 0
    fields = out.decode().rstrip("\n").split("\t")
    assert sorted(fields[1:]) == sorted([str(tmp_path / "q50.jpg"), str(tmp_path / "small.jpg")])
    assert "1 file of these groups is gone since it was ingested" in err and "--prune" in err  # "1 files ... are"
    (tmp_path / "q50.jpg").unlink()  # one file left: no group at all, and a note saying why
    code, out, err = _run(capsysbinary, "duplicates", "--collection", str(collection))
    assert code == 1 and out == b""
    assert "1 group of copies is not listed: all but one of its files are gone or changed" in err


def test_a_file_changed_since_ingest_is_never_listed_as_a_copy(tmp_path, shapes_encoder, capsysbinary):
    """A copy overwritten with another picture after the ingest kept its old vector, so `--null` listed it as a
    copy to delete (and, newest now, not as the keeper): `| xargs -0 trash-put` deleted the only copy of the new
    picture. A file whose size or time changed since it was embedded leaves its group."""
    first, second = distinct_originals(2, seed=7, size=300)
    first.save(tmp_path / "a.png")
    first.save(tmp_path / "a-copy.jpg", quality=85)
    first.resize((200, 200)).save(tmp_path / "a-small.jpg", quality=80)
    collection = _ingest(tmp_path, shapes_encoder, tmp_path)
    code, out, _ = _run(capsysbinary, "duplicates", "--collection", str(collection), "--null")
    assert code == 0 and set(out.split(b"\0")[:-1]) == {os.fsencode(tmp_path / n) for n in ("a-copy.jpg", "a-small.jpg")}

    second.save(tmp_path / "a-copy.jpg", quality=85)  # another picture under the copy's name
    code, out, err = _run(capsysbinary, "duplicates", "--collection", str(collection), "--null")
    assert code == 0 and out == os.fsencode(tmp_path / "a-small.jpg") + b"\0"
    assert "1 file of these groups changed since it was embedded: left out" in err
    code, out, _ = _run(capsysbinary, "duplicates", "--collection", str(collection), "--json")
    (group,) = [json.loads(line) for line in out.decode().splitlines()]
    assert group["changed"] == [str(tmp_path / "a-copy.jpg")] and str(tmp_path / "a-copy.jpg") not in group["paths"]
    with Collection.open(collection, model=shapes_encoder) as col:
        plan(col.catalog, discover([str(tmp_path)]))  # planned, as by an ingest killed or still running
    code, out, _ = _run(capsysbinary, "duplicates", "--collection", str(collection), "--null")
    assert out == os.fsencode(tmp_path / "a-small.jpg") + b"\0"  # pending: its row has the new time, not its vector
    with Collection.open(collection, model=shapes_encoder) as col:  # embedded again: no longer a copy
        col.ingest([tmp_path], workers=0)
    code, out, err = _run(capsysbinary, "duplicates", "--collection", str(collection), "--null")
    assert out == os.fsencode(tmp_path / "a-small.jpg") + b"\0" and "changed" not in err


@pytest.mark.parametrize("how", ["linked folder", "hard link"])
def test_one_file_by_two_paths_is_not_its_own_copy(tmp_path, shapes_encoder, capsysbinary, how, monkeypatch):
    photos = tmp_path / "photos"
    photos.mkdir()
    (picture,) = distinct_originals(1, seed=9, size=300)
    picture.save(photos / "p0.jpg", quality=90)
    if how == "linked folder":
        (tmp_path / "alias").symlink_to(photos)  # ingested as its own source: the walk does not dedupe it
        sources = [tmp_path / "alias", photos]
        other = tmp_path / "alias" / "p0.jpg"
    else:
        other = tmp_path / "hard" / "p0-link.jpg"
        other.parent.mkdir()
        os.link(photos / "p0.jpg", other)
        sources = [tmp_path / "hard", photos]
    collection = tmp_path / "col"
    # an ingest now counts the real folder after its link as an alias and records nothing; a catalog made before
    # that holds both paths, as this one does
    monkeypatch.setattr("mmretrieval.ingest.planning._Aliases.held", lambda *args: set())
    for source in sources:  # one ingest each, so that no content-hash dedup merges them first
        with Collection.open(collection, model=shapes_encoder, create=True) as col:
            col.ingest([source], workers=0)
    monkeypatch.undo()
    code, out, _ = _run(capsysbinary, "duplicates", "--collection", str(collection), "--null")
    assert code == 1 and out == b""  # one file: nothing to delete, whichever name `rm` would be given
    picture.resize((200, 200)).save(photos / "p0-small.png")  # a true copy beside it
    with Collection.open(collection) as col:
        col.ingest([photos], workers=0)
        (group,) = col.duplicates()
    if how == "linked folder":  # the real path, not the one through the link
        kept, alias = photos / "p0.jpg", other
    else:  # two names of one file, neither more real: the first ingested
        kept, alias = other, photos / "p0.jpg"
    assert sorted(group.paths) == sorted([str(kept), str(photos / "p0-small.png")])
    assert group.keep.path == str(kept) and [(a.path, a.same_as) for a in group.aliases] == [(str(alias), str(kept))]
    code, out, err = _run(capsysbinary, "duplicates", "--collection", str(collection), "--null")
    assert out == os.fsencode(photos / "p0-small.png") + b"\0" and "1 path names a file its group already lists" in err
    code, out, _ = _run(capsysbinary, "duplicates", "--collection", str(collection), "--json")
    (row,) = [json.loads(line) for line in out.decode().splitlines()]
    assert row["aliases"] == [{"path": str(alias), "same_as": str(kept), "id": group.aliases[0].id}]


def test_names_with_tabs_and_line_breaks_never_name_another_file(tmp_path, shapes_encoder, capsysbinary):
    a, b = distinct_originals(2, seed=21, size=300)
    a.save(tmp_path / "holiday.png")
    a.save(tmp_path / "holiday\tcopy.jpg", quality=60)
    a.save(tmp_path / "holiday\nnight.jpg", quality=70)
    b.save(tmp_path / "holiday copy.jpg")  # another picture, under the name a tab turned into a space would give
    collection = _ingest(tmp_path, shapes_encoder, tmp_path)
    code, out, err = _run(capsysbinary, "duplicates", "--collection", str(collection))
    (line,) = out.decode().splitlines()
    fields = line.split("\t")
    assert fields[1] == str(tmp_path / "holiday.png")
    assert sorted(fields[2:]) == sorted([f"{tmp_path}/holiday\\tcopy.jpg", f"{tmp_path}/holiday\\nnight.jpg"])
    assert str(tmp_path / "holiday copy.jpg") not in fields and "2 paths hold a backslash, a tab, a line break or another control character" in err
    code, out, err = _run(capsysbinary, "duplicates", "--collection", str(collection), "--null")
    assert "backslash" not in err  # --null gives the names whole: no escapes to explain
    listed = out.split(b"\0")
    assert listed[-1] == b"" and sorted(listed[:-1]) == sorted(
        [os.fsencode(tmp_path / "holiday\tcopy.jpg"), os.fsencode(tmp_path / "holiday\nnight.jpg")])
    removed = subprocess.run(["xargs", "-0", "rm", "--"], input=out, check=True)  # what the option is for
    assert removed.returncode == 0 and sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == [
        "holiday copy.jpg", "holiday.png"]
    with pytest.raises(SystemExit):  # one output at a time
        main(["duplicates", "--collection", str(collection), "--null", "--json"])


def test_the_tsv_of_every_command_escapes_a_tab_instead_of_renaming(tmp_path, shapes_encoder, capsysbinary):
    (picture,) = distinct_originals(1, seed=4, size=200)
    picture.save(tmp_path / "a\tb.png")
    collection = _ingest(tmp_path, shapes_encoder, tmp_path)
    code, out, _ = _run(capsysbinary, "search", "a shape", "--collection", str(collection), "-k", "1")
    assert code == 0 and out.decode().rstrip("\n").split("\t")[1] == f"{tmp_path}/a\\tb.png"


def test_a_rerun_of_organize_never_deletes_what_the_user_put_in_the_review_folder(tmp_path, shapes_encoder):
    (picture,) = distinct_originals(1, seed=3, size=200)
    library = tmp_path / "lib"
    library.mkdir()
    picture.save(library / "a.png")
    picture.save(library / "a.jpg", quality=70)
    collection = _ingest(tmp_path, shapes_encoder, library)
    review = tmp_path / "review"
    assert main(["duplicates", "--collection", str(collection), "--organize", str(review)]) == 0
    edit = review / "00001" / "MY-EDIT.png"
    edit.write_bytes((library / "a.png").read_bytes())
    assert main(["duplicates", "--collection", str(collection), "--organize", str(review)]) == 2
    assert edit.exists()  # refused, nothing deleted
    edit.unlink()
    (review / "notes").mkdir()
    (review / "notes" / "todo.txt").write_text("check these")
    with pytest.raises(CollectionError, match=r"now also holds .*todo\.txt"):
        with Collection.open(collection) as col:
            from mmretrieval.collection.duplicate_review import organize_duplicates

            organize_duplicates(col.duplicates(), review)
    assert (review / "notes" / "todo.txt").read_text() == "check these"
    (review / "notes" / "todo.txt").unlink()
    assert main(["duplicates", "--collection", str(collection), "--organize", str(review)]) == 0  # empty folders go


def test_label_organize_and_export_reruns_keep_foreign_files_too(tmp_path, shapes_encoder):
    (picture,) = distinct_originals(1, seed=6, size=120)
    picture.save(tmp_path / "one.png")
    collection = _ingest(tmp_path, shapes_encoder, tmp_path / "one.png")
    by_label, exported = tmp_path / "by-label", tmp_path / "exported"
    argv = ["label", "--collection", str(collection), "--labels", "circle,square", "--organize", str(by_label)]
    assert main(argv + ["--copy"]) == 0
    mine = by_label / "notes.txt"
    mine.write_text("mine")
    assert main(argv + ["--replace"]) == 2 and mine.exists()
    mine.unlink()
    assert main(argv + ["--replace"]) == 0  # its own copies (regular files) are replaced by links
    pytest.importorskip("pyarrow")
    assert main(["export", str(exported), "--collection", str(collection)]) == 0
    (exported / "img_emb" / "my-vectors.npy").write_bytes(b"x")
    assert main(["export", str(exported), "--collection", str(collection)]) == 2
    assert (exported / "img_emb" / "my-vectors.npy").exists()


def test_a_name_at_the_length_limit_is_linked_shortened_with_its_extension(tmp_path, shapes_encoder):
    (picture,) = distinct_originals(1, seed=8, size=200)
    stem = "x" * 246
    picture.save(tmp_path / f"{stem}.png")
    picture.save(tmp_path / f"{stem}.jpg", quality=70)
    collection = _ingest(tmp_path, shapes_encoder, tmp_path)
    review = tmp_path.parent / f"{tmp_path.name}-review"
    assert main(["duplicates", "--collection", str(collection), "--organize", str(review)]) == 0
    links = sorted((review / "00001").iterdir())
    assert len(links) == 2 and all(len(os.fsencode(link.name)) <= 255 for link in links)
    assert {link.suffix for link in links} == {".png", ".jpg"} and all(link.resolve().exists() for link in links)
    assert sum(link.name.startswith("keep-") for link in links) == 1


def test_a_camera_original_is_kept_over_an_upscaled_copy_without_its_metadata(tmp_path, shapes_encoder):
    (picture,) = distinct_originals(1, seed=3, size=384)
    exif = Image.Exif()
    exif[0x010F], exif[0x0110] = "Canon", "EOS 5D"
    exif.get_ifd(0x8769)[0x9003] = "2021:06:01 12:00:00"
    picture.save(tmp_path / "IMG_0001.jpg", quality=92, exif=exif)
    picture.resize((768, 768), Image.BICUBIC).save(tmp_path / "upscaled.jpg", quality=92)
    collection = _ingest(tmp_path, shapes_encoder, tmp_path)
    with Collection.open(collection) as col:
        (group,) = col.duplicates()
    assert group.keep.path == str(tmp_path / "IMG_0001.jpg")


def test_a_pair_and_its_group_agree_at_threshold_one(tmp_path, shapes_encoder):
    """Pairs were admitted on float16 dot products clipped to 1.0 and then scored renormalised (0.999983): a
    two-image group then 'chained' below the threshold. Both are scored alike now."""
    (picture,) = distinct_originals(1, seed=11, size=200)
    picture.save(tmp_path / "a.png")
    picture.save(tmp_path / "b.webp", lossless=True)  # the same pixels, another file
    collection = _ingest(tmp_path, shapes_encoder, tmp_path)
    with Collection.open(collection) as col:
        groups = col.duplicates(1.0)
    assert len(groups) == 1 and groups[0].score == 1.0  # same pixels: one group at exactly 1
    assert chaining_note(groups, 1.0) is None


def test_pairs_are_admitted_on_the_score_their_group_shows():
    """The unit the test above cannot reach: float16 storage leaves norms a little over 1, so two different
    vectors may have a raw dot product of 1.0 or more (once admitted at threshold 1.0) while their cosine, as the
    group reports it, is below 1. A pair is admitted only on that cosine now."""
    rng = np.random.default_rng(3)
    base = rng.normal(size=64)
    base /= np.linalg.norm(base)
    nudged = base + 5e-4 * rng.normal(size=64)
    nudged /= np.linalg.norm(nudged)
    vectors = np.stack([base, base, nudged * 1.0004]).astype(np.float16).astype(np.float32)  # a norm off by 4e-4
    ids = np.array([1, 2, 3], dtype=np.int64)
    raw = vectors @ vectors.T
    a, b = vectors[0].astype(np.float64), vectors[2].astype(np.float64)
    assert raw[0, 2] >= 1.0 > a @ b / (np.linalg.norm(a) * np.linalg.norm(b))  # the case in point

    def search(queries, k):  # every vector as every query's neighbour, scored as an index scores: raw dots
        scores = queries @ vectors.T
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(scores, order, 1), ids[order]

    def load(wanted):
        wanted = np.asarray(wanted, dtype=np.int64)
        return wanted, vectors[wanted - 1]

    pairs = list(similar_pairs([(ids, vectors)], 3, search, load, threshold=1.0, k=2))
    admitted = {tuple(sorted(pair)) for a, b in pairs for pair in zip(a.tolist(), b.tolist())}
    assert admitted == {(1, 2)}  # the identical pair only
