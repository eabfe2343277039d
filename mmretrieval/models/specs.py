"""Model specs and model identity: which open_clip model a string names, and how to load it offline-safely.

One spec string is accepted everywhere (CLI ``--model``, config, API):

- ``ARCH:PRETRAINED`` or ``ARCH`` (random weights): open_clip's registry, e.g. ``ViT-B-32:laion2b_s34b_b79k``;
- ``hf-hub:ORG/REPO``: an open_clip repository on the Hugging Face hub;
- a local directory (or ``local-dir:DIR``) holding ``open_clip_config.json`` and the weights;
- ``builtin:shapes``: the demo model bundled in ``mmretrieval/assets/``.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
import os
import pickle
import re
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

from ..atomic import atomic_path, atomic_write_bytes, atomic_write_text, file_sha256
from ..errors import CheckpointError, ModelNotCachedError, ModelSpecError

logger = logging.getLogger(__name__)

BUILTIN_MODELS = ("shapes",)
CONFIG_NAME = "open_clip_config.json"
WEIGHTS_NAME = "open_clip_model.safetensors"
_CHECKPOINT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt")


def assets_dir() -> Path:
    """Where bundled models live: ``$MMR_ASSETS`` or the package data in ``mmretrieval/assets/``."""
    return Path(os.environ.get("MMR_ASSETS") or Path(__file__).resolve().parent.parent / "assets")


@dataclass(frozen=True)
class ModelSpec:
    """A parsed model spec. ``kind`` is ``registry``, ``hf-hub``, ``local`` or ``builtin``."""

    kind: str
    name: str  # architecture, hub repo id, directory path, or builtin name
    pretrained: str | None = None  # registry tag (or checkpoint file) for ``registry`` specs

    @classmethod
    def parse(cls, text: str) -> "ModelSpec":
        """Parse a spec string; raises :class:`ModelSpecError` for malformed ones."""
        text = text.strip()
        if not text:
            raise ModelSpecError("empty model spec; try builtin:shapes or ViT-B-32:laion2b_s34b_b79k")
        if text.startswith("builtin:"):
            name = text.removeprefix("builtin:")
            if name not in BUILTIN_MODELS:
                raise ModelSpecError(f"unknown builtin model {name!r}; available: " +
                                     ", ".join(f"builtin:{n}" for n in BUILTIN_MODELS))
            return cls("builtin", name)
        if text.startswith("hf-hub:"):
            repo = text.removeprefix("hf-hub:")
            if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo):
                raise ModelSpecError(f"bad hub id {repo!r} in {text!r}; expected hf-hub:ORG/REPO")
            return cls("hf-hub", repo)
        if text.startswith("local-dir:"):
            return cls.local(text.removeprefix("local-dir:"))
        arch, colon, tag = text.partition(":")
        if Path(text).expanduser().is_dir() or (not colon and (os.sep in text or text.startswith((".", "~")))):
            return cls.local(text)
        if not re.fullmatch(r"[\w.+-]+", arch):
            raise ModelSpecError(f"cannot read model spec {text!r}: use ARCH[:PRETRAINED], hf-hub:ORG/REPO, "
                                 "a model directory, or builtin:shapes")
        # ARCH:TAG, or ARCH:/path/to/checkpoint.pt (a local file of that architecture's weights)
        return cls("registry", arch, (os.path.abspath(os.path.expanduser(tag)) if os.sep in tag else tag) or None)

    @classmethod
    def local(cls, path: str) -> "ModelSpec":
        """A model directory, made absolute: a collection records it and may be opened from anywhere."""
        return cls("local", os.path.abspath(os.path.expanduser(path)))

    def __str__(self) -> str:
        if self.kind == "builtin":
            return f"builtin:{self.name}"
        if self.kind == "hf-hub":
            return f"hf-hub:{self.name}"
        if self.kind == "local":
            return self.name
        return f"{self.name}:{self.pretrained}" if self.pretrained else self.name


@dataclass(frozen=True)
class ModelIdentity:
    """What made a set of vectors. Two encoders with equal :meth:`key` give interchangeable vectors."""

    spec: str  # the spec it was loaded from (informative: a moved directory keeps its key)
    architecture: str  # open_clip architecture name, or ``cfg-<hash>`` of a custom config
    embed_dim: int  # dimension of the vectors it returns (after any truncation)
    weights: str  # sha256 of the checkpoint, ``ARCH:TAG`` for registry weights, ``random-<hash>`` otherwise
    preprocess: str  # JSON of open_clip's preprocess config: size, mean/std, interpolation, resize mode

    def key(self) -> str:
        """A short fingerprint of everything that changes the vectors."""
        text = "|".join((self.architecture, str(self.embed_dim), self.weights, self.preprocess))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ModelIdentity":
        return cls(**json.loads(text))


def _offline_help(spec: ModelSpec) -> str:
    return (
        f"model {spec} is not in the Hugging Face cache and cannot be downloaded here"
        f"{' (HF_HUB_OFFLINE is set)' if os.environ.get('HF_HUB_OFFLINE') else ''}. "
        "Run once with internet to cache it, use the bundled demo model with --model builtin:shapes, "
        "or pass a local directory that holds open_clip_config.json and the weights."
    )


# The names open_clip's own directory loader prefers, best first; ours is the same order so that a directory
# means the same weights to us and to anyone loading it with open_clip directly.
_PREFERRED_CHECKPOINTS = (
    WEIGHTS_NAME, "open_clip_pytorch_model.safetensors", "open_clip_pytorch_model.bin", "open_clip_pytorch_model.pth",
    "model.safetensors", "pytorch_model.bin", "pytorch_model.pth", "model.pth",
)


def find_checkpoint(directory: Path) -> Path:
    """The weights file of an open_clip model directory: a preferred name first, then safetensors, then by name.

    This one choice is both hashed into the model identity and loaded (open_clip is handed this file), so
    a directory holding two checkpoints can never be described by one and run with the other.
    """
    candidates = sorted(p for p in directory.iterdir() if p.suffix in _CHECKPOINT_SUFFIXES and p.is_file())
    if not candidates:
        raise ModelSpecError(f"no weights in {directory}: expected {WEIGHTS_NAME} (or a .bin/.pth checkpoint)")
    rank = {name: i for i, name in enumerate(_PREFERRED_CHECKPOINTS)}
    candidates.sort(key=lambda p: (rank.get(p.name, len(rank)), p.suffix != ".safetensors", p.name))
    if len(candidates) > 1:
        logger.info("%s holds %d checkpoints; using %s", directory, len(candidates), candidates[0].name)
    return candidates[0]


def _read_local_config(directory: Path) -> dict[str, Any]:
    if not directory.is_dir():
        raise ModelSpecError(f"model directory {directory} does not exist")
    config_path = directory / CONFIG_NAME
    if not config_path.is_file():
        raise ModelSpecError(f"{directory} is not an open_clip model directory: {CONFIG_NAME} is missing")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelSpecError(f"cannot read {config_path}: {exc}") from exc
    if not isinstance(config, dict) or "model_cfg" not in config:
        raise ModelSpecError(f"{config_path} has no 'model_cfg' section")
    return config


def model_dir_config(spec: ModelSpec) -> dict[str, Any]:
    """The whole ``open_clip_config.json`` of a model directory or builtin model (``model_cfg``,
    ``preprocess_cfg`` and notes such as ``training``).

    Raises:
        ModelSpecError: ``spec`` is not a directory or builtin model, or its config is missing or unreadable.
    """
    if spec.kind not in ("local", "builtin"):
        raise ModelSpecError(f"{spec} is not a model directory")
    return _read_local_config(assets_dir() / spec.name if spec.kind == "builtin" else Path(spec.name).expanduser())


def model_config_of(spec: ModelSpec) -> dict[str, Any]:
    """The open_clip architecture config (``model_cfg``) a spec names, e.g. to save a fine-tuned copy."""
    import open_clip

    if spec.kind in ("local", "builtin"):
        return model_dir_config(spec)["model_cfg"]
    config = open_clip.get_model_config(f"hf-hub:{spec.name}" if spec.kind == "hf-hub" else spec.name)
    if config is None:
        raise ModelSpecError(f"no architecture config found for {spec}")
    return config


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file; hub cache blobs are already named by it, and other files are hashed once.

    A computed hash is remembered in the user cache, keyed by the file's real path and stamped with its
    size, mtime, ctime and inode (the same trust as ingestion's unchanged-file check, plus ctime, which no
    tool resets), so a 600 MB checkpoint is not re-read by every command that checks a model's identity.
    """
    real = Path(os.path.realpath(path))
    if re.fullmatch(r"[0-9a-f]{64}", real.name):
        return real.name
    stamp, memo = _file_stamp(real), _hash_memo_path(real)
    try:
        remembered = json.loads(memo.read_text(encoding="utf-8"))
        if remembered.get("stamp") == stamp and re.fullmatch(r"[0-9a-f]{64}", remembered.get("sha256", "")):
            return remembered["sha256"]
    except (OSError, ValueError, AttributeError):
        pass
    digest = file_sha256(real)
    try:
        memo.parent.mkdir(parents=True, exist_ok=True)
        record = {"path": str(real), "stamp": stamp, "sha256": digest}
        atomic_write_bytes(memo, json.dumps(record).encode(), durable=False)
    except OSError as exc:  # a read-only home: correct, just slower next time
        logger.debug("cannot remember the hash of %s: %s", real, exc)
    return digest


