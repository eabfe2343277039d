"""The text tower alone, for queries: a text search needs neither the image tower nor open_clip's import.

``import open_clip`` costs seconds before any model exists (it pulls in torchvision, torch._dynamo and
timm), and a full model directory load builds and initialises both towers before reading the weights.
For the standard open_clip ``CLIP`` text transformer (what the OpenAI, LAION and this repository's
models use) this module builds the text transformer with plain ``torch.nn`` under open_clip's parameter
names, reads only the text weights from the safetensors file (memory-mapped), and loads open_clip's
own BPE tokenizer module by file, without importing the ``open_clip`` package. Anything else (SigLIP's
HF tokenizers, custom text towers, pickled checkpoints) returns None and the caller loads the full model.

The result matches open_clip's ``encode_text`` (tested against it); the tower is built from the same
``open_clip_config.json`` the identity is computed from.
"""

from __future__ import annotations

import copy
import importlib.util
import logging
import sys
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Iterable

import numpy as np
import numpy.typing as npt
import torch
from torch import nn
from torch.nn import functional as F

from .inputs import check_batch_size, text_list
from .precision import inference_dtype
from .specs import ModelIdentity, ModelSpec, config_hash, read_dir_config, assets_dir, find_checkpoint, sha256_file

logger = logging.getLogger(__name__)
_TOKENIZER_LOAD = threading.Lock()  # see _tokenizer_module

# text_cfg keys whose values the plain tower reproduces; any other key with a non-default value means "not ours"
_TEXT_KEYS = {"context_length", "vocab_size", "width", "heads", "layers", "mlp_ratio", "ls_init_value", "pad_id",
              "eos_id", "no_causal_mask", "pool_type", "proj_type", "proj_bias", "output_tokens", "norm_kwargs",
              "tokenizer_kwargs"}
_TEXT_DEFAULTS = {"embed_cls": False, "final_ln_after_pool": False, "hf_model_name": None, "hf_tokenizer_name": None,
                  "act_kwargs": None, "block_type": None, "qk_norm": False, "scaled_cosine_attn": False,
                  "scale_heads": False, "scale_attn_inner": False, "scale_attn": False, "scale_fc": False,
                  "tokenizer_mode": None}
_MODEL_KEYS = {"embed_dim", "vision_cfg", "text_cfg", "quick_gelu", "init_logit_scale", "init_logit_bias",
               "cast_dtype", "custom_text"}


def unsupported_reason(model_cfg: dict[str, Any], checkpoint: Path) -> str | None:
    """Why the plain tower cannot stand in for open_clip's with this config and checkpoint (None if it can)."""
    if checkpoint.suffix != ".safetensors":
        return f"{checkpoint.name} is not safetensors"
    extra = set(model_cfg) - _MODEL_KEYS
    if extra or model_cfg.get("custom_text"):
        return f"model_cfg has {sorted(extra) or 'custom_text'}"
    text_cfg = model_cfg.get("text_cfg", {})
    odd = [k for k in text_cfg if k not in _TEXT_KEYS and text_cfg[k] != _TEXT_DEFAULTS.get(k, object())]
    if odd:
        return f"text_cfg has {sorted(odd)}"
    if text_cfg.get("pool_type", "argmax") not in ("argmax", "first", "last", "eos"):
        return f"pool_type {text_cfg.get('pool_type')!r}"
    if set(text_cfg.get("norm_kwargs") or {}) - {"eps"}:
        return "norm_kwargs other than eps"
    return None


# The layers below hold uninitialised parameters (torch.empty): every one is overwritten by the checkpoint,
# and initialising 60 M parameters (or building on the meta device, which imports torch._dynamo) costs seconds.
def _empty(*shape: int) -> nn.Parameter:
    return nn.Parameter(torch.empty(shape), requires_grad=False)


class _Linear(nn.Module):
    def __init__(self, fan_in: int, fan_out: int):
        super().__init__()
        self.weight, self.bias = _empty(fan_out, fan_in), _empty(fan_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class _LayerNorm(nn.Module):
    def __init__(self, width: int, eps: float):
        super().__init__()
        self.weight, self.bias, self.eps = _empty(width), _empty(width), eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)


