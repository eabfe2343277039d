"""How many of the images Pillow can load does ingestion embed? By format, with the list of misses.

Walks a folder (Pillow's own test-image corpus is the intended one), loads every file with plain Pillow
(``Image.open(path).load()``, pillow-heif registered, default decompression-bomb limit, in killable worker
processes with a timeout) to find the loadable ones and their formats, then checks our side: the reader must
find the file (folder walk with extension fast path and content sniffing) and ``decode_file`` must decode it.

    pip download --no-deps --no-binary :all: pillow==$(python -c 'import PIL; print(PIL.__version__)') -d /tmp/pillow-sdist
    tar xzf /tmp/pillow-sdist/pillow-*.tar.gz -C /tmp/pillow-sdist
    python bench/formats.py /tmp/pillow-sdist/pillow-*/Tests/images [--json]

"Common formats" are JPEG, MPO, PNG, GIF, WebP, BMP, TIFF, HEIF, AVIF, TGA, ICO and the PPM family.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import time
import warnings

import numpy as np

from mmretrieval.images.preprocess import ImagePreparer
from mmretrieval.ingest.batches import Decoded, DecodeTask, Failed, SourceFile
from mmretrieval.ingest.pool import DecodePool
from mmretrieval.ingest.reader import decode_file, discover

COMMON = ("JPEG", "MPO", "PNG", "GIF", "WEBP", "BMP", "TIFF", "HEIF", "AVIF", "TGA", "ICO", "PPM")
SIZE = 224  # the preparer's side: the pool checks that what a decoder returns has the shape the model takes
_PIXELS = np.zeros((3, SIZE, SIZE), dtype=np.uint8)


def pillow_reference(task: DecodeTask, preparer: ImagePreparer) -> Decoded | Failed:
    """Plain Pillow (plus pillow-heif), as a user's script would load the file; the format rides in ``format``."""
    import pillow_heif
    from PIL import Image

    pillow_heif.register_heif_opener()
    Image.init()  # every plugin loaded up front: the same identification order whichever file a worker starts with
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(task.path) as image:
                image.load()
                return Decoded(task.image_id, "", image.width, image.height, image.format or "?", _PIXELS)
    except Exception as exc:  # anything Pillow raises means "not loadable"
        return Failed(task.image_id, type(exc).__name__, str(exc)[:200])


def run_pool(paths: list[str], decode, workers: int, timeout_s: float) -> dict[str, Decoded | Failed]:
    preparer = ImagePreparer(json.dumps({"size": SIZE}))
    tasks = [DecodeTask(i, path) for i, path in enumerate(paths)]
    pool = DecodePool(preparer, workers, timeout_s, decode=decode)
    return {paths[result.image_id]: result for result in pool.run(tasks)}


def measure(folder: str, workers: int, timeout_s: float) -> dict:
    """Load every file with plain Pillow, then find and decode the loadable ones our way; the report dict."""
    everything = sorted(os.path.join(d, f) for d, _, files in os.walk(folder) for f in files
                        if os.path.isfile(os.path.join(d, f)) and not os.path.islink(os.path.join(d, f)))
    started = time.perf_counter()
    reference = run_pool(everything, pillow_reference, workers, timeout_s)
    loadable = {p: r.format for p, r in reference.items() if isinstance(r, Decoded)}
    # files plain Pillow itself gave up on by timeout: neither loadable nor misses, but worth knowing about
    timeouts = sorted(os.path.relpath(p, folder) for p, r in reference.items()
                      if isinstance(r, Failed) and r.reason in ("decode_timeout", "decoder_crashed"))
    found = {os.path.relpath(item.path, os.path.abspath(folder)) for item in discover([os.path.abspath(folder)])
             if isinstance(item, SourceFile)}
    ours = run_pool(sorted(loadable), decode_file, workers, timeout_s)
    by_format: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    misses = []
    for path, fmt in loadable.items():
        relative, result = os.path.relpath(path, folder), ours[path]
        embedded = relative in found and isinstance(result, Decoded)
        by_format[fmt]["loadable"] += 1
        by_format[fmt]["embedded"] += embedded
        if not embedded:
            why = "not found by the reader" if relative not in found else f"{result.reason}: {result.message}"
            misses.append({"path": relative, "format": fmt, "why": why[:160]})
    return {
        "files": len(everything), "pillow_loadable": len(loadable),
        "seconds": round(time.perf_counter() - started, 1), "pillow_timeouts_or_crashes": timeouts,
        "common": _share(by_format, [f for f in by_format if f in COMMON]), "all": _share(by_format, list(by_format)),
        "by_format": {f: dict(c) for f, c in sorted(by_format.items())},
        "misses": sorted(misses, key=lambda m: (m["format"], m["path"])),
    }


def _share(by_format: dict[str, collections.Counter], formats: list[str]) -> dict:
    embedded = sum(by_format[f]["embedded"] for f in formats)
    loadable = sum(by_format[f]["loadable"] for f in formats)
    return {"embedded": embedded, "loadable": loadable, "percent": round(100 * embedded / max(loadable, 1), 2)}


def print_table(report: dict) -> None:
    print(f"{report['files']} files, {report['pillow_loadable']} loadable by Pillow (+pillow-heif), "
          f"{report['seconds']} s")
    if report["pillow_timeouts_or_crashes"]:
        print(f"plain Pillow timed out or crashed on: {', '.join(report['pillow_timeouts_or_crashes'])}")
    print(f"{'format':10} {'embedded':>9} {'loadable':>9} {'%':>7}")
    for fmt, counts in report["by_format"].items():
        mark = "*" if fmt in COMMON else " "
        print(f"{fmt:9}{mark} {counts['embedded']:9d} {counts['loadable']:9d} "
              f"{100 * counts['embedded'] / counts['loadable']:7.1f}")
    for name, label in (("common", "common formats (*)"), ("all", "all formats")):
        share = report[name]
        print(f"{label + ':':20} {share['embedded']}/{share['loadable']} = {share['percent']}%")
    for miss in report["misses"]:
        print(f"miss\t{miss['format']}\t{miss['path']}\t{miss['why']}", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=20.0, help="seconds per file (default 20)")
    parser.add_argument("--json", action="store_true", help="one JSON object instead of the table")
    args = parser.parse_args()
    report = measure(args.folder, args.workers, args.timeout)
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print_table(report)


if __name__ == "__main__":
    main()
