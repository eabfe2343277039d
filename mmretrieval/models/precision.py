"""Which number format a model runs in: what embeddings are computed in, and what training computes in.

``precision`` names the choice where a user makes it (``mmr ... --precision``):

- ``auto``: bf16 on CUDA (float16 on cards without it), float32 elsewhere;
- ``fp32``: float32 everywhere;
- ``bf16``: bf16, on CUDA cards that support it and on CPUs with AVX512-BF16 or AMX instructions. There a
  ViT-B-32 embeds about twice as fast as in float32 (2 cores, AVX512-BF16, batch 32: 16.5 -> 32.8 images/s,
  ``bench/encode.py --precision fp32 bf16``); its vectors agree with float32's to 2.4e-3 per element at most
  (cosine 0.9999 or more, builtin:shapes and ViT-B-32). A CPU without those instructions emulates bf16, which
  should be slower than float32, so there it is refused.

``auto`` keeps CPUs in float32 rather than taking that speed unasked: the tests, eval figures and match-hint bands
of the demo model are measured in float32, and a collection's vectors stay as they were computed before.
"""

from __future__ import annotations

import torch

from ..errors import ModelSpecError
from .settings import check_precision


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes in bf16 natively: CUDA cards that support it, and CPUs with AVX512-BF16 or AMX
    instructions (elsewhere a CPU emulates bf16, slower than float32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # private, hence looked up with a default
    return any(getattr(torch.cpu, probe, lambda: False)() for probe in probes)


def inference_dtype(device: torch.device, precision: str = "auto") -> torch.dtype:
    """The dtype embeddings are computed in on ``device`` for a ``precision`` of :data:`PRECISIONS`.

    Raises:
        ModelSpecError: an unknown precision, or bf16 on a device without native bf16.
    """
    check_precision(precision)
    if precision == "fp32":
        return torch.float32
    if precision == "bf16":
        if not native_bf16(device):
            where = "this CPU has neither AVX512-BF16 nor AMX instructions" if device.type == "cpu" else \
                f"{device} has no native bf16"
            raise ModelSpecError(f"--precision bf16: {where}, so bf16 would run slower than float32 there; "
                                 "use --precision auto or fp32")
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if native_bf16(device) else torch.float16
    return torch.float32


def open_clip_precision(device: torch.device, precision: str = "auto") -> str:
    """:func:`inference_dtype` as open_clip's ``precision`` argument (``pure_bf16``, ``pure_fp16``, ``fp32``)."""
    dtype = inference_dtype(device, precision)
    return {torch.bfloat16: "pure_bf16", torch.float16: "pure_fp16", torch.float32: "fp32"}[dtype]