def _file_stamp(path: Path) -> list[int]:
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino, stat.st_dev]


def _hash_memo_path(real: Path) -> Path:
    from ..cache import user_cache_dir

    name = hashlib.sha256(os.fsencode(real)).hexdigest()[:32]
    return user_cache_dir() / "sha256" / f"{name}.json"


def _state_hash(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def _config_hash(model_cfg: dict[str, Any]) -> str:
    return "cfg-" + hashlib.sha256(json.dumps(model_cfg, sort_keys=True).encode()).hexdigest()[:12]


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
    import open_clip  # heavy: imported on first load, not at package import

    source = _resolve(open_clip, spec)
    try:
        # A model directory's weights are loaded from the file we chose (and hash), not one open_clip picks.
        with _without_random_init_warning(source.checkpoint is not None):
            model = open_clip.create_model(
                source.open_clip_name, pretrained=source.pretrained, precision=precision, device=device,
                cache_dir=cache_dir, weights_only=True, load_weights=source.checkpoint is None,
            )
        if source.checkpoint is not None:
            open_clip.load_checkpoint(model, str(source.checkpoint), strict=True, weights_only=True, device="cpu")
        tokenizer = open_clip.get_tokenizer(source.open_clip_name, cache_dir=cache_dir)
    except Exception as exc:  # open_clip and its backends raise many types; translate the ones we know
        raise _translate_load_error(exc, spec, source.checkpoint) from exc
    model.eval()

    if spec.kind in ("local", "builtin"):
        architecture = source.config.get("architecture") or _config_hash(source.config["model_cfg"])
    elif spec.kind == "hf-hub":
        architecture = _config_hash(open_clip.get_model_config(source.open_clip_name) or {})
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
        weights=_weights_id(open_clip, spec, source, model, cache_dir),
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


def _resolve(open_clip: Any, spec: ModelSpec) -> _Source:
    if spec.kind in ("local", "builtin"):
        directory = assets_dir() / spec.name if spec.kind == "builtin" else Path(spec.name).expanduser()
        config = _read_local_config(directory)
        return _Source(f"local-dir:{directory}", None, find_checkpoint(directory), config)
    if spec.kind == "hf-hub":
        return _Source(f"hf-hub:{spec.name}", None, None, {})
    _check_registry(open_clip, spec)
    return _Source(spec.name, spec.pretrained, None, {})


def _weights_id(open_clip: Any, spec: ModelSpec, source: _Source, model: torch.nn.Module,
                cache_dir: str | None) -> str:
    """sha256 of the weights file where there is one; the registry tag; or a hash of random weights."""
    if source.checkpoint is not None:
        return sha256_file(source.checkpoint)
    if spec.kind == "hf-hub":
        try:
            return sha256_file(Path(open_clip.pretrained.download_pretrained_from_hf(spec.name, cache_dir=cache_dir)))
        except Exception:  # already loaded, so the file is cached; if the lookup fails, keep the repo id
            return "hf-hub:" + spec.name
    if spec.pretrained and os.path.isfile(spec.pretrained):
        return sha256_file(Path(spec.pretrained))
    if spec.pretrained:
        return f"{spec.name}:{spec.pretrained}"
    return "random-" + _state_hash(model)


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
        save_file(state, str(tmp_weights))
    atomic_write_text(directory / CONFIG_NAME, json.dumps(config, indent=2) + "\n")
    return directory
