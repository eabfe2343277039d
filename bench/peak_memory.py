"""Wall time and peak anonymous memory of one ``mmr`` command (RssAnon sampled every 0.1 s, as bench/scale.py
samples it: the page cache of the segments a command maps is not counted).

    python bench/peak_memory.py index --collection /tmp/sc/col --type ivf
    python bench/peak_memory.py label --collection /tmp/startup/collection --labels red,green,blue --replace
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from scale import run_mmr  # noqa: E402


def main() -> None:
    if not sys.argv[1:] or sys.argv[1] in ("-h", "--help"):
        print(__doc__)
        return
    elapsed, result, peak_mib = run_mmr(*sys.argv[1:])
    print(result.stdout, end="")
    print(f"mmr {' '.join(sys.argv[1:])}: {elapsed:.1f} s wall, peak RssAnon {peak_mib:,} MiB")


if __name__ == "__main__":
    main()
