"""Options and output helpers shared by the command modules."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Iterable


def add_model_options(parser: argparse.ArgumentParser, default: str | None = "builtin:shapes") -> None:
    """``--model``, ``--device``, ``--precision`` and ``--dim``, the same everywhere."""
    parser.add_argument(
        "--model", default=default,
        help="model spec: ARCH:PRETRAINED (open_clip registry), hf-hub:ORG/REPO, a local model directory, "
        f"or builtin:shapes (default: {default or 'the collection’s model'})",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                        help="number format of the model: auto (bf16 on CUDA, float32 on CPU), fp32, or bf16 (on "
                        "CPUs with AVX512-BF16 or AMX, about twice as fast as float32 with ViT-B-32; vectors agree "
                        "with float32's to ~1e-3)")
    parser.add_argument("--dim", type=int, default=None,
                        help="truncate vectors to this many dimensions and renormalise (Matryoshka-style; "
                        "warns unless the model was trained for it)")


def add_collection_option(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """``--collection DIR``, defaulting to ``$MMR_COLLECTION``."""
    default = os.environ.get("MMR_COLLECTION")
    parser.add_argument(
        "--collection", default=default, required=required and default is None, metavar="DIR",
        help="collection directory (default: $MMR_COLLECTION)",
    )


def emit(rows: Iterable[dict[str, Any]], as_json: bool, columns: list[str]) -> int:
    """Print rows as JSON lines or TSV (``columns`` in order, no header); returns how many were printed."""
    count = 0
    for row in rows:
        if as_json:
            print(json.dumps(row, ensure_ascii=False))
        else:
            print("\t".join(_cell(row.get(column)) for column in columns))
        count += 1
    sys.stdout.flush()
    return count


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "" if value is None else str(value).replace("\t", " ").replace("\n", " ")
