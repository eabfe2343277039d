"""Loading the open_clip model a spec names, offline-safely, and saving model directories.

Weights load as safetensors or with ``weights_only=True``; open_clip's errors become our own
(:class:`ModelSpecError`, :class:`ModelNotCachedError`, :class:`CheckpointError`) with what to do next.
:mod:`.specs` says what a spec names and who made a set of vectors, without torch.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
import os
import pickle
import re
import stat
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

from ..atomic import atomic_path, atomic_write_text
from ..errors import CheckpointError, ModelNotCachedError, ModelSpecError
from .specs import (CONFIG_NAME, WEIGHTS_NAME, ModelIdentity, ModelSpec, config_hash, read_dir_config, assets_dir,
                    find_checkpoint, sha256_file)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedModel:
    """An open_clip model with its tokenizer and identity, ready for :class:`~mmretrieval.models.encoder.DualEncoder`."""

    model: torch.nn.Module
    tokenizer: Any
    identity: ModelIdentity
    matryoshka_dims: tuple[int, ...]  # dims the model was trained to be truncated to, if any


@dataclass(frozen=True)
class _Source:
    """Where open_clip is to load a spec from."""

    open_clip_name: str  # what open_clip.create_model takes (``local-dir:…``, ``hf-hub:…`` or a registry name)
    pretrained: str | None  # registry tag or checkpoint file
    checkpoint: Path | None  # the weights file of a model directory
    config: dict[str, Any]  # a model directory's open_clip_config.json


def load_model(spec: ModelSpec, *, device: torch.device, precision: str, cache_dir: str | None = None) -> LoadedModel:
    """Create the open_clip model a spec names, on ``device`` in ``precision`` (``fp32``, ``pure_bf16``…).

    Raises:
        ModelSpecError: unknown architecture or tag, missing directory or config.
        ModelNotCachedError: weights need a download that cannot happen.
        CheckpointError: corrupt, mismatched, or code-carrying checkpoint.
    """
    with root_logger_left_alone():
        return _load_model(spec, device=device, precision=precision, cache_dir=cache_dir)


class _AsIfUnconfigured(logging.Handler):
    """Stands on an unconfigured root logger while open_clip runs, so that its module-level ``logging.info()``
    finds a handler and does not call ``logging.basicConfig()`` (which would configure the application's logging
    for good). Records go where they would with no handler at all: warnings and worse to ``logging.lastResort``."""

    def emit(self, record: logging.LogRecord) -> None:
        last_resort = logging.lastResort
        if last_resort is not None and record.levelno >= last_resort.level:
            last_resort.handle(record)


@contextmanager
def root_logger_left_alone() -> Iterator[None]:
    """Run open_clip without it configuring the root logger.

    open_clip logs through ``logging.info()`` and ``logging.warning()``, which call ``logging.basicConfig()`` when
    the root logger has no handler: after that an application's own ``basicConfig(level=..., format=...)`` does
    nothing, and every library record prints as ``LEVEL:name:message``. A root logger that already has handlers
    (the application configured it) is left as it is, and open_clip's records reach them.
    """
    root = logging.getLogger()
    if root.handlers:
        yield
        return
    stand_in = _AsIfUnconfigured()
    root.addHandler(stand_in)
    try:
        yield
    finally:
        root.removeHandler(stand_in)


def _load_model(spec: ModelSpec, *, device: torch.device, precision: str, cache_dir: str | None) -> LoadedModel:
    import open_clip  # heavy: imported on first load, not at package import

    source = _resolve(open_clip, spec)
    random_weights = spec.kind == "registry" and not spec.pretrained
    try:
        # A model directory's weights are loaded from the file we chose (and hash), not one open_clip picks.
        with _without_random_init_warning(source.checkpoint is not None or random_weights), _seeded(random_weights):
            model = open_clip.create_model(
                source.open_clip_name, pretrained=source.pretrained, device="cpu" if random_weights else device,
                precision="fp32" if random_weights else precision,
                cache_dir=cache_dir, weights_only=True, load_weights=source.checkpoint is None,
            )
        if random_weights:  # hashed as drawn, so that a bf16 load of the same weights has the same identity
            weights_id = "random-" + _state_hash(model)
            model.to(device=device, dtype=_PURE_DTYPES.get(precision, torch.float32))
        if source.checkpoint is not None:
            open_clip.load_checkpoint(model, str(source.checkpoint), strict=True, weights_only=True, device="cpu")
        tokenizer = open_clip.get_tokenizer(source.open_clip_name, cache_dir=cache_dir)
    except Exception as exc:  # open_clip and its backends raise many types; translate the ones we know
        raise _translate_load_error(exc, spec, source.checkpoint) from exc
    model.eval()

    if spec.kind in ("local", "builtin"):
        architecture = source.config.get("architecture") or config_hash(source.config["model_cfg"])
    elif spec.kind == "hf-hub":
        architecture = config_hash(open_clip.get_model_config(source.open_clip_name) or {})
    else:
        architecture = spec.name
    projection = getattr(model, "text_projection", None)
    if isinstance(projection, torch.nn.Linear):  # proj_bias configs
        embed_dim = int(projection.out_features)
    elif projection is not None:
        embed_dim = int(projection.shape[-1])
    else:
        embed_dim = int(model.encode_text(tokenizer(["a"]).to(device)).shape[-1])
    identity = ModelIdentity(
        spec=str(spec),
        architecture=architecture,
        embed_dim=embed_dim,
        weights=weights_id if random_weights else _weights_id(open_clip, spec, source, cache_dir),
        preprocess=json.dumps(open_clip.get_model_preprocess_cfg(model), sort_keys=True, default=list),
    )
    dims = tuple(source.config.get("matryoshka_dims", ()))
    return LoadedModel(model=model, tokenizer=tokenizer, identity=identity, matryoshka_dims=dims)


class _DropRandomInitWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("No pretrained weights loaded")


@contextmanager
def _without_random_init_warning(active: bool) -> Iterator[None]:
    """open_clip warns that a model it built without weights is random; we load them right after."""
    if not active:
        yield
        return
    root, dropper = logging.getLogger(), _DropRandomInitWarning()
    root.addFilter(dropper)
    try:
        yield
    finally:
        root.removeFilter(dropper)


# open_clip's ``pure_*`` precisions: the whole model in that dtype (as open_clip casts it)
_PURE_DTYPES = {"pure_bf16": torch.bfloat16, "pure_fp16": torch.float16}
RANDOM_WEIGHTS_SEED = 0  # an architecture without a tag draws the same weights in every process and on every node


@contextmanager
def _seeded(active: bool) -> Iterator[None]:
    """Draw random weights from a fixed seed, leaving the caller's random state as it was."""
    if not active:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_WEIGHTS_SEED)
        yield


