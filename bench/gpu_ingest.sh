#!/usr/bin/env bash
# The GPU ingestion figures of issue 11, in one device call (random-weight open_clip models cost what pretrained
# ones do). Prepare here, once:
#   bash ../shared/device/wheels.sh        # .whl/: open_clip_torch, ftfy, wcwidth, faiss-cpu
#   bash ../shared/device/crkit.sh         # .crkit/: clip-retrieval's `clip inference`, for the comparison
# Then: device run, carry [".whl", ".crkit"], timeout_s 600:
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
#     && PYTHONPATH=/tmp/site:$PWD bash bench/gpu_ingest.sh
# Each step writes $OUT/<step>.json and .txt; a step that fails or times out does not stop the next.
set -u
OUT=${OUT:-out}; WORKERS=${WORKERS:-15}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
export PYTHONPATH=${PYTHONPATH:-$PWD}  # bench/ingest.py puts .crkit first for clip-retrieval alone
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null
python3 -c "import torch, torchvision, open_clip; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'open_clip', open_clip.__version__)"
step() {  # name timeout_s args...
    local name=$1 limit=$2; shift 2
    timeout "$limit" python3 bench/ingest.py --device cuda --workers "$WORKERS" --json "$OUT/$name.json" "$@" 2>&1 \
        | grep -v "Warning\|warn(" | tee "$OUT/$name.txt"
}
# 1. the headline: 20,000 mixed 0.2-1 MP JPEGs, ViT-B-32 bf16, and clip-retrieval on the same folder
step b32_mixed "${B32_TIMEOUT:-240}" --model ViT-B-32 --images "${B32_IMAGES:-20000}" --set mixed --compare-clip-retrieval
# 2. ViT-B-16 (model-bound): target 7,000 images/s
step b16_mixed "${B16_TIMEOUT:-150}" --model ViT-B-16 --images "${B16_IMAGES:-20000}" --set mixed
# 3. 2,000 12-MP camera JPEGs: which decoder wins on big files (reported as measured)
step b32_camera "${CAM_TIMEOUT:-150}" --model ViT-B-32 --images "${CAM_IMAGES:-2000}" --set camera
ls -la "$OUT"
