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
_PIXELS = np.zeros((3, 1, 1), dtype=np.uint8)


def pillow_reference(task: DecodeTask, preparer: ImagePreparer) -> Decoded | Failed:
    """Plain Pillow (plus pillow-heif), as a user's script would load the file; the format rides in ``format``."""
    import pillow_heif
    from PIL import Image

    pillow_heif.register_heif_opener()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(task.path) as image:
                image.load()
                return Decoded(task.image_id, "", image.width, image.height, image.format or "?", _PIXELS)
    except Exception as exc:  # anything Pillow raises means "not loadable"
        return Failed(task.image_id, type(exc).__name__, str(exc)[:200])


def run_pool(paths: list[str], decode, workers: int, timeout_s: float) -> dict[str, Decoded | Failed]:
    preparer = ImagePreparer(json.dumps({"size": 224}))
    tasks = [DecodeTask(i, path) for i, path in enumerate(paths)]
    pool = DecodePool(preparer, workers, timeout_s, decode=decode)
    return {paths[result.image_id]: result for result in pool.run(tasks)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=20.0, help="seconds per file (default 20)")
    parser.add_argument("--json", action="store_true", help="one JSON object instead of the table")
    args = parser.parse_args()

    everything = sorted(os.path.join(d, f) for d, _, files in os.walk(args.folder) for f in files
                        if os.path.isfile(os.path.join(d, f)) and not os.path.islink(os.path.join(d, f)))
    started = time.perf_counter()
    reference = run_pool(everything, pillow_reference, args.workers, args.timeout)
    loadable = {p: r.format for p, r in reference.items() if isinstance(r, Decoded)}
    # files plain Pillow itself gave up on by timeout: neither loadable nor misses, but worth knowing about
    timeouts = sorted(os.path.relpath(p, args.folder) for p, r in reference.items()
                      if isinstance(r, Failed) and r.reason in ("decode_timeout", "decoder_crashed"))
    found = {item.path for item in discover([os.path.abspath(args.folder)]) if isinstance(item, SourceFile)}
    found = {os.path.relpath(p, os.path.abspath(args.folder)) for p in found}
    ours = run_pool(sorted(loadable), decode_file, args.workers, args.timeout)
    elapsed = time.perf_counter() - started

    by_format: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    misses = []
    for path, fmt in loadable.items():
        relative = os.path.relpath(path, args.folder)
        result = ours[path]
        embedded = relative in found and isinstance(result, Decoded)
        by_format[fmt]["loadable"] += 1
        by_format[fmt]["embedded"] += embedded
        if not embedded:
            why = "not found by the reader" if relative not in found else f"{result.reason}: {result.message}"
            misses.append({"path": relative, "format": fmt, "why": why[:160]})

    def share(formats) -> tuple[int, int]:
        return (sum(by_format[f]["embedded"] for f in formats), sum(by_format[f]["loadable"] for f in formats))

    common_embedded, common_total = share([f for f in by_format if f in COMMON])
    all_embedded, all_total = share(list(by_format))
    report = {
        "files": len(everything), "pillow_loadable": len(loadable), "seconds": round(elapsed, 1),
        "pillow_timeouts_or_crashes": timeouts,
        "common": {"embedded": common_embedded, "loadable": common_total,
                   "percent": round(100 * common_embedded / max(common_total, 1), 2)},
        "all": {"embedded": all_embedded, "loadable": all_total,
                "percent": round(100 * all_embedded / max(all_total, 1), 2)},
        "by_format": {f: dict(c) for f, c in sorted(by_format.items())},
        "misses": sorted(misses, key=lambda m: (m["format"], m["path"])),
    }
    if args.json:
        print(json.dumps(report, indent=1))
        return
    print(f"{len(everything)} files, {len(loadable)} loadable by Pillow (+pillow-heif), {elapsed:.1f} s")
    if timeouts:
        print(f"plain Pillow timed out or crashed on {len(timeouts)}: {', '.join(timeouts)}")
    print(f"{'format':10} {'embedded':>9} {'loadable':>9} {'%':>7}")
    for fmt, counts in sorted(by_format.items()):
        mark = "*" if fmt in COMMON else " "
        print(f"{fmt:9}{mark} {counts['embedded']:9d} {counts['loadable']:9d} "
              f"{100 * counts['embedded'] / counts['loadable']:7.1f}")
    print(f"common formats (*): {common_embedded}/{common_total} = {report['common']['percent']}%")
    print(f"all formats:        {all_embedded}/{all_total} = {report['all']['percent']}%")
    for miss in report["misses"]:
        print(f"miss\t{miss['format']}\t{miss['path']}\t{miss['why']}", file=sys.stderr)


if __name__ == "__main__":
    main()