def _resolve(open_clip: Any, spec: ModelSpec) -> _Source:
    if spec.kind in ("local", "builtin"):
        directory = assets_dir() / spec.name if spec.kind == "builtin" else Path(spec.name).expanduser()
        config = read_dir_config(directory)
        return _Source(f"local-dir:{directory}", None, find_checkpoint(directory), config)
    if spec.kind == "hf-hub":
        return _Source(f"hf-hub:{spec.name}", None, None, {})
    _check_registry(open_clip, spec)
    return _Source(spec.name, spec.pretrained, None, {})


def _weights_id(open_clip: Any, spec: ModelSpec, source: _Source, cache_dir: str | None) -> str:
    """sha256 of the weights file where there is one, else the hub id or the registry tag."""
    if source.checkpoint is not None:
        return sha256_file(source.checkpoint)
    if spec.kind == "hf-hub":
        try:
            return sha256_file(Path(open_clip.pretrained.download_pretrained_from_hf(spec.name, cache_dir=cache_dir)))
        except Exception:  # already loaded, so the file is cached; if the lookup fails, keep the repo id
            return "hf-hub:" + spec.name
    if spec.pretrained and os.path.isfile(spec.pretrained):
        return sha256_file(Path(spec.pretrained))
    return f"{spec.name}:{spec.pretrained}"


