#!/usr/bin/env bash
# bench/ingest.py on a lent GPU (random-weight ViT-B-32 and ViT-B-16, FAISS on the CPU), for the figures
# quoted in the README. Run from the repository root with the wheels in .whl/ on PYTHONPATH.
#   OUT=out bash bench/gpu_ingest.sh
set -u
OUT=${OUT:-out}; WORKERS=${WORKERS:-15}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null
timeout "${B32_TIMEOUT:-170}" python3 bench/ingest.py --model ViT-B-32 --device cuda --images "${B32_IMAGES:-6000}" \
    --workers "$WORKERS" 2>&1 | tee "$OUT/ingest_vit_b32.txt"
timeout "${B16_TIMEOUT:-100}" python3 bench/ingest.py --model ViT-B-16 --device cuda --images "${B16_IMAGES:-3000}" \
    --workers "$WORKERS" 2>&1 | tee "$OUT/ingest_vit_b16.txt"
