"""Weight-space blending of a fine-tuned model with the model it started from (WiSE-FT, Wortsman et al. 2022).

Fine-tuning on a narrower distribution gains there and loses some of what the starting model knew; averaging
the two sets of weights keeps most of both, for no extra training. A CPU fine-tune of the demo model on varied
scenes failed two of its tests alone and passed them blended back with 20% of its starting weights (README).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import MMRError
from ..models.loading import load_model, save_model_dir
from ..models.specs import ModelSpec, model_config_of, model_dir_config, refuse_overwriting
from .out_folder import check_out_folder, model_written_aside


def blend_models(trained: str, init: str, keep_init: float, out: str | Path, half: bool = True,
                 force: bool = False) -> Path:
    """Save ``(1 - keep_init) * trained + keep_init * init`` as a model directory that ``--model OUT`` loads.

    Args:
        trained: the fine-tuned model's spec (a directory ``mmr train`` wrote, say).
        init: the spec of the model it was fine-tuned from.
        keep_init: the init's share, 0 to 1.
        out: the directory to write (open_clip layout; the trained model's config and training notes, plus a
            ``blend`` record). A previous model there stays as it was until this one is saved whole, then is
            replaced (:func:`.out_folder.model_written_aside`).
        half: store float16 weights.
        force: write into an ``out`` folder that holds other files (they are kept; see :mod:`.out_folder`).

    Raises:
        MMRError: ``keep_init`` out of range, models of different architectures, ``out`` is one of them, a file,
            or (without ``force``) a folder that holds more than a model of ours.
    """
    if not 0.0 <= keep_init <= 1.0:
        raise MMRError(f"keep_init must be between 0 and 1, not {keep_init}")
    cpu = torch.device("cpu")
    trained_spec, init_spec = ModelSpec.parse(trained), ModelSpec.parse(init)
    refuse_overwriting(out, trained_spec, init_spec)
    out = check_out_folder(out, force)
    blended = load_model(trained_spec, device=cpu, precision="fp32")
    start = load_model(init_spec, device=cpu, precision="fp32").model.state_dict()
    weights = blended.model.state_dict()
    mismatched = sorted(set(weights) ^ set(start)) or [k for k in weights if weights[k].shape != start[k].shape]
    if mismatched:
        raise MMRError(f"{trained} and {init} are different architectures (first difference: {mismatched[0]}); "
                       "only a model and the one it was fine-tuned from can be blended")
    with torch.no_grad():
        for name, tensor in weights.items():
            if tensor.is_floating_point():
                tensor.mul_(1.0 - keep_init).add_(start[name], alpha=keep_init)
    trained_config = _config(trained_spec)
    notes = {k: v for k, v in trained_config.items() if k not in ("model_cfg", "preprocess_cfg")}
    notes["blend"] = {"trained": str(trained_spec), "init": str(init_spec), "keep_init": keep_init,  # paths absolute
                      "init_training": _config(init_spec).get("training")}
    with model_written_aside(out) as new:  # the old model stays whole until this one is (an old log goes too)
        save_model_dir(blended.model, trained_config.get("model_cfg") or model_config_of(trained_spec), new,
                       half=half, extra=notes, preprocess_cfg=json.loads(blended.identity.preprocess))
    return out


def _config(spec: ModelSpec) -> dict:
    """The open_clip_config.json of a model directory or builtin model; {} for other specs."""
    return model_dir_config(spec) if spec.kind in ("local", "builtin") else {}