def _check_registry(open_clip: Any, spec: ModelSpec) -> None:
    known = open_clip.list_models()
    if spec.name not in known:
        close = difflib.get_close_matches(spec.name, known, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else " `mmr models` lists them."
        raise ModelSpecError(f"unknown open_clip architecture {spec.name!r}.{hint}")
    tag = spec.pretrained
    if tag and not open_clip.pretrained.is_pretrained_cfg(spec.name, tag) and not os.path.isfile(tag):
        tags = open_clip.list_pretrained_tags_by_model(spec.name)
        raise ModelSpecError(
            f"{spec.name} has no pretrained weights tagged {tag!r}; known tags: {', '.join(tags) or 'none'}"
        )


def _translate_load_error(exc: Exception, spec: ModelSpec, checkpoint: Path | None) -> Exception:
    chain, seen = [], exc
    while seen is not None:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    text = " ".join(f"{type(e).__name__}: {e}" for e in chain)
    where = checkpoint or spec
    if any(isinstance(e, pickle.UnpicklingError) for e in chain) or "Weights only load failed" in text:
        return CheckpointError(
            f"refused to load {where}: it is a pickle that would run code when loaded. Only safetensors or "
            "plain weights-only torch checkpoints are accepted; convert it with safetensors.torch.save_file."
        )
    if "SafetensorError" in text or "HeaderTooLarge" in text or "PytorchStreamReader" in text \
            or "invalid load key" in text or "EOF" in text:
        return CheckpointError(f"checkpoint {where} is corrupt or truncated ({chain[-1]})")
    if "Error(s) in loading state_dict" in text or "size mismatch" in text:
        return CheckpointError(f"checkpoint {where} does not fit the model's configuration: {chain[0]}")
    if spec.kind in ("hf-hub", "registry") and (
        os.environ.get("HF_HUB_OFFLINE") or re.search(r"offline|LocalEntryNotFound|connect|resolve|Failed to download",
                                                      text, re.IGNORECASE)
    ):
        return ModelNotCachedError(_offline_help(spec))
    return ModelSpecError(f"cannot load model {spec}: {chain[0]}")


def save_model_dir(
    model: torch.nn.Module,
    model_cfg: dict[str, Any],
    directory: str | os.PathLike,
    *,
    preprocess_cfg: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    half: bool = False,
) -> Path:
    """Save ``model`` in the open_clip hub layout (``open_clip_config.json`` + safetensors), atomically.

    Args:
        model: the open_clip model.
        model_cfg: the architecture config it was built from.
        directory: where to write; created if missing.
        preprocess_cfg: overrides of open_clip's preprocess defaults (size is taken from the model).
        extra: more top-level keys for the config (``architecture``, ``matryoshka_dims``, training notes).
        half: store weights as float16 (half the size; loaded back as float32 on CPU).
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: (v.half() if half and v.is_floating_point() else v).detach().cpu().contiguous()
             for k, v in model.state_dict().items()}
    config = {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg or {}, **(extra or {})}
    # Each file is fsynced and renamed into place; a crash between the two leaves new weights beside the
    # previous config of the same run, which differs only in its training notes.
    with atomic_path(directory / WEIGHTS_NAME) as tmp_weights:
        mode = stat.S_IMODE(tmp_weights.stat().st_mode)  # 0666 less the umask, as atomic_path made it
        save_file(state, str(tmp_weights))
        os.chmod(tmp_weights, mode)  # safetensors writes a new file of mode 0600 in its place
    atomic_write_text(directory / CONFIG_NAME, json.dumps(config, indent=2) + "\n")
    return directory


def _offline_help(spec: ModelSpec) -> str:
    return (
        f"model {spec} is not in the Hugging Face cache and cannot be downloaded here"
        f"{' (HF_HUB_OFFLINE is set)' if os.environ.get('HF_HUB_OFFLINE') else ''}. "
        "Run once with internet to cache it, use the bundled demo model with --model builtin:shapes, "
        "or pass a local directory that holds open_clip_config.json and the weights."
    )


def _state_hash(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]
