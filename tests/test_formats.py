"""Every photo format: real files of each kind decode, are found by content, and stay inside the safety limits."""

from __future__ import annotations

import errno
import io
import os
import re
import struct
import sys
import time
import types
import zlib

import numpy as np
import pytest
from PIL import Image, features

from mmretrieval.errors import ImageDecodeError
from mmretrieval.images.decode import decode_image
from mmretrieval.images.formats import sniff
from mmretrieval.images.preprocess import ImagePreparer
from mmretrieval.ingest import reader
from mmretrieval.ingest.batches import Decoded, DecodeTask, Failed, SourceFile
from mmretrieval.ingest.pool import DecodePool
from mmretrieval.ingest.reader import decode_file, discover

RED, GREEN = (220, 20, 20), (20, 200, 30)
PREPARER = ImagePreparer('{"size": 32}')


def _heif_opener() -> None:
    import pillow_heif

    pillow_heif.register_heif_opener()


def _encode(fmt: str, image: Image.Image, **options) -> bytes:
    if fmt == "HEIF":
        _heif_opener()
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _two_frames(size=(40, 30)) -> list[Image.Image]:
    return [Image.new("RGB", size, RED), Image.new("RGB", size, GREEN)]


def _mpo(size=(40, 30)) -> bytes:
    frames = _two_frames(size)
    return _encode("MPO", frames[0], save_all=True, append_images=frames[1:])