class _Attention(nn.Module):
    """``nn.MultiheadAttention``'s parameters (``in_proj_*``, ``out_proj``) and its arithmetic."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.in_proj_weight, self.in_proj_bias = _empty(3 * width, width), _empty(3 * width)
        self.out_proj = _Linear(width, width)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        batch, length, width = x.shape
        q, k, v = (t.reshape(batch, length, self.heads, -1).transpose(1, 2)
                   for t in F.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1))
        mask = attn_mask.to(x.dtype) if attn_mask is not None else None
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out_proj(out.transpose(1, 2).reshape(batch, length, width))


class _GELU(nn.Module):
    def __init__(self, quick: bool):
        super().__init__()
        self.quick = quick

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x) if self.quick else F.gelu(x)


class _LayerScale(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.gamma = _empty(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class _Block(nn.Module):
    """open_clip's ``ResidualAttentionBlock`` (pre-norm attention and MLP), same parameter names."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, layer_scale: bool, quick_gelu: bool, eps: float):
        super().__init__()
        self.ln_1 = _LayerNorm(width, eps)
        self.attn = _Attention(width, heads)
        self.ls_1 = _LayerScale(width) if layer_scale else nn.Identity()
        self.ln_2 = _LayerNorm(width, eps)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(OrderedDict([("c_fc", _Linear(width, hidden)), ("gelu", _GELU(quick_gelu)),
                                              ("c_proj", _Linear(hidden, width))]))
        self.ls_2 = _LayerScale(width) if layer_scale else nn.Identity()

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        x = x + self.ls_1(self.attn(self.ln_1(x), attn_mask))
        return x + self.ls_2(self.mlp(self.ln_2(x)))


class _Blocks(nn.Module):
    def __init__(self, blocks: list[_Block]):
        super().__init__()
        self.resblocks = nn.ModuleList(blocks)


