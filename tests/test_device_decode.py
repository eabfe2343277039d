"""The device (GPU) decoding path, run on the CPU device: routing, EXIF orientation, and agreement with the
CPU path's embeddings."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from mmretrieval.ingest.batches import DecodeTask
from torchvision.io import ImageReadMode, decode_jpeg

from mmretrieval.images.preprocess import ImagePreparer
from mmretrieval.ingest.device_decode import DeviceJpegDecoder, Probed, _orient, probe
from mmretrieval.ingest.pool import DecodePool
from mmretrieval.ingest.reader import decode_file
from mmretrieval.ingest.routing import largest_to_cpu, split_batches
from mmretrieval.training.scenes import generate

CPU = torch.device("cpu")


def _jpeg(image: Image.Image, orientation: int = 1, **save) -> bytes:
    buffer = io.BytesIO()
    exif = Image.Exif()
    if orientation != 1:
        exif[0x0112] = orientation
    image.save(buffer, "JPEG", exif=exif.tobytes(), **{"quality": 92, **save})
    return buffer.getvalue()


def _write(folder, name: str, data: bytes) -> DecodeTask:
    path = folder / name
    path.write_bytes(data)
    return DecodeTask(abs(hash(name)) % 10**9, str(path))


def _asymmetric(width: int, height: int) -> Image.Image:
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([x * 255 // width, y * 255 // height, (x < width // 4) * 255], axis=-1).astype(np.uint8)
    return Image.fromarray(pixels)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_as_pillow_does(tmp_path, orientation):
    task = _write(tmp_path, "o.jpg", _jpeg(_asymmetric(96, 64), orientation, quality=100))
    probed = probe(task)
    assert isinstance(probed, Probed)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(task.path)).convert("RGB")).transpose(2, 0, 1)
    assert (probed.width, probed.height) == (expected.shape[2], expected.shape[1])
    image = _orient(decode_jpeg(torch.frombuffer(bytearray(probed.data), dtype=torch.uint8),
                                mode=ImageReadMode.RGB), probed.orientation)
    assert tuple(image.shape) == expected.shape
    assert np.abs(image.numpy().astype(int) - expected.astype(int)).mean() < 2.0
    decoded, pixels, for_cpu = DeviceJpegDecoder('{"size": 48, "resize_mode": "squash"}', CPU).decode([probed])
    assert not for_cpu and pixels.shape == (1, 3, 48, 48) and decoded[0].width == probed.width


def test_what_the_device_cannot_decode_goes_to_the_cpu_and_spares_its_batch_mates(tmp_path):
    scene = generate(3, 1, size=160).image
    good = [_write(tmp_path, f"good{i}.jpg", _jpeg(generate(3, i, size=160).image)) for i in range(3)]
    png = io.BytesIO()
    scene.save(png, "PNG")
    cmyk = io.BytesIO()
    scene.convert("CMYK").save(cmyk, "JPEG")
    progressive = _jpeg(scene, progressive=True)
    to_cpu = [_write(tmp_path, "a.png.jpg", png.getvalue()), _write(tmp_path, "cmyk.jpg", cmyk.getvalue()),
              _write(tmp_path, "progressive.jpg", progressive), _write(tmp_path, "text.jpg", b"not an image"),
              DecodeTask(7, str(tmp_path / "missing.jpg"))]
    assert [probe(task) for task in to_cpu] == to_cpu

    cut = _jpeg(scene)
    truncated = _write(tmp_path, "cut.jpg", cut[: len(cut) // 2])  # a whole header, half the scan
    probed = [probe(task) for task in [good[0], truncated, *good[1:]]]
    assert all(isinstance(item, Probed) for item in probed)
    decoder = DeviceJpegDecoder('{"size": 64}', CPU)
    decoded, pixels, for_cpu = decoder.decode(probed)
    assert for_cpu == [truncated]  # the CPU pool gives it its reason
    assert [d.image_id for d in decoded] == [t.image_id for t in good]
    rows = {d.image_id: row for d, row in zip(decoded, pixels)}
    for task in good:  # each image on its own row, close to the CPU path's pixels
        cpu = decode_file(task, ImagePreparer('{"size": 64}')).pixels
        assert np.abs(rows[task.image_id].numpy().astype(int) - cpu.astype(int)).mean() < 6.0


def test_device_path_embeddings_agree_with_the_cpu_path(tmp_path, shapes_encoder):
    """The issue's parity bar: median cosine >= 0.995 and minimum >= 0.98 over mixed sizes, aspect ratios,
    EXIF rotations and greyscale."""
    tasks = []
    sizes = [(96, 96), (224, 224), (640, 480), (480, 640), (1024, 300), (300, 1024), (1600, 1200), (75, 60)]
    for index in range(24):
        image = generate(11, index, size=256).image.resize(sizes[index % len(sizes)], Image.Resampling.BICUBIC)
        orientation = (1, 6, 3, 8)[index % 4] if index % 3 else 1
        if orientation in (6, 8):  # stored turned, as a camera does: the EXIF tag puts it upright again
            image = image.transpose(Image.Transpose.ROTATE_90 if orientation == 6 else Image.Transpose.ROTATE_270)
        elif orientation == 3:
            image = image.transpose(Image.Transpose.ROTATE_180)
        if index % 5 == 0:
            image = image.convert("L")
        tasks.append(_write(tmp_path, f"mixed{index:02d}.jpg", _jpeg(image, orientation)))
    preparer = shapes_encoder.preparer
    cpu_pixels = np.stack([decode_file(task, preparer).pixels for task in tasks])
    probed = [probe(task) for task in tasks]
    assert all(isinstance(item, Probed) for item in probed)
    decoded, device_pixels, for_cpu = DeviceJpegDecoder(preparer.preprocess, CPU).decode(probed)
    assert not for_cpu and [d.image_id for d in decoded] == [t.image_id for t in tasks]
    for record, task in zip(decoded, tasks):
        cpu = decode_file(task, preparer)
        assert (record.width, record.height, record.content_hash) == (cpu.width, cpu.height, cpu.content_hash)
    cpu_vectors = shapes_encoder.encode_prepared(torch.from_numpy(cpu_pixels))
    device_vectors = shapes_encoder.encode_prepared(device_pixels)
    cosines = (cpu_vectors * device_vectors).sum(axis=1)
    assert np.median(cosines) >= 0.995 and cosines.min() >= 0.98, np.round(np.sort(cosines), 4)


def test_largest_jpegs_go_to_the_cpu_when_it_has_room(tmp_path):
    sizes = [(64, 64), (300, 200), (96, 96), (640, 480), (120, 80)]
    probed = [probe(_write(tmp_path, f"s{i}.jpg", _jpeg(_asymmetric(w, h)))) for i, (w, h) in enumerate(sizes)]
    device, cpu = largest_to_cpu(probed, 2)
    assert [p.width for p in cpu] == [300, 640] and [p.width for p in device] == [64, 96, 120]  # order kept
    assert largest_to_cpu(probed, 0) == (probed, []) and largest_to_cpu(probed, 9) == ([], probed)


@pytest.mark.parametrize("share_jpegs", [True, False], ids=["shared", "device-only"])
def test_cpu_and_device_share_the_jpegs_and_each_file_keeps_its_pixels(tmp_path, share_jpegs):
    preparer = ImagePreparer('{"size": 48}')
    tasks = [_write(tmp_path, f"j{i:03d}.jpg", _jpeg(generate(5, i, size=64 + i % 7 * 16).image)) for i in range(160)]
    png = io.BytesIO()
    generate(5, 999).image.save(png, "PNG")
    tasks.append(_write(tmp_path, "other.png", png.getvalue()))
    pool = DecodePool(preparer, 1)

    def worker_up_after_two_groups():  # so that the CPU side's share does not hang on its start-up time
        for index, task in enumerate(tasks):
            deadline = time.monotonic() + 60
            while index == 48 and share_jpegs and not pool.ready_workers and time.monotonic() < deadline:
                time.sleep(0.01)
            yield task

    batches = list(split_batches(worker_up_after_two_groups(), DeviceJpegDecoder(preparer.preprocess, CPU), pool,
                                 batch_size=16, read_threads=2, share_jpegs=share_jpegs))
    on_cpu, on_device, rows = set(), set(), {}
    for decoded, pixels, failed in batches:
        assert not failed
        side = on_device if isinstance(pixels, torch.Tensor) else on_cpu
        block = pixels.numpy() if isinstance(pixels, torch.Tensor) else (pixels[0] if decoded else pixels)
        for record, row in zip(decoded, block, strict=True):
            side.add(record.image_id)
            rows[record.image_id] = row
    assert on_cpu.isdisjoint(on_device) and on_cpu | on_device == {t.image_id for t in tasks}  # each file once
    assert tasks[-1].image_id in on_cpu  # the PNG: only the CPU decodes it
    jpegs_on_cpu = on_cpu - {tasks[-1].image_id}
    if share_jpegs:  # one JPEG starts the worker; once up, it takes what it has room for
        # (which ones, the largest of each group, is test_largest_jpegs_go_to_the_cpu_when_it_has_room's: here the
        # worker's room varies with the machine's load, and so did the sizes it took, failing a busy CI run)
        assert len(jpegs_on_cpu) > 1 and len(on_device) > 0
    else:
        assert not jpegs_on_cpu
    for task in tasks:  # each file's own pixels, whichever side decoded it
        expected = decode_file(task, preparer).pixels.astype(int)
        assert np.abs(rows[task.image_id].astype(int) - expected).mean() < 6.0, task.path


def test_jpegs_over_pillows_size_limit_go_to_the_cpu_pool_which_decodes_them_small(tmp_path):
    """nvJPEG decodes whole, a batch holding every image at once: a 108 MP photo is ~324 MB of pixels. They went
    to the CPU while a (thread-unsafe) warning filter turned Pillow's size warning into an error; now by size."""
    import struct

    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(buffer, "JPEG")
    data = bytearray(buffer.getvalue())
    sof = data.index(b"\xff\xc0")  # baseline SOF0: length, precision, height, width
    big, small = tmp_path / "big.jpg", tmp_path / "small.jpg"
    data[sof + 5:sof + 9] = struct.pack(">HH", 9_000, 12_000)  # 108 MP declared (the pixels need not follow)
    big.write_bytes(bytes(data))
    small.write_bytes(buffer.getvalue())
    task, kept = DecodeTask(1, str(big)), DecodeTask(2, str(small))
    assert probe(task) == task  # for the CPU pool
    assert isinstance(probe(kept), Probed)