# name -> (bytes, expected Pillow format); every one a real file of that format, first frame red
CASES = {
    "photo.heic": (lambda: _encode("HEIF", Image.new("RGB", (40, 30), RED)), "HEIF"),
    "photo.avif": (lambda: _encode("AVIF", Image.new("RGB", (40, 30), RED)), "AVIF"),
    "stereo.mpo": (_mpo, "MPO"),
    "shot.tga": (lambda: _encode("TGA", Image.new("RGB", (40, 30), RED)), "TGA"),
    "icon.ico": (lambda: _encode("ICO", Image.new("RGB", (32, 32), RED), sizes=[(32, 32)]), "ICO"),
    "pixels.ppm": (lambda: _encode("PPM", Image.new("RGB", (40, 30), RED)), "PPM"),
    "grey.pgm": (lambda: _encode("PPM", Image.new("L", (40, 30), 128)), "PPM"),
    "mono.pbm": (lambda: _encode("PPM", Image.new("1", (40, 30), 1)), "PPM"),
    "anim.gif": (lambda: _encode("GIF", _two_frames()[0], save_all=True, append_images=_two_frames()[1:],
                                 duration=50, loop=0), "GIF"),
    "anim.webp": (lambda: _encode("WEBP", _two_frames()[0], save_all=True, append_images=_two_frames()[1:],
                                  duration=50, lossless=True), "WEBP"),
    "anim.png": (lambda: _encode("PNG", _two_frames()[0], save_all=True, append_images=_two_frames()[1:],
                                 duration=50), "PNG"),
    "tile.jp2": (lambda: _encode("JPEG2000", Image.new("RGB", (40, 30), RED)), "JPEG2000"),
    "fast.qoi": (lambda: _encode("QOI", Image.new("RGB", (40, 30), RED)), "QOI"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_format_decodes_to_its_first_frame(tmp_path, name):
    make, fmt = CASES[name]
    if fmt == "AVIF" and not features.check("avif"):
        pytest.skip("this Pillow build has no AVIF codec (Pillow 11.3+ wheels have one)")
    path = tmp_path / name
    path.write_bytes(make())
    result = decode_file(DecodeTask(7, str(path)), PREPARER)
    assert isinstance(result, Decoded), result
    assert result.format == fmt and result.image_id == 7
    assert result.pixels.shape == (3, 32, 32)
    if name not in ("grey.pgm", "mono.pbm"):
        mean = result.pixels.reshape(3, -1).mean(axis=1)
        assert np.allclose(mean, RED, atol=12), (name, mean)  # the first frame, not the green second one
    assert (result.width, result.height) == ((32, 32) if name == "icon.ico" else (40, 30))


def test_files_are_found_by_content_and_lists_are_never_sniffed(tmp_path, monkeypatch):
    root = tmp_path / "photos"
    root.mkdir()
    (root / "IMG_0001").write_bytes(CASES["photo.heic"][0]())  # no extension: an iPhone export
    (root / "scan.dat").write_bytes(_encode("PNG", Image.new("RGB", (8, 8), RED)))
    (root / "clip.mp4").write_bytes(b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2" + b"\x00" * 64)
    (root / "video.bin").write_bytes(b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom" + b"\x00" * 64)
    (root / "README").write_text("not an image at all\n")
    (root / "list.csv").write_text("path\nIMG_0001\n")
    (root / "notes.txt").write_text("\x89PNG\r\n\x1a\n but a text file")  # an image header, in a list name
    (root / "shot.tga").write_bytes(CASES["shot.tga"][0]())  # TGA has no magic number: found by its name
    (root / "._shot.tga").write_bytes(b"\x00\x05\x16\x07 AppleDouble resource fork")  # macOS litter
    sniffed = []
    real_sniff_file = reader.sniff_file
    monkeypatch.setattr(reader, "sniff_file", lambda path: sniffed.append(os.path.basename(path)) or real_sniff_file(path))
    found = {os.path.basename(item.path) for item in discover([root]) if isinstance(item, SourceFile)}
    assert found == {"IMG_0001", "scan.dat", "shot.tga"}
    assert sorted(sniffed) == ["IMG_0001", "README", "scan.dat", "video.bin"]  # never .txt, .csv, .mp4, .tga


def test_sniff_tells_still_images_from_videos():
    assert sniff(b"\x00\x00\x00\x1cftypheic\x00\x00\x00\x00mif1heicmiaf") == "HEIF"
    assert sniff(b"\x00\x00\x00\x20ftypavif\x00\x00\x00\x00avifmif1miafMA1B") == "AVIF"
    assert sniff(b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2") is None
    assert sniff(b"\x00\x00\x00\x18ftypqt  \x00\x00\x02\x00qt  ") is None
    assert sniff(b"II*\x00\x10\x00\x00\x00CR\x02\x00") == "RAW"
    assert sniff(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00") == "JPEG"
    assert sniff(b"hello world, not an image") is None


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


def _heic_claiming(width: int, height: int) -> bytes:
    data = bytearray(_encode("HEIF", Image.new("RGB", (64, 64), RED)))  # 64x64: no clean-aperture crop box
    for match in re.finditer(b"ispe", bytes(data)):
        data[match.start() + 8:match.start() + 16] = struct.pack(">II", width, height)
    return bytes(data)


@pytest.mark.parametrize("make", [_png_header_only, _heic_claiming], ids=["png", "heic"])
def test_huge_headers_are_refused_before_decoding(make):
    started = time.monotonic()
    with pytest.raises(ImageDecodeError) as caught:
        decode_image(make(40_000, 40_000))
    assert caught.value.reason == "decompression_bomb"
    assert time.monotonic() - started < 5


def test_heic_respects_the_callers_pixel_limit():
    with pytest.raises(ImageDecodeError) as caught:
        decode_image(_encode("HEIF", Image.new("RGB", (64, 64), RED)), max_pixels=1000)
    assert caught.value.reason == "decompression_bomb"


def test_heic_decodes_inside_decode_worker_processes(tmp_path):
    path = tmp_path / "IMG_0002.HEIC"
    path.write_bytes(CASES["photo.heic"][0]())
    broken = tmp_path / "broken.heic"
    broken.write_bytes(path.read_bytes()[:200])
    pool = DecodePool(PREPARER, workers=1, timeout_s=30)
    results = {r.image_id: r for r in pool.run([DecodeTask(1, str(path)), DecodeTask(2, str(broken))])}
    assert isinstance(results[1], Decoded) and results[1].format == "HEIF"
    assert isinstance(results[2], Failed) and results[2].reason in ("truncated", "corrupt")


def _fake_rawpy(thumb_bytes: bytes | None, flip: int) -> types.ModuleType:
    """A stand-in for rawpy (which cannot write RAW files): one file with a JPEG preview and a flip."""
    module = types.ModuleType("rawpy")

    class LibRawError(Exception):
        pass

    class LibRawNoThumbnailError(LibRawError):
        pass

    class LibRawUnsupportedThumbnailError(LibRawError):
        pass

    class ThumbFormat:
        JPEG, BITMAP = 1, 2

    class Raw:
        sizes = types.SimpleNamespace(flip=flip, width=6000, height=4000)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def extract_thumb(self):
            if thumb_bytes is None:
                raise LibRawNoThumbnailError("no thumbnail")
            return types.SimpleNamespace(format=ThumbFormat.JPEG, data=thumb_bytes)

        def postprocess(self, **options):
            return np.zeros((20, 30, 3), np.uint8)

    def imread(source):
        if source.read(4) == b"JUNK":
            raise LibRawError("unsupported file")
        return Raw()

    module.__dict__.update(LibRawError=LibRawError, LibRawNoThumbnailError=LibRawNoThumbnailError,
                           LibRawUnsupportedThumbnailError=LibRawUnsupportedThumbnailError,
                           ThumbFormat=ThumbFormat, imread=imread)
    return module


def _tiff_raw_with_exif() -> bytes:
    """A TIFF container with camera EXIF, as DNG/NEF/ARW files are (the sensor data does not matter here)."""
    exif = Image.Exif()
    exif[0x010F], exif[0x0110] = "NIKON CORPORATION", "NIKON Z 6"
    exif.get_ifd(0x8769)[0x9003] = "2023:12:24 18:05:00"
    return _encode("TIFF", Image.new("RGB", (16, 16)), exif=exif.tobytes())


def test_raw_files_embed_their_preview_turned_by_librarys_flip(tmp_path, monkeypatch):
    preview = _encode("JPEG", Image.new("RGB", (60, 40), RED))
    monkeypatch.setitem(sys.modules, "rawpy", _fake_rawpy(preview, flip=6))
    path = tmp_path / "DSC_0001.NEF"
    path.write_bytes(_tiff_raw_with_exif())
    result = decode_file(DecodeTask(1, str(path)), PREPARER)
    assert isinstance(result, Decoded) and result.format == "RAW"
    assert (result.width, result.height) == (40, 60)  # portrait: LibRaw's flip 6 applied
    assert result.metadata.camera == "NIKON Z 6" and result.metadata.taken_local == "2023-12-24T18:05:00"


def test_raw_without_preview_is_demosaiced_and_junk_is_corrupt(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "rawpy", _fake_rawpy(None, flip=0))
    path = tmp_path / "IMG_0001.CR2"
    path.write_bytes(b"II*\x00\x10\x00\x00\x00CR\x02\x00" + b"\x00" * 64)
    result = decode_file(DecodeTask(1, str(path)), PREPARER)
    assert isinstance(result, Decoded) and (result.width, result.height) == (6000, 4000)
    junk = tmp_path / "junk.arw"
    junk.write_bytes(b"JUNK" * 10)
    failed = decode_file(DecodeTask(2, str(junk)), PREPARER)
    assert isinstance(failed, Failed) and failed.reason == "corrupt"


def test_raw_without_rawpy_says_which_extra_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "rawpy", None)  # import rawpy -> ImportError
    path = tmp_path / "IMG_0001.dng"
    path.write_bytes(_tiff_raw_with_exif())
    result = decode_file(DecodeTask(1, str(path)), PREPARER)
    assert isinstance(result, Failed) and result.reason == "raw_unsupported"
    assert "mmretrieval[raw]" in result.message


def test_a_folder_removed_during_the_walk_does_not_stop_it(tmp_path, monkeypatch):
    root = tmp_path / "root"
    for name in ("a", "gone", "z"):
        (root / name).mkdir(parents=True)
        (root / name / "p.png").write_bytes(b"x")
    real_stat = os.stat

    def stat_with_a_vanished_folder(path, *args, **kwargs):
        if os.fspath(path).endswith("gone"):
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(reader.os, "stat", stat_with_a_vanished_folder)
    found = sorted(os.path.relpath(item.path, root) for item in discover([root]))
    assert found == ["a/p.png", "z/p.png"]


def test_an_unlistable_folder_and_a_link_loop_become_skips(tmp_path, monkeypatch):
    root = tmp_path / "root"
    (root / "locked").mkdir(parents=True)
    (root / "ok.png").write_bytes(b"x")
    (root / "loop.jpg").symlink_to(root / "loop.jpg")
    real_scandir = os.scandir

    def scandir(path):
        if os.fspath(path).endswith("locked"):
            raise PermissionError(errno.EACCES, "Permission denied", path)
        return real_scandir(path)

    monkeypatch.setattr(reader.os, "scandir", scandir)
    found = {os.path.relpath(item.path, root): getattr(item, "reason", "file") for item in discover([root])}
    assert found == {"locked": "unreadable", "loop.jpg": "symlink_loop", "ok.png": "file"}


def test_query_images_take_the_same_route_as_ingestion(tmp_path, monkeypatch, tiny_encoder):
    preview = _encode("JPEG", Image.new("RGB", (60, 40), RED))
    monkeypatch.setitem(sys.modules, "rawpy", _fake_rawpy(preview, flip=0))
    raw = tmp_path / "DSC_0002.ARW"
    raw.write_bytes(_tiff_raw_with_exif())
    heic = tmp_path / "IMG_0003.heic"
    heic.write_bytes(CASES["photo.heic"][0]())
    same_red = tmp_path / "red.png"
    Image.new("RGB", (60, 40), RED).save(same_red)
    vectors = tiny_encoder.encode_images([raw, heic, same_red])
    assert vectors.shape == (3, tiny_encoder.dim)
    assert float(vectors[0] @ vectors[2]) > 0.99  # the RAW file embedded as its (red) preview
