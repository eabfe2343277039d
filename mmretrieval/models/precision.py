"""Which number format a model runs in: what embeddings are computed in, and what training computes in."""

from __future__ import annotations

import torch


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes in bf16 natively: CUDA cards that support it, and CPUs with AVX512-BF16 or AMX
    instructions (elsewhere a CPU emulates bf16, slower than float32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # private, hence looked up with a default
    return any(getattr(torch.cpu, probe, lambda: False)() for probe in probes)


def inference_dtype(device: torch.device) -> torch.dtype:
    """The dtype embeddings are computed in: bf16 on CUDA (float16 on cards without it), float32 elsewhere.

    Not bf16 on CPUs that have it, though ViT-B-32 would embed images about 1.7x faster there (2 cores): in bf16
    a vector depends on the batch it was computed in (the demo model: up to 1.8e-3 per element between batches of
    64 and of 1, against 6e-8 in float32), and ingestion promises the same vectors whatever the batching (a
    re-run, a resumed run, the Ray runner).
    """
    if device.type == "cuda":
        return torch.bfloat16 if native_bf16(device) else torch.float16
    return torch.float32


def open_clip_precision(device: torch.device) -> str:
    """:func:`inference_dtype` as open_clip's ``precision`` argument (``pure_bf16``, ``pure_fp16``, ``fp32``)."""
    return {torch.bfloat16: "pure_bf16", torch.float16: "pure_fp16", torch.float32: "fp32"}[inference_dtype(device)]
