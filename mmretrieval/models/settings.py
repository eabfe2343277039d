"""Settings as a user names them before anything loads (``--device``, ``--precision``, the default of the
multi-label ``--threshold``), known and checked without torch or numpy: every command builds its options from
here, and commands that need no model never import torch. Whether the device is there is
:func:`.encoder.resolve_device`'s question; whether it runs the precision natively,
:func:`.precision.inference_dtype`'s.
"""

from __future__ import annotations

import re

from ..errors import ModelSpecError

DEVICES = "auto, cpu, cuda, cuda:N or mps"  # the device names a user may give, as messages list them
_DEVICE_NAME = re.compile(r"auto|cpu|mps|cuda(:[0-9]+)?")


def check_device(device: str) -> str:
    """``device`` if it names a device mmretrieval runs on (:data:`DEVICES`), without looking for the device
    itself (:func:`.encoder.resolve_device` does): for checking a setting before anything is loaded.

    Raises:
        ModelSpecError: any other name, including torch's own that we do not run on (``meta``, ``xla``…).
    """
    if not isinstance(device, str) or not _DEVICE_NAME.fullmatch(device):
        raise ModelSpecError(f"unknown device {device!r}; use {DEVICES}")
    return device


PRECISIONS = ("auto", "fp32", "bf16")


def check_precision(precision: str) -> str:
    """``precision`` if it is one of :data:`PRECISIONS`, checked without a device (whether the device runs it
    natively is :func:`.precision.inference_dtype`'s question): for checking a setting before anything is loaded.

    Raises:
        ModelSpecError: any other name (``fp16`` included: float16 is only what ``auto`` picks on old GPUs).
    """
    if precision not in PRECISIONS:
        raise ModelSpecError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    return precision


MULTI_LABEL_THRESHOLD = 0.5  # the multi-label cutoff when none is given (API, command line and UI alike)