class TextTower(nn.Module):
    """open_clip ``CLIP``'s text half: token and position embeddings, transformer, final norm, pooling, projection."""

    def __init__(self, model_cfg: dict[str, Any]):
        super().__init__()
        cfg = model_cfg["text_cfg"]
        width, self.context_length = cfg.get("width", 512), cfg.get("context_length", 77)
        eps = (cfg.get("norm_kwargs") or {}).get("eps", 1e-5)
        layer_scale = cfg.get("ls_init_value") is not None
        self.token_embedding = nn.Embedding(cfg.get("vocab_size", 49408), width,
                                            _weight=torch.empty(cfg.get("vocab_size", 49408), width))
        self.positional_embedding = _empty(self.context_length, width)
        self.transformer = _Blocks([_Block(width, cfg.get("heads", 8), cfg.get("mlp_ratio", 4.0), layer_scale,
                                           bool(model_cfg.get("quick_gelu", False)), eps)
                                    for _ in range(cfg.get("layers", 12))])
        self.ln_final = _LayerNorm(width, eps)
        embed_dim = model_cfg["embed_dim"]
        self.text_projection: _Linear | nn.Parameter | None = None
        if cfg.get("proj_type", "linear") != "none" and embed_dim:
            self.text_projection = _Linear(width, embed_dim) if cfg.get("proj_bias") else _empty(width, embed_dim)
        self.logit_scale = _empty()
        self.logit_bias = _empty() if model_cfg.get("init_logit_bias") is not None else None
        self.pool_type, self.eos_id = cfg.get("pool_type", "argmax"), cfg.get("eos_id", 2)
        self.causal = not cfg.get("no_causal_mask", False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.token_embedding(tokens) + self.positional_embedding[: tokens.shape[1]].to(self.token_embedding.weight.dtype)
        mask = None
        if self.causal:
            mask = torch.full((tokens.shape[1], tokens.shape[1]), float("-inf"), device=x.device).triu_(1)
        for block in self.transformer.resblocks:
            x = block(x, mask)
        x = self.ln_final(x)
        rows = torch.arange(x.shape[0], device=x.device)
        if self.pool_type == "argmax":
            x = x[rows, tokens.argmax(dim=-1)]
        elif self.pool_type == "eos":
            x = x[rows, (tokens == self.eos_id).int().argmax(dim=-1)]
        else:
            x = x[:, 0] if self.pool_type == "first" else x[:, -1]
        if isinstance(self.text_projection, _Linear):
            return self.text_projection(x)
        return x if self.text_projection is None else x @ self.text_projection


@dataclass(frozen=True)
class TextEncoder:
    """A text tower with its tokenizer: ``encode_texts`` as :class:`~mmretrieval.models.encoder.DualEncoder`'s."""

    tower: TextTower
    tokenizer: Any
    device: torch.device
    dim: int  # vectors are truncated to this and renormalised

    @property
    def logit_scale(self) -> float:
        """The learned temperature, already exponentiated (as :attr:`DualEncoder.logit_scale`)."""
        return float(self.tower.logit_scale.detach().float().exp().item())

    @property
    def logit_bias(self) -> float | None:
        """SigLIP-style models' learned bias; None for CLIP-style (softmax) models."""
        bias = self.tower.logit_bias
        return None if bias is None else float(bias.detach().float().item())

    @property
    def is_sigmoid(self) -> bool:
        """True for SigLIP-style models, whose label probabilities are independent sigmoids."""
        return self.logit_bias is not None

    @torch.inference_mode()
    def encode_texts(self, texts: str | Iterable[str], batch_size: int = 256) -> npt.NDArray[np.float32]:
        """Encode texts to ``(N, dim)`` unit vectors, one row per text; one ``str`` alone is one text.

        Raises:
            QueryError: bytes, an item that is not a ``str``, or a ``batch_size`` below 1.
        """
        batch_size = check_batch_size(batch_size)
        items = text_list(texts)
        chunks = []
        for start in range(0, len(items), batch_size):
            tokens = self.tokenizer(items[start:start + batch_size]).to(self.device)
            features = self.tower(tokens).float()[:, : self.dim]
            chunks.append(torch.nn.functional.normalize(features, dim=-1).cpu().numpy().astype(np.float32))
        return np.concatenate(chunks) if chunks else np.zeros((0, self.dim), dtype=np.float32)


def load_text_encoder(identity: ModelIdentity, device: torch.device) -> TextEncoder | None:
    """The text tower of the model that ``identity`` describes, or None when only the full load can give it.

    None when the spec is not a model directory (or builtin), the architecture is not the standard CLIP
    text transformer, the weights are not safetensors, or the directory no longer holds the model that
    made the collection (architecture or weights hash differ): the caller then loads the full model,
    whose check names the mismatch.
    """
    spec = ModelSpec.parse(identity.spec)
    if spec.kind not in ("local", "builtin"):
        return None
    directory = assets_dir() / spec.name if spec.kind == "builtin" else Path(spec.name)
    try:
        config = read_dir_config(directory)
        checkpoint = find_checkpoint(directory)
    except Exception as exc:  # the full load reports it properly
        logger.info("no fast text tower for %s: %s", directory, exc)
        return None
    model_cfg = config["model_cfg"]
    reason = unsupported_reason(model_cfg, checkpoint)
    architecture = config.get("architecture") or config_hash(model_cfg)
    if reason is None and (architecture != identity.architecture or sha256_file(checkpoint) != identity.weights):
        reason = "the directory's model differs from the collection's"
    if reason is not None:
        logger.info("loading the full model for text queries: %s", reason)
        return None
    tower = _load_tower(model_cfg, checkpoint, device, inference_dtype(device))  # as DualEncoder runs
    return TextEncoder(tower, _tokenizer(tower.context_length, model_cfg["text_cfg"].get("tokenizer_kwargs")),
                       device, identity.embed_dim)


def _tokenizer(context_length: int, kwargs: dict[str, Any] | None) -> Any:
    """open_clip's ``SimpleTokenizer`` as ``open_clip.get_tokenizer`` makes it for a model directory."""
    module = _tokenizer_module()
    if kwargs:
        return module.SimpleTokenizer(context_length=context_length, **kwargs)
    # The module already built a default one on import (reading the BPE merges takes a while): reuse it.
    tokenizer = copy.copy(module._tokenizer)
    tokenizer.context_length = context_length
    return tokenizer


def _load_tower(model_cfg: dict[str, Any], checkpoint: Path, device: torch.device, dtype: torch.dtype) -> TextTower:
    from safetensors import safe_open

    tower = TextTower(model_cfg)
    wanted = set(tower.state_dict())
    with safe_open(str(checkpoint), framework="pt", device="cpu") as weights:
        state = {key: weights.get_tensor(key).to(device=device, dtype=dtype) for key in weights.keys() if key in wanted}
    # strict: a missing or extra text weight is an error; assign: float32 weights stay memory-mapped, not copied
    tower.load_state_dict(state, strict=True, assign=True)
    return tower.eval()


def _tokenizer_module() -> ModuleType:
    """open_clip's ``tokenizer.py`` (no package-relative imports), loaded by file without ``import open_clip``, once
    per process: under a lock, and listed in ``sys.modules`` only once loaded whole (two collections' first text
    queries on two threads met a half-made module: an ``AttributeError`` in 7 of 8 runs of an API walkthrough)."""
    name = "mmretrieval._open_clip_tokenizer"
    with _TOKENIZER_LOAD:
        if name in sys.modules:
            return sys.modules[name]
        package = importlib.util.find_spec("open_clip")  # finds, does not import
        if package is None or not package.submodule_search_locations:
            raise ImportError("open_clip is not installed")
        path = Path(list(package.submodule_search_locations)[0]) / "tokenizer.py"
        module_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        sys.modules[name] = module
        return module
