"""What a re-ingest costs after the library was reorganised, against embedding the same images, in one run.

    python bench/moves.py                      # 100 generated JPEGs, the bundled demo model, CPU
    python bench/moves.py --images 500

Times ``mmr ingest --prune`` (each a fresh process, as a user runs it) over a folder of generated JPEGs:

1. the first ingest (every image decoded and embedded: what each case below cost before planning found them);
2. nothing changed;
3. the folder renamed (``mv``): found while planning by name and size, hashed, no model loaded;
4. every file renamed in place (``mv``, a photo manager's dated names): found by size and modification time;
5. the folder copied (``cp -r``, new times): found by name and size;
6. the vectors exported and imported into a new collection (as from clip-retrieval), then the folder ingested:
   each file read once for its hash and dates, the imported vectors kept (needs pyarrow).

Prints each wall time and its ratio to the first ingest, and the summary line of each run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}


def _mmr(*args: str) -> tuple[float, str]:
    """Wall time of one ``mmr`` command and its summary line (the last line on stderr)."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "mmretrieval", *args], env=ENV, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"mmr {' '.join(args)} failed ({done.returncode}):\n{done.stderr}")
    lines = [line for line in done.stderr.splitlines() if line.startswith(("embedded", "mmr ingest:"))]
    return elapsed, " | ".join(lines)


def _make_images(folder: Path, count: int) -> None:
    script = ("import sys; from pathlib import Path\n"
              "from mmretrieval.training.scenes import generate\n"
              "d = Path(sys.argv[1]); d.mkdir(parents=True)\n"
              "for i in range(int(sys.argv[2])):\n"
              "    generate(11, i).image.save(d / f'IMG_{i:04d}.jpg', quality=90)\n")
    subprocess.run([sys.executable, "-c", script, str(folder), str(count)], check=True, env=ENV)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mmr-moves-") as tmp:
        root = Path(tmp)
        library, album, collection = root / "library", root / "library" / "album", str(root / "collection")
        _make_images(album, args.images)
        ingest = ("ingest", str(library), "--collection", collection, "--prune")
        timings = [("first ingest (embeds every image)", *_mmr(*ingest, "--model", "builtin:shapes"))]
        timings.append(("nothing changed", *_mmr(*ingest)))
        album.rename(library / "renamed")
        timings.append(("folder renamed", *_mmr(*ingest)))
        for i, path in enumerate(sorted((library / "renamed").iterdir())):
            path.rename(path.with_name(f"2024-06-01 12.{i // 60:02d}.{i % 60:02d}.jpg"))
        timings.append(("every file renamed in place", *_mmr(*ingest)))
        shutil.copytree(library / "renamed", library / "copy", copy_function=shutil.copyfile)
        timings.append(("folder copied (new times)", *_mmr(*ingest)))
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            print("pyarrow missing: the import case is left out (pip install 'mmretrieval[import]')")
        else:
            _mmr("export", str(root / "export"), "--collection", collection)
            imported = str(root / "imported")
            _mmr("import", str(root / "export"), "--collection", imported)
            timings.append(("imported, then ingested", *_mmr("ingest", str(library), "--collection", imported)))
    first = timings[0][1]
    print(f"{args.images} images ({2 * args.images} after the copy), builtin:shapes, CPU; wall times of `mmr ingest`:")
    for name, seconds, summary in timings:
        print(f"  {name:36s} {seconds:6.2f} s  {seconds / first:5.2f} x first   {summary}")


if __name__ == "__main__":
    main()
