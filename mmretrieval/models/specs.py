"""Model specs and model identity: which open_clip model a string names, and who made a set of vectors.

One spec string is accepted everywhere (CLI ``--model``, config, API):

- ``ARCH:PRETRAINED`` or ``ARCH`` (random weights): open_clip's registry, e.g. ``ViT-B-32:laion2b_s34b_b79k``;
- ``hf-hub:ORG/REPO``: an open_clip repository on the Hugging Face hub;
- a local directory (or ``local-dir:DIR``) holding ``open_clip_config.json`` and the weights;
- ``builtin:shapes``: the demo model bundled in ``mmretrieval/assets/``.

No torch here: :mod:`.loading` loads and saves the models.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..atomic import atomic_write_bytes, file_sha256
from ..errors import ModelSpecError

logger = logging.getLogger(__name__)

BUILTIN_MODELS = ("shapes",)
CONFIG_NAME = "open_clip_config.json"
WEIGHTS_NAME = "open_clip_model.safetensors"
# mmr train and blend write a model in OUT/.new-model.<owner>.<random>.partial/ and move it up; the move's record
UNFINISHED_MOVE_GLOB = ".new-model.*.partial/move.json"
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
        path = Path(text).expanduser()
        # a file too, so that a checkpoint named where a folder goes is told so, not taken for an architecture
        if path.is_dir() or (not colon and (path.is_file() or os.sep in text or text.startswith((".", "~")))):
            return cls.local(text)
        if not re.fullmatch(r"[\w.+-]+", arch):
            raise ModelSpecError(f"cannot read model spec {text!r}: use ARCH[:PRETRAINED], hf-hub:ORG/REPO, "
                                 "a model directory, or builtin:shapes")
        # ARCH:TAG, or ARCH:/path/to/checkpoint.pt (a local file of that architecture's weights)
        return cls("registry", arch, (os.path.abspath(os.path.expanduser(tag)) if _is_file_tag(tag) else tag) or None)

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


def _is_file_tag(tag: str) -> bool:
    """Whether the ``TAG`` of ``ARCH:TAG`` names a checkpoint file rather than a registry tag. Such a tag is made
    absolute when parsed: a collection records the spec, and is opened later from other directories."""
    return bool(tag) and (os.sep in tag or tag.startswith("~") or tag.lower().endswith(_CHECKPOINT_SUFFIXES)
                          or os.path.isfile(tag))


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


def read_dir_config(directory: Path) -> dict[str, Any]:
    """The ``open_clip_config.json`` of a model directory, checked to hold a ``model_cfg``.

    Raises:
        ModelSpecError: no such directory, no config, or an unreadable one.
    """
    if directory.is_file():
        raise ModelSpecError(f"{directory} is a file: name the folder that holds it and its {CONFIG_NAME}, or use "
                             f"ARCH:FILE (e.g. ViT-B-32:{directory})")
    if not directory.is_dir():
        raise ModelSpecError(f"model directory {directory} does not exist")
    config_path = directory / CONFIG_NAME
    if not config_path.is_file():
        if any(directory.glob(UNFINISHED_MOVE_GLOB)):
            raise ModelSpecError(f"{directory} holds no model now: an mmr train or blend into it was stopped while "
                                 "moving its new model in; the next train or blend with that --out finishes the move "
                                 "first (then writes its own model over it), or move the files of its hidden "
                                 f".new-model.*.partial folder up by hand, {CONFIG_NAME} last")
        raise ModelSpecError(f"{directory} is not an open_clip model directory: {CONFIG_NAME} is missing")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelSpecError(f"cannot read {config_path}: {exc}") from exc
    if not isinstance(config, dict) or "model_cfg" not in config:
        raise ModelSpecError(f"{config_path} has no 'model_cfg' section")
    _check_model_cfg(config["model_cfg"], config_path)
    return config


_MODEL_CFG_SECTIONS = {"embed_dim": int, "vision_cfg": dict, "text_cfg": dict}  # what open_clip's CLIP() requires


def _check_model_cfg(model_cfg: Any, config_path: Path) -> None:
    """Refuse a ``model_cfg`` open_clip cannot build from, by name, before open_clip fails on it with a bare
    ``KeyError: 'text_cfg'`` or ``list indices must be integers``.

    Raises:
        ModelSpecError: ``model_cfg`` is not an object, lacks a section, or has a section of the wrong type.
    """
    needs = "an open_clip model_cfg needs embed_dim (a number) and vision_cfg and text_cfg (objects)"
    if not isinstance(model_cfg, dict):
        raise ModelSpecError(f"{config_path}: 'model_cfg' is a {type(model_cfg).__name__}, not an object; {needs}")
    missing = [key for key in _MODEL_CFG_SECTIONS if key not in model_cfg]
    if missing:
        raise ModelSpecError(f"{config_path}: 'model_cfg' has no {', '.join(missing)}; {needs}")
    for key, kind in _MODEL_CFG_SECTIONS.items():
        if not isinstance(model_cfg[key], kind) or isinstance(model_cfg[key], bool):
            raise ModelSpecError(f"{config_path}: 'model_cfg' section '{key}' is a {type(model_cfg[key]).__name__}; "
                                 f"{needs}")


def model_dir_config(spec: ModelSpec) -> dict[str, Any]:
    """The whole ``open_clip_config.json`` of a model directory or builtin model (``model_cfg``,
    ``preprocess_cfg`` and notes such as ``training``).

    Raises:
        ModelSpecError: ``spec`` is not a directory or builtin model, or its config is missing or unreadable.
    """
    if spec.kind not in ("local", "builtin"):
        raise ModelSpecError(f"{spec} is not a model directory")
    return read_dir_config(_model_dir(spec))


def recorded_weights_changed(identity: ModelIdentity) -> bool:
    """Whether the model folder, builtin model or ``ARCH:/path/checkpoint`` file that ``identity`` was recorded
    from now holds other weights, told by the checkpoint's sha256 (remembered per file version, so usually a
    ``stat``) without importing torch; False where that cannot be told this way (registry or hub weights, a path
    that does not read: loading it says why)."""
    try:
        spec = ModelSpec.parse(identity.spec)
        if spec.kind in ("local", "builtin") and _model_dir(spec).is_dir():
            checkpoint = find_checkpoint(_model_dir(spec))
        elif spec.kind == "registry" and spec.pretrained and os.path.isfile(spec.pretrained):
            checkpoint = Path(spec.pretrained)
        else:
            return False
        return sha256_file(checkpoint) != identity.weights
    except (ModelSpecError, OSError):
        return False


def _model_dir(spec: ModelSpec) -> Path:
    """The folder of a ``local`` or ``builtin`` spec."""
    return assets_dir() / spec.name if spec.kind == "builtin" else Path(spec.name).expanduser()


def refuse_overwriting(out: str | Path, *inputs: ModelSpec) -> None:
    """Refuse ``out`` when it is one of ``inputs``' own model directories (the bundled one included): writing a
    model over the model it is made from destroys the input, and a re-run would start from the result.

    Raises:
        ModelSpecError: ``out`` is the directory of one of ``inputs``.
    """
    target = Path(out).expanduser().resolve()
    for spec in inputs:
        if spec.kind in ("local", "builtin") and _model_dir(spec).resolve() == target:
            raise ModelSpecError(f"--out {out} is the model {spec.name} that it would be made from; write to a "
                                 "new folder")


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

    Only a file in the ``blobs`` folder of a Hugging Face cache repository (``models--ORG--NAME/blobs/``) is
    trusted to be named by its hash: elsewhere a name of 64 hex digits says nothing about the bytes.

    A computed hash is remembered in the user cache, keyed by the file's real path and stamped with its
    size, mtime, ctime and inode (the same trust as ingestion's unchanged-file check, plus ctime, which no
    tool resets), so a 600 MB checkpoint is not re-read by every command that checks a model's identity.
    """
    real = Path(os.path.realpath(path))
    if _is_hub_blob(real):
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


def _is_hub_blob(real: Path) -> bool:
    """Whether ``real`` is a blob of a Hugging Face cache, which huggingface_hub names by the sha256 of its bytes."""
    return (re.fullmatch(r"[0-9a-f]{64}", real.name) is not None and real.parent.name == "blobs"
            and real.parent.parent.name.startswith("models--"))


def _file_stamp(path: Path) -> list[int]:
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino, stat.st_dev]


def _hash_memo_path(real: Path) -> Path:
    from ..cache import user_cache_dir

    name = hashlib.sha256(os.fsencode(real)).hexdigest()[:32]
    return user_cache_dir() / "sha256" / f"{name}.json"


def config_hash(model_cfg: dict[str, Any]) -> str:
    """The architecture name of a model built from a config rather than a registry name: ``cfg-`` and a hash."""
    return "cfg-" + hashlib.sha256(json.dumps(model_cfg, sort_keys=True).encode()).hexdigest()[:12]


