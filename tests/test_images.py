"""decode_image and the ingestion reader on the hard files a real photo folder contains."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
from PIL import Image

from mmretrieval.errors import ImageDecodeError
from mmretrieval.images.decode import decode_image
from mmretrieval.ingest.batches import DecodeTask, Decoded, Failed
from mmretrieval.ingest.reader import decode_file, discover


def _jpeg(image: Image.Image, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", **kwargs)
    return buffer.getvalue()


def _png(image: Image.Image, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG", **kwargs)
    return buffer.getvalue()


def _gradient(width: int = 64, height: int = 48) -> Image.Image:
    x = np.linspace(0, 255, width, dtype=np.uint8)[None, :, None].repeat(height, 0)
    y = np.linspace(0, 255, height, dtype=np.uint8)[:, None, None].repeat(width, 1)
    return Image.fromarray(np.concatenate([x, y, 255 - x], axis=2))


def test_truncated_jpeg_and_png_are_errors_not_grey_images():
    for data in (_jpeg(_gradient(256, 256)), _png(_gradient(256, 256))):
        with pytest.raises(ImageDecodeError) as caught:
            decode_image(data[: len(data) // 2])
        assert caught.value.reason in ("truncated", "corrupt")


def test_decompression_bomb_is_refused_before_decoding():
    bomb = _png(Image.new("1", (12_000, 8_000)))  # 96 Mpx in a file of a few kB
    assert len(bomb) < 100_000
    with pytest.raises(ImageDecodeError) as caught:
        decode_image(bomb)
    assert caught.value.reason == "decompression_bomb"


def test_exif_rotation_swaps_the_recorded_size():
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when shown
    decoded = decode_image(_jpeg(_gradient(64, 32), exif=exif.tobytes()))
    assert (decoded.width, decoded.height) == (32, 64)
    assert decoded.image.size == (32, 64)


@pytest.mark.parametrize("make", [
    lambda: _jpeg(Image.new("CMYK", (40, 30), (0, 255, 255, 0))),
    lambda: _png(Image.fromarray(np.full((30, 40), 65535, np.uint16))),
    lambda: _png(Image.new("RGBA", (40, 30), (255, 0, 0, 0))),
    lambda: _png(Image.new("P", (40, 30), 0), transparency=0),
], ids=["cmyk", "16bit", "rgba", "palette-transparent"])
def test_odd_modes_become_rgb(make):
    decoded = decode_image(make())
    assert decoded.image.mode == "RGB" and decoded.image.size == (40, 30)


def test_transparency_is_composited_on_white():
    decoded = decode_image(_png(Image.new("RGBA", (8, 8), (255, 0, 0, 0))))
    assert decoded.image.getpixel((0, 0)) == (255, 255, 255)


def test_animated_gif_uses_first_frame(tmp_path):
    frames = [Image.new("RGB", (20, 20), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0)
    pixel = decode_image(path).image.getpixel((5, 5))
    assert pixel[0] > 200 and pixel[2] < 50


def test_decode_file_never_opens_a_fifo(tmp_path, tiny_encoder):
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)  # opening it for reading in blocking mode would wait forever for a writer
    result = decode_file(DecodeTask(7, str(fifo)), tiny_encoder.preparer)
    assert isinstance(result, Failed) and result.reason == "not_regular_file" and result.image_id == 7


def test_decode_file_hashes_bytes_and_prepares_pixels(tmp_path, tiny_encoder):
    path = tmp_path / "a.jpg"
    path.write_bytes(_jpeg(_gradient()))
    result = decode_file(DecodeTask(3, str(path)), tiny_encoder.preparer)
    assert isinstance(result, Decoded)
    assert result.pixels.dtype == np.uint8 and result.pixels.shape == (3, 32, 32)
    again = decode_file(DecodeTask(4, str(path)), tiny_encoder.preparer)
    assert again.content_hash == result.content_hash and again.image_id == 4


def test_discover_handles_links_loops_and_lists(tmp_path):
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "a.jpg").write_bytes(b"x")
    (root / "notes.txt").write_text("not an image name: ignored in folders")
    (root / "loop").symlink_to(root)  # walking into it would never end
    (root / "self.jpg").symlink_to(root / "self.jpg")
    outside = tmp_path / "outside.jpg"
    outside.write_bytes(b"y")
    (root / "out.jpg").symlink_to(outside)
    found = {os.path.relpath(item.path, root): getattr(item, "reason", "file") for item in discover([root])}
    assert found == {"sub/a.jpg": "file", "loop": "symlink_loop", "self.jpg": "symlink_loop",
                     "out.jpg": "link_outside_root"}
    listing = tmp_path / "list.csv"
    listing.write_text("path,caption\nroot/sub/a.jpg,a caption\nmissing.jpg,\n")
    items = list(discover([listing]))
    assert items[0].caption == "a caption" and items[0].path == str(root / "sub" / "a.jpg")
    assert items[1].reason == "missing"


HIDDEN = (".thumbnails/t.png", ".Trash-1000/files/x.png", ".git/objects/blob.png", "trip/.cache/c.png",
          ".hidden.png", "trip/.no_extension", "._b.png")  # what photo folders hide: none is walked


def _folder_with_hidden_entries(root) -> None:
    for index, name in enumerate(("a.png", "trip/b.png", *HIDDEN)):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(_png(_gradient(8 + index, 8)))  # each its own content: no file is another's duplicate


def test_a_walk_passes_over_hidden_folders_and_files_but_reads_them_when_named(tmp_path):
    root = tmp_path / "photos"
    _folder_with_hidden_entries(root)

    def found(*sources) -> list[str]:
        return sorted(os.path.relpath(item.path, root) for item in discover(sources))

    assert found(root) == ["a.png", "trip/b.png"]
    assert found(root / "trip") == ["trip/b.png"]
    # Named as a source, or listed, hidden is what the user asked for (e.g. ~/.local/share/wallpapers)
    assert found(root / ".thumbnails") == [".thumbnails/t.png"]
    assert found(root / ".Trash-1000" / "files") == [".Trash-1000/files/x.png"]
    assert found(root / ".hidden.png") == [".hidden.png"]
    listing = root / "picked.txt"
    listing.write_text(".git/objects/blob.png\ntrip/.cache/c.png\n")
    assert found(listing) == [".git/objects/blob.png", "trip/.cache/c.png"]
    wallpapers = tmp_path / ".local" / "share" / "wallpapers"
    _folder_with_hidden_entries(wallpapers)
    assert sorted(os.path.relpath(item.path, wallpapers) for item in discover([wallpapers])) == ["a.png", "trip/b.png"]


def test_hidden_files_ingested_before_are_kept_by_prune_until_they_are_gone(tmp_path, tiny_encoder):
    """Earlier versions walked hidden folders; their rows stay searchable, and --prune drops only missing files."""
    from mmretrieval.collection.collection import Collection

    root = tmp_path / "photos"
    _folder_with_hidden_entries(root)
    thumbnail = root / ".thumbnails" / "t.png"
    with Collection.open(tmp_path / "col", model=tiny_encoder, create=True) as col:
        assert col.ingest([root / ".thumbnails"], workers=0).embedded == 1  # named: read, as an old walk read it
        summary = col.ingest([root], workers=0, prune=True)
        assert (summary.embedded, summary.pruned) == (2, 0)
        assert {os.path.relpath(hit.path, root) for hit in col.search("x", k=50)} == {
            "a.png", "trip/b.png", ".thumbnails/t.png"}
        thumbnail.unlink()
        assert col.ingest([root], workers=0, prune=True).pruned == 1
        assert {os.path.relpath(hit.path, root) for hit in col.search("x", k=50)} == {"a.png", "trip/b.png"}
