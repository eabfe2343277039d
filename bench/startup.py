"""Start-up cost of the everyday commands, against ``python -c "import torch"`` measured in the same run.

    python bench/startup.py                    # ViT-B-32 (random weights) model directory, CPU, 3 rounds
    python bench/startup.py --rounds 5 --keep /tmp/startup   # keep the model and collection for reuse

Makes a ViT-B-32 model directory (``open_clip.create_model('ViT-B-32')`` saved with ``save_model_dir``, 605 MB
of float32 safetensors) and a small collection of generated JPEGs ingested with it, then times, round-robin
so that a busy machine slows all alike: ``import torch``, ``mmr search TEXT``, ``mmr similar IMAGE`` (a
stored image: its vector is read, no model), ``mmr ingest`` over the unchanged folder (no model either) and
``mmr info`` (which never imports torch).
Prints the median wall time of each and its ratio to ``import torch`` (the goal: search and similar <= 2x).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _prepare(root: Path, images: int) -> tuple[Path, Path, Path]:
    model_dir, folder, collection = root / "vit-b-32", root / "images", root / "collection"
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    if not (model_dir / "open_clip_config.json").is_file():
        script = ("import open_clip, sys\n"
                  "from mmretrieval.models.loading import save_model_dir\n"
                  "model = open_clip.create_model('ViT-B-32', pretrained=None)\n"
                  "save_model_dir(model, open_clip.get_model_config('ViT-B-32'), sys.argv[1])\n")
        subprocess.run([sys.executable, "-c", script, str(model_dir)], check=True, env=env)
    if not folder.is_dir():
        script = ("import sys; from pathlib import Path\n"
                  "from mmretrieval.training.scenes import generate\n"
                  "d = Path(sys.argv[1]); d.mkdir(parents=True)\n"
                  "[generate(7, i, size=160).image.save(d / f'scene{i:03d}.jpg') for i in range(int(sys.argv[2]))]\n")
        subprocess.run([sys.executable, "-c", script, str(folder), str(images)], check=True, env=env)
    if not collection.is_dir():
        subprocess.run([sys.executable, "-m", "mmretrieval.cli", "ingest", str(folder), "--collection",
                        str(collection), "--model", str(model_dir), "--device", "cpu"], check=True, env=env,
                       stderr=subprocess.DEVNULL)
    return model_dir, folder, collection


def _wall(command: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--keep", help="work in this folder (reused by later runs) instead of a temporary one")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.keep or tmp)
        root.mkdir(parents=True, exist_ok=True)
        _, folder, collection = _prepare(root, args.images)
        env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
        mmr = [sys.executable, "-m", "mmretrieval.cli"]
        commands = {
            "import torch": [sys.executable, "-c", "import torch"],
            "mmr search": mmr + ["search", "a red circle", "--collection", str(collection), "--device", "cpu"],
            "mmr similar": mmr + ["similar", str(folder / "scene000.jpg"), "--collection", str(collection),
                                  "--device", "cpu"],
            "mmr ingest (unchanged)": mmr + ["ingest", str(folder), "--collection", str(collection), "--device", "cpu"],
            "mmr info": mmr + ["info", "--collection", str(collection)],  # no model: torch is not imported
        }
        _wall(commands["mmr search"], env)  # warm the page cache and the checkpoint-hash memo once
        times: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.rounds):
            for name, command in commands.items():
                times[name].append(_wall(command, env))
        base = statistics.median(times["import torch"])
        print(f"{'command':24s} {'median s':>9s} {'ratio':>6s}   all runs")
        for name, runs in times.items():
            median = statistics.median(runs)
            print(f"{name:24s} {median:9.2f} {median / base:6.2f}   {' '.join(f'{r:.2f}' for r in runs)}")


if __name__ == "__main__":
    main()
