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
import stat
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

from ..atomic import atomic_path, atomic_write_text
from ..errors import ModelNotCachedError, ModelSpecError
from .load_errors import build_error, checkpoint_error, is_not_cached, offline_help, one_line, tokenizer_error
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
    pretrained: str | None  # a registry tag, whose weights open_clip finds and loads itself
    # the weights file we load ourselves: a model directory's, an ARCH:FILE's, a hub repo's; or the cached file
    # of a registry tag (``pretrained``), which open_clip loads
    checkpoint: Path | None
    config: dict[str, Any]  # open_clip_config.json of a model directory or hub repo
    fits: str  # what the weights must fit, for messages: an architecture, or the config that describes it


def load_model(spec: ModelSpec, *, device: torch.device, precision: str, cache_dir: str | None = None) -> LoadedModel:
    """Create the open_clip model a spec names, on ``device`` in ``precision`` (``fp32``, ``pure_bf16``…).

    A hub or tagged model is never built with random weights in place of weights that are missing from the cache.

    Args:
        spec: the parsed model spec.
        device: where the model runs.
        precision: open_clip's precision name (:func:`.precision.open_clip_precision`).
        cache_dir: Hugging Face cache directory (default: the standard one).

    Returns:
        The model, its tokenizer and its identity.

    Raises:
        ModelSpecError: unknown architecture or tag, missing directory or config, a config open_clip cannot build
            from, or a tokenizer that needs a package that is not installed (transformers: the siglip extra).
        ModelNotCachedError: a file of the model (named in the message) needs a download that cannot happen.
        CheckpointError: an empty, corrupt, mismatched or code-carrying checkpoint, or a file that is none.
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

    source = _resolve(open_clip, spec, cache_dir)
    random_weights = spec.kind == "registry" and not spec.pretrained
    ours = source.checkpoint is not None and source.pretrained is None  # weights we load, not open_clip
    try:  # first: it fails in an instant where the model would take seconds to build
        tokenizer = open_clip.get_tokenizer(source.open_clip_name, cache_dir=cache_dir)
    except Exception as exc:
        raise tokenizer_error(exc, spec) from exc
    try:
        with _without_random_init_warning(ours or random_weights), _seeded(random_weights):
            model = open_clip.create_model(
                source.open_clip_name, pretrained=source.pretrained, device="cpu" if random_weights else device,
                precision="fp32" if random_weights else precision, cache_dir=cache_dir, weights_only=True,
                load_weights=not ours,
                # weights we load replace every tensor, so a text tower's base weights need no download first
                pretrained_text=not ours,
                # open_clip draws random weights for a hub or tagged model whose weights it cannot find
                require_pretrained=source.pretrained is not None,
            )
    except Exception as exc:  # open_clip and its backends raise many types; translate the ones we know
        raise build_error(exc, spec, source.checkpoint, source.fits) from exc
    if random_weights:  # hashed as drawn, so that a bf16 load of the same weights has the same identity
        weights_id = "random-" + _state_hash(model)
        model.to(device=device, dtype=_PURE_DTYPES.get(precision, torch.float32))
    if ours:
        try:
            open_clip.load_checkpoint(model, str(source.checkpoint), strict=True, weights_only=True, device="cpu")
        except Exception as exc:
            raise checkpoint_error(exc, source.checkpoint, source.fits) from exc
    model.eval()

    if spec.kind in ("local", "builtin"):
        architecture = source.config.get("architecture") or config_hash(source.config["model_cfg"])
    elif spec.kind == "hf-hub":  # as open_clip.get_model_config reads a hub config
        architecture = config_hash(source.config.get("model_cfg", source.config))
    else:
        architecture = spec.name
    identity = ModelIdentity(
        spec=str(spec),
        architecture=architecture,
        embed_dim=_embed_dim(model, tokenizer, device),
        weights=weights_id if random_weights else _weights_id(spec, source),
        preprocess=json.dumps(open_clip.get_model_preprocess_cfg(model), sort_keys=True, default=list),
    )
    dims = tuple(source.config.get("matryoshka_dims", ()))
    return LoadedModel(model=model, tokenizer=tokenizer, identity=identity, matryoshka_dims=dims)


def _embed_dim(model: torch.nn.Module, tokenizer: Any, device: torch.device) -> int:
    """The dimension of the model's vectors: its text projection's, or (without one) a text's vector's."""
    projection = getattr(model, "text_projection", None)
    if isinstance(projection, torch.nn.Linear):  # proj_bias configs
        return int(projection.out_features)
    if projection is not None:
        return int(projection.shape[-1])
    return int(model.encode_text(tokenizer(["a"]).to(device)).shape[-1])


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


def _resolve(open_clip: Any, spec: ModelSpec, cache_dir: str | None) -> _Source:
    """Where the model and its weights come from; a hub or tagged model's files are looked up in the cache first,
    so that missing weights are refused by name (open_clip would draw random ones for a hub model)."""
    if spec.kind in ("local", "builtin"):
        directory = assets_dir() / spec.name if spec.kind == "builtin" else Path(spec.name).expanduser()
        config = read_dir_config(directory)
        return _Source(f"local-dir:{directory}", None, find_checkpoint(directory), config,
                       f"the architecture in {directory / CONFIG_NAME}")
    if spec.kind == "hf-hub":
        config_path = _hub_file(open_clip, spec, spec.name, CONFIG_NAME, cache_dir)
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelSpecError(f"cannot read {config_path} of {spec}: {one_line(exc)}") from exc
        if not isinstance(config, dict):
            raise ModelSpecError(f"{config_path} of {spec} is not an open_clip config (a JSON object)")
        weights = _hub_file(open_clip, spec, spec.name, None, cache_dir)
        return _Source(f"hf-hub:{spec.name}", None, weights, config, f"the architecture of {spec}")
    _check_registry(open_clip, spec)
    if not spec.pretrained:
        return _Source(spec.name, None, None, {}, spec.name)
    tag_cfg = open_clip.pretrained.get_pretrained_cfg(spec.name, spec.pretrained)
    if tag_cfg:  # a tag before a file of the same name, as open_clip chooses
        return _Source(spec.name, spec.pretrained, _tag_weights(open_clip, spec, tag_cfg, cache_dir), {}, spec.name)
    return _Source(spec.name, None, Path(spec.pretrained), {}, spec.name)


def _hub_file(open_clip: Any, spec: ModelSpec, repo: str, filename: str | None, cache_dir: str | None) -> Path:
    """A file of hub repository ``repo`` (its weights when ``filename`` is None), from the cache or downloaded, as
    open_clip finds it (a ``.safetensors`` twin before a pickle).

    Raises:
        ModelNotCachedError: it is not in the cache and cannot be downloaded; the message names the file.
        ModelSpecError: any other failure (a repository without that file).
    """
    try:
        return Path(open_clip.pretrained.download_pretrained_from_hf(repo, filename=filename, cache_dir=cache_dir))
    except Exception as exc:
        names = " or ".join(_hub_names(filename or _HUB_WEIGHTS))
        if is_not_cached(exc):
            raise ModelNotCachedError(offline_help(spec, f"{names} of {repo}")) from exc
        raise ModelSpecError(f"cannot get {names} of {spec} from {repo}: {one_line(exc)}") from exc


_HUB_WEIGHTS = "open_clip_pytorch_model.bin"  # open_clip's default weights name in a hub repo


def _hub_names(filename: str) -> list[str]:
    """The names open_clip looks for when asked for ``filename``, in its order: a safetensors twin first."""
    if filename == _HUB_WEIGHTS:
        return ["open_clip_model.safetensors", filename]
    if filename.endswith((".bin", ".pth")):
        return [filename[:-4] + ".safetensors", filename]
    return [filename]


def _tag_weights(open_clip: Any, spec: ModelSpec, tag_cfg: dict[str, Any], cache_dir: str | None) -> Path | None:
    """The cached weights file of a registry tag, found as open_clip finds it.

    Raises:
        ModelNotCachedError: it is not in the cache and cannot be downloaded; the message names the file.
    """
    try:
        found = open_clip.pretrained.download_pretrained(tag_cfg, cache_dir=cache_dir)
    except Exception as exc:
        if not is_not_cached(exc):
            raise build_error(exc, spec, None, spec.name) from exc
        if tag_cfg.get("hf_hub"):
            repo, filename = os.path.split(tag_cfg["hf_hub"])
            missing = f"{' or '.join(_hub_names(filename or _HUB_WEIGHTS))} of {repo}"
        else:
            missing = f"its weights ({tag_cfg.get('url', 'no address known')})"
        raise ModelNotCachedError(offline_help(spec, missing)) from exc
    return Path(found) if found else None


def _weights_id(spec: ModelSpec, source: _Source) -> str:
    """sha256 of the weights file where there is one, else the registry tag."""
    if source.checkpoint is not None and source.pretrained is None:
        return sha256_file(source.checkpoint)
    if spec.pretrained and os.path.isfile(spec.pretrained):  # as before: a tag that is also a file's name
        return sha256_file(Path(spec.pretrained))
    return f"{spec.name}:{spec.pretrained}"  # registry weights are named by their tag, which open_clip pins


def _check_registry(open_clip: Any, spec: ModelSpec) -> None:
    known = open_clip.list_models()
    if spec.name not in known:
        close = difflib.get_close_matches(spec.name, known, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else " `mmr models` lists them."
        # a bare name is read as a folder when one of that name exists, so a mistyped folder ends up here
        folder = "" if spec.pretrained else ", and no folder of that name exists here"
        raise ModelSpecError(f"unknown open_clip architecture {spec.name!r}{folder}.{hint}")
    tag = spec.pretrained
    if tag and not open_clip.pretrained.is_pretrained_cfg(spec.name, tag) and not os.path.isfile(tag):
        if os.path.isabs(tag):  # ModelSpec.parse makes every tag that names a file absolute
            raise ModelSpecError(f"checkpoint file {tag} of {spec} does not exist")
        tags = open_clip.list_pretrained_tags_by_model(spec.name)
        raise ModelSpecError(
            f"{spec.name} has no pretrained weights tagged {tag!r}; known tags: {', '.join(tags) or 'none'}"
        )


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


def _state_hash(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]
