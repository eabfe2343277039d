"""Run clip-retrieval's `clip inference` (from ./.crkit, see crkit.sh) on a folder of images and print one JSON line:
images, wall seconds, images/s. The model is an open_clip architecture with the weights in CHECKPOINT (a
state_dict .pt or open_clip_model.safetensors), so random weights cost the same as pretrained ones.
Needs pandas and pyarrow besides torch (CR writes its metadata as parquet; without them it hangs after an error).
Usage: PYTHONPATH=.crkit:$PYTHONPATH python bench/clip_retrieval_run.py FOLDER ARCH CHECKPOINT [BATCH] [WORKERS]
(A copy of ../shared/device/cr_run.py, which does not travel to a GPU machine; bench/ingest.py runs it.)
"""
import glob, json, os, sys, tempfile, time

import numpy as np


def main() -> None:
    if len(sys.argv) < 4 or sys.argv[1] in ("-h", "--help"):
        sys.exit(__doc__)
    folder, arch, ckpt = sys.argv[1:4]
    batch = int(sys.argv[4]) if len(sys.argv) > 4 else 512
    workers = int(sys.argv[5]) if len(sys.argv) > 5 else (os.cpu_count() or 1)
    from clip_retrieval.clip_inference.main import main as clip_inference
    out = tempfile.mkdtemp(prefix="cr-out-")
    start = time.perf_counter()
    clip_inference(input_dataset=folder, output_folder=out, input_format="files", enable_text=False,
                   enable_metadata=False, clip_model=f"open_clip:{arch}/{os.path.abspath(ckpt)}", batch_size=batch,
                   num_prepro_workers=workers, use_jit=False, enable_wandb=False, write_batch_size=10**9)
    wall = time.perf_counter() - start
    n = sum(np.load(f).shape[0] for f in glob.glob(os.path.join(out, "img_emb", "*.npy")))
    print(json.dumps({"tool": "clip-retrieval 2.45.0", "arch": arch, "images": n, "wall_s": round(wall, 2),
                      "images_per_s": round(n / wall, 1), "batch": batch, "workers": workers}))


if __name__ == "__main__":
    main()
