"""What went wrong while loading a model, as one line that names the bad thing and what to do about it.

open_clip, torch, safetensors and huggingface_hub raise many types for the same few causes. Each loading stage
(:mod:`.loading`) translates its own failures here, so a checkpoint that does not fit is never reported as a
model that is not cached, and a model that is not cached is never reported as anything else.
"""

from __future__ import annotations

import os
import pickle
import re
import urllib.error
from pathlib import Path

from ..errors import CheckpointError, ModelNotCachedError, ModelSpecError
from .specs import ModelSpec

_MESSAGE_CHARS = 300  # a state_dict mismatch lists every tensor: enough of it to recognise, not a screenful
# The packages an HF tokenizer (SigLIP's, and any text tower from transformers) imports, all in the siglip extra.
_TOKENIZER_PACKAGES = ("transformers", "sentencepiece")


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and the exceptions it was raised from or while handling, outermost first."""
    chain: list[BaseException] = []
    seen: BaseException | None = exc
    while seen is not None and seen not in chain:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    return chain


def one_line(exc: BaseException) -> str:
    """``exc``'s message on one line (torch's state_dict errors come as tab-indented lines), shortened."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= _MESSAGE_CHARS else text[:_MESSAGE_CHARS - 1] + "…"


def _cause(exc: BaseException) -> str:
    """The innermost cause, with its type: ``KeyError: 101`` says more than ``101``."""
    return f"{type(exc).__name__}: {one_line(exc)}"


def is_not_cached(exc: BaseException) -> bool:
    """Whether ``exc`` says a file is neither in the Hugging Face cache nor downloadable now (offline, or no
    network): huggingface_hub's own types, a plain download's URL error, or open_clip's wrapper of either."""
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    not_cached = (LocalEntryNotFoundError, OfflineModeIsEnabled, urllib.error.URLError)
    # open_clip re-raises hub errors as "Failed to download file ..." without `from`; its context keeps the cause,
    # but a context can be lost on the way, and offline that message means nothing else
    return any(isinstance(e, not_cached) for e in _chain(exc)) or (
        bool(os.environ.get("HF_HUB_OFFLINE")) and str(exc).startswith("Failed to download"))


def offline_help(spec: ModelSpec, missing: str | None = None) -> str:
    """The message for a model (or the ``missing`` part of it) that is not in the Hugging Face cache."""
    offline = os.environ.get("HF_HUB_OFFLINE")
    part = f": {missing} is not there" if missing else ""
    fix = "Run with internet and HF_HUB_OFFLINE unset" if offline else "Run once with internet"
    return (
        f"model {spec} is not in the Hugging Face cache and cannot be downloaded here"
        f"{' (HF_HUB_OFFLINE is set)' if offline else ''}{part}. {fix} to download it, use the bundled demo "
        "model (builtin:shapes), or give a local directory that holds open_clip_config.json and the weights."
    )


def tokenizer_error(exc: Exception, spec: ModelSpec) -> Exception:
    """A failure to make ``spec``'s tokenizer as one of our errors."""
    name = spec.name if spec.kind == "registry" else str(spec)
    if isinstance(exc, ModuleNotFoundError) and exc.name in _TOKENIZER_PACKAGES:
        return ModelSpecError(f"{name}'s tokenizer needs the {exc.name} package: pip install 'mmretrieval[siglip]'")
    if is_not_cached(exc):
        return ModelNotCachedError(offline_help(spec, "its tokenizer"))
    return ModelSpecError(f"cannot load the tokenizer of {name}: {one_line(exc)}")


def build_error(exc: Exception, spec: ModelSpec, checkpoint: Path | None, fits: str) -> Exception:
    """A failure of open_clip's ``create_model`` as one of our errors. It loads the weights of a registry tag itself
    (``checkpoint``, the file it was found to use), so checkpoint failures can come from here too."""
    if is_not_cached(exc):
        return ModelNotCachedError(offline_help(spec))
    if checkpoint is not None and _is_checkpoint_failure(exc):
        return checkpoint_error(exc, checkpoint, fits)
    return ModelSpecError(f"cannot load model {spec}: {one_line(exc)}")


def _is_checkpoint_failure(exc: BaseException) -> bool:
    text = " ".join(f"{type(e).__name__}: {e}" for e in _chain(exc))
    return any(isinstance(e, (pickle.UnpicklingError, EOFError)) for e in _chain(exc)) or bool(re.search(
        r"SafetensorError|HeaderTooLarge|PytorchStreamReader|loading state_dict|size mismatch|pos_embed|"
        r"not implemented for 'Half'", text))


def checkpoint_error(exc: Exception, checkpoint: Path, fits: str) -> CheckpointError:
    """A failure to load the weights file ``checkpoint`` into a model built from ``fits`` (an architecture, or
    the config it came from), as a :class:`CheckpointError` that says which of these it is: a pickle carrying code
    (refused by torch's weights-only loader), an empty file, weights of another shape, or not a checkpoint at all.
    """
    chain = _chain(exc)
    text = " ".join(f"{type(e).__name__}: {e}" for e in chain)
    # weights_only refuses every pickle GLOBAL it does not allow; other unpickling errors are bytes that are no pickle
    if any(isinstance(e, pickle.UnpicklingError) for e in chain) and re.search(r"\bGLOBAL\b", text):
        return CheckpointError(
            f"refused to load {checkpoint}: it is a pickle that would run code when loaded. Only safetensors or "
            "plain weights-only torch checkpoints are accepted; convert it with safetensors.torch.save_file."
        )
    try:
        empty = checkpoint.stat().st_size == 0
    except OSError:
        empty = False
    if empty:
        return CheckpointError(f"checkpoint {checkpoint} is an empty file; copy or download it again")
    if re.search(r"loading state_dict|size mismatch|pos_embed", text):
        return CheckpointError(f"checkpoint {checkpoint} does not fit {fits}: {one_line(chain[0])}")
    if re.search(r"not implemented for 'Half'", text):  # open_clip resizes a position embedding of another size,
        # in the checkpoint's float16, which torch's CPU interpolation cannot do
        return CheckpointError(f"checkpoint {checkpoint} does not fit {fits}: its position embedding is of another "
                               "size (weights of another architecture or input size)")
    if re.search(r"SafetensorError|HeaderTooLarge|PytorchStreamReader|EOFError", text):
        return CheckpointError(f"checkpoint {checkpoint} is corrupt or truncated ({_cause(chain[-1])})")
    return CheckpointError(f"checkpoint {checkpoint} is not a torch checkpoint, or corrupt ({_cause(chain[-1])})")
