"""decode_image and the ingestion reader on the hard files a real photo folder contains."""

from __future__ import annotations

import io
import math
import os
import struct
import tracemalloc
import zlib

import numpy as np
import pytest
from PIL import Image, ImageOps

from mmretrieval.errors import ImageDecodeError
from mmretrieval.images.decode import DEFAULT_MAX_PIXELS, decode_image, decode_path
from mmretrieval.images.modes import to_rgb
from mmretrieval.images.formats import ensure_openers
from mmretrieval.images.metadata import photo_metadata
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


def _png_header(width: int, height: int) -> bytes:
    """A 1-bit PNG that declares ``width`` x ``height`` and then stops a few bytes into its pixel data, made in
    microseconds. Refused by the pixel limit it says ``decompression_bomb``; let through, ``truncated``."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(bytes(1024))[:6]))


def test_decompression_bomb_is_refused_before_decoding():
    bomb = _png_header(20_000, 20_000)  # 400 Mpx declared in 51 bytes
    with pytest.raises(ImageDecodeError) as caught:
        decode_image(bomb)
    assert caught.value.reason == "decompression_bomb"  # decoding would have found it truncated
    assert f"400000000 pixels, over the limit of {DEFAULT_MAX_PIXELS} pixels" in str(caught.value)


@pytest.mark.parametrize("size", [(11_648, 8_736), (16_320, 12_240)], ids=["gfx100s-100mpx", "phone-200mpx"])
def test_camera_photos_beyond_pillows_own_limit_decode(tmp_path, size):
    path = tmp_path / "big.jpg"
    path.write_bytes(_jpeg(Image.new("L", size, 128), quality=10))  # a real JPEG of that size, made in under a second
    pillow_limit = Image.MAX_IMAGE_PIXELS
    decoded = decode_path(path, draft_size=224)
    assert (decoded.width, decoded.height) == size
    assert decoded.image.size == (math.ceil(size[0] / 8), math.ceil(size[1] / 8))  # draft mode: decoded at 1/8
    assert Image.MAX_IMAGE_PIXELS == pillow_limit  # Pillow's process-wide guard is as it was


def test_the_limit_lets_a_200_megapixel_png_through_too():
    with pytest.raises(ImageDecodeError) as caught:
        decode_image(_png_header(16_320, 12_240))
    assert caught.value.reason == "truncated"  # past the pixel limit: only the missing rows stop it


@pytest.mark.parametrize("size, max_pixels", [
    ((16_320, 12_240), 150_000_000),  # over Pillow's hard limit (178956970), over ours
    ((16_320, 12_240), 50_000_000),  # a caller's limit under Pillow's (the UI's for uploads)
    ((12_000, 8_000), 50_000_000),  # over Pillow's warning limit (89478485)
    ((8_000, 8_000), 50_000_000),  # under Pillow's limits: ours alone refuses it
])
def test_a_refusal_names_the_one_limit_that_applies_and_the_fix(size, max_pixels):
    pillow_limit = Image.MAX_IMAGE_PIXELS
    with pytest.raises(ImageDecodeError) as caught:
        decode_image(_png_header(*size), max_pixels=max_pixels)
    message = str(caught.value)
    assert caught.value.reason == "decompression_bomb"
    assert f"{size[0] * size[1]} pixels, over the limit of {max_pixels} pixels" in message
    assert "178956970" not in message and "89478485" not in message and "--max-pixels" in message
    assert Image.MAX_IMAGE_PIXELS == pillow_limit


def test_exif_rotation_swaps_the_recorded_size():
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when shown
    decoded = decode_image(_jpeg(_gradient(64, 32), exif=exif.tobytes()))
    assert (decoded.width, decoded.height) == (32, 64)
    assert decoded.image.size == (32, 64)


def _encoded(image: Image.Image, fmt: str, exif: Image.Exif) -> bytes:
    ensure_openers()  # HEIF
    options = {"JPEG": {"quality": 95}, "WEBP": {"lossless": True}, "HEIF": {"quality": 95},
               "TIFF-deflate": {"compression": "tiff_adobe_deflate"}}.get(fmt, {})
    buffer = io.BytesIO()
    image.save(buffer, fmt.split("-")[0], exif=exif.tobytes(), **options)
    return buffer.getvalue()


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "TIFF", "TIFF-deflate", "HEIF"])
def test_recorded_size_is_the_upright_images_and_orientation_the_files(fmt, orientation):
    stored = Image.new("RGB", (64, 48), (0, 0, 0))
    stored.paste((255, 0, 0), (0, 0, 24, 16))  # marks the top-left corner as stored
    exif = Image.Exif()
    exif[0x0112], exif[0x010F] = orientation, "Camera"
    stored.info["exif"] = exif.tobytes()
    shown = ImageOps.exif_transpose(stored)  # what a viewer shows
    decoded = decode_image(_encoded(stored, fmt, exif))
    meta = photo_metadata(decoded.exif, mtime_ns=0, width=decoded.width, height=decoded.height)
    assert (meta.width, meta.height) == decoded.image.size == shown.size
    assert meta.orientation == orientation and meta.make == "Camera"
    assert np.abs(np.asarray(decoded.image, np.int16) - np.asarray(shown, np.int16)).mean() < 8
    assert decoded.image.getexif().get(0x0112, 1) == 1  # upright pixels do not ask to be turned again


def test_sixteen_bit_scans_convert_without_a_float_copy_of_themselves():
    pixels = np.random.default_rng(0).integers(0, 65536, (4_096, 4_096), dtype=np.uint16)  # 16.8 Mpx
    tracemalloc.start()
    try:
        rgb = to_rgb(Image.fromarray(pixels))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * pixels.size  # a float64 copy alone is 8 bytes a pixel
    expected = np.clip(pixels / 257.0, 0, 255).round().astype(np.uint8)
    assert np.array_equal(np.asarray(rgb), np.repeat(expected[:, :, None], 3, axis=2))



@pytest.mark.parametrize("mode", ["RGBA", "LA", "PA", "RGBa", "P"])
def test_transparency_composited_on_white_band_by_band_equals_the_whole_image_composite(mode):
    """Three bands of rows (the last one short): each pixel as the whole image composited at once gives it."""
    rng = np.random.default_rng(1)
    width, height = 2_048, 4_100  # bands of 2,048 rows
    rgba = Image.fromarray(rng.integers(0, 256, (height, width, 4), dtype=np.uint8), "RGBA")
    if mode == "P":
        image = rgba.convert("RGB").quantize(16)
        image.info["transparency"] = 3
    else:
        image = rgba.convert(mode)
    whole = image.convert("RGBA")
    expected = Image.alpha_composite(Image.new("RGBA", whole.size, (255, 255, 255, 255)), whole).convert("RGB")
    assert np.array_equal(np.asarray(to_rgb(image)), np.asarray(expected))

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


@pytest.mark.parametrize("copy", [False, True])
def test_an_organize_folder_inside_the_tree_is_not_ingested_again(tmp_path, tiny_encoder, copy):
    """``label --organize`` (or ``duplicates --organize``) into a folder of the ingested tree: the next ingest
    of the tree passes over its links or copies (it had made every image a second row, each hit shown twice),
    and reads it as any other folder when it is named as a source."""
    from mmretrieval.collection.collection import Collection

    root = tmp_path / "photos"
    _folder_with_hidden_entries(root)
    with Collection.open(tmp_path / "col", model=tiny_encoder, create=True) as col:
        assert col.ingest([root], workers=0).embedded == 2
        col.label(["circle", "square"], label_set="shapes")
        assert col.organize(root / "by-shape", copy=copy).placed == 2
        again = col.ingest([root], workers=0)
        assert (again.embedded, again.unchanged, again.duplicates) == (0, 2, 0)
        assert sum(col.info().counts.values()) == 2
        named = col.ingest([root / "by-shape"], workers=0)  # read as any folder: its links lead out of it
        assert (named.duplicates, named.skipped) == ((2, {}) if copy else (0, {"link_outside_root": 2}))


def test_a_folder_given_as_an_image_is_a_decode_error_not_an_os_error(tmp_path):
    """A folder named where an image file is expected (a captions CSV's empty or folder cell, the API) is refused
    as not a regular file, with what it is; os.fdopen used to raise IsADirectoryError: 'Is a directory: 3'."""
    from mmretrieval.images.decode import read_image_file

    with pytest.raises(ImageDecodeError, match="is a folder") as refused:
        read_image_file(tmp_path)
    assert refused.value.reason == "not_regular_file"


def test_a_folder_named_in_a_list_file_is_skipped_as_a_folder(tmp_path):
    from mmretrieval.ingest.batches import Skipped
    from mmretrieval.ingest.reader import discover

    (tmp_path / "album").mkdir()
    (tmp_path / "list.txt").write_text(f"{tmp_path / 'album'}\n")
    (found,) = list(discover([str(tmp_path / "list.txt")]))
    assert isinstance(found, Skipped) and found.reason == "not_regular_file"
    assert found.message == f"{tmp_path / 'album'} is a folder; a list file names image files"
