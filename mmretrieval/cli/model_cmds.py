"""Model commands: ``classify`` (zero-shot), ``train``, ``eval`` and ``models``."""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import MISSING, fields
from typing import TYPE_CHECKING

from ..errors import MMRError, QueryError, SettingError
from ..models.settings import DEVICES
from .common import (MULTI_LABEL_THRESHOLD, add_model_options, add_null_option, at_least, emit, labels_with_stdin,
                     multi_label_threshold, probability, say)

if TYPE_CHECKING:
    from ..models.zeroshot import Prediction


def register(subparsers: argparse._SubParsersAction) -> None:
    _register_classify(subparsers)
    _register_train(subparsers)
    _register_blend(subparsers)
    _register_eval(subparsers)
    models = subparsers.add_parser(
        "models", help="list open_clip architectures and pretrained tags",
        description="open_clip's architecture and pretrained tag pairs, as architecture<TAB>pretrained: each is a "
        "--model ARCH:TAG, downloaded on first use. Not listed: the bundled demo model builtin:shapes (no download), "
        "hf-hub:ORG/NAME ids and local model folders (README: Model specs).")
    models.add_argument("--json", action="store_true", help="JSON lines instead of TSV")
    models.set_defaults(handler=_models)


def _register_classify(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "classify", help="zero-shot classify images against labels",
        description="Score images against labels with prompt-ensemble text vectors. CLIP-style models give a "
        "softmax over labels (or, with --multi-label, each label against a neutral prompt); SigLIP-style "
        "models give independent sigmoid probabilities. Prints path, label, probability per line (with --json, "
        "the keys path, label and probability), in the order images finish decoding (each line names its "
        "image); a file that cannot be decoded is reported on stderr and skipped.",
    )
    parser.add_argument("images", nargs="+", metavar="SOURCE",
                        help="image file, folder (walked recursively), .txt/.csv list of paths, or - for a list "
                        "on standard input (in a list: one path per line, relative to the list's folder, or for - "
                        "to the current one; blank lines and lines starting with # skipped)")
    add_null_option(parser)
    parser.add_argument("--labels", action="append", required=True,
                        help="comma-separated labels (over several lines: one a line, commas kept), or @FILE "
                        "with one per line (@-: standard input) "
                        "(repeatable)")
    parser.add_argument("--templates", default="default",
                        help="default, imagenet, none, a file of '{}' templates, or one template such as "
                        "'a drawing of a {}.' (default: default)")
    parser.add_argument("--multi-label", action="store_true", help="independent per-label probabilities")
    parser.add_argument("--threshold", type=probability,
                        help=f"with --multi-label: keep labels at or above this (default {MULTI_LABEL_THRESHOLD}); "
                        "an image with none gets one line with an empty label")
    parser.add_argument("-k", "--top-k", type=at_least(1), default=None,
                        help="labels per image (default 1; all above threshold with --multi-label)")
    parser.add_argument("--json", action="store_true", help="JSON lines instead of TSV")
    parser.add_argument("--batch-size", type=at_least(1), help="images per model call (default: 256 on CUDA, 32 on CPU)")
    parser.add_argument("--workers", type=at_least(0), help="decoding processes (default: CPU cores - 1; 0 decodes "
                        "in this process, without isolation)")
    add_model_options(parser)
    parser.set_defaults(handler=_classify)


def _classify(args: argparse.Namespace) -> int:
    from ..ingest.files import embed_files
    from ..ingest.reader import stdin_sources
    from ..models.encoder import load_encoder
    from ..models.label_text import parse_labels
    from ..models.prompt_templates import load_templates
    from ..models.zeroshot import ZeroShotClassifier, predict, refuse_lone_softmax_label
    from ..progress import TqdmProgress

    if "-" in args.images and "@-" in args.labels:
        raise QueryError("standard input given twice (- and --labels @- each read it); it can be read once")
    sources = stdin_sources(args.images, sys.stdin, null=args.null,
                            example="mmr classify --null - --labels 'cat,dog'")  # refuses - - as well
    labels = parse_labels(labels_with_stdin(args.labels))
    templates = load_templates(args.templates)
    threshold = multi_label_threshold(args)
    encoder = load_encoder(args.model, device=args.device, dim=args.dim, precision=args.precision)
    refuse_lone_softmax_label(labels, is_sigmoid=encoder.is_sigmoid, multi_label=args.multi_label)
    with TqdmProgress("labels", unit="label") as label_progress:
        classifier = ZeroShotClassifier.build(encoder, labels, templates, progress=label_progress)
    classified = failed = 0
    with TqdmProgress("classify") as progress:
        for batch in embed_files(encoder, sources, batch_size=args.batch_size, workers=args.workers):
            for failure in batch.failed:
                say(f"mmr classify: {failure.path}: skipped: {failure.message}")
            probabilities = classifier.probabilities(batch.vectors, multi_label=args.multi_label)
            ranked = predict(probabilities, labels, multi_label=args.multi_label, threshold=threshold,
                             top_k=args.top_k)
            emit((row for path, predictions in zip(batch.paths, ranked) for row in _label_rows(path, predictions)),
                 args.json, ["path", "label", "probability"])
            classified, failed = classified + len(batch.paths), failed + len(batch.failed)
            progress(classified + failed, None)
    if classified == 0 and failed == 0:
        say("mmr classify: no images found in " + ", ".join(args.images))
        return 1
    return 2 if classified == 0 else 0


def _label_rows(path: str, predictions: list[Prediction]) -> list[dict[str, object]]:
    """An image's output lines: one per label, or one with an empty label when none reached the threshold."""
    if not predictions:
        return [{"path": path, "label": None, "probability": None}]
    return [{"path": path, "label": p.label, "probability": round(p.probability, 6)} for p in predictions]


_FORCE_HELP = ("write into an --out folder that holds other files (they are kept); without it only a new or empty "
               "folder, or a model that train or blend wrote (replaced whole), is written to")
MIN_EVAL_SCENES = 20  # --scenes: fewer held-out scenes make recall@10 meaningless

_TRAIN_NUMBERS = (  # TrainConfig's numeric fields, as options: name, type, help
    ("steps", int, "optimiser steps"),
    ("batch_size", int, "pairs per step, also the in-batch negatives"),
    ("lr", float, "peak learning rate, reached after the warm-up, then cosine decay to zero"),
    ("warmup_steps", int, "steps of linear learning-rate warm-up"),
    ("weight_decay", float, "AdamW decay on weight matrices"),
    ("seed", int, "seeds the weights, the generated scenes and the data order"),
    ("workers", int, "data-loading processes"),
    ("eval_every", int, "steps between held-out scores (0: only at the end)"),
    ("classic_share", float, "share of scenes drawn in the classic rendering (rehearsal when fine-tuning)"),
    ("position_rate", float, "chance that a single object's caption names its position"),
    ("label_rate", float, "chance that a caption is a bare label, as users type"),
    ("grey_rate", float, "chance that a scene is shown in grey with a caption naming no colour"),
    ("unrelated", int, "texts describing no scene, per step, as wrong answers for every image (0: none)"),
    ("log_every_s", float, "the longest wait in seconds between two log lines (there is one every 50 steps too)"),
)


class _TrainDefaults(argparse.HelpFormatter):
    """Shows TrainConfig's default after each option's help. It reads them only when help is printed: every
    ``mmr`` command builds this parser, and ``mmr search`` must not import training/."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        from ..training.config import TrainConfig

        defaults = {f.name: f.default for f in fields(TrainConfig) if f.default not in (None, MISSING)}
        if action.help and "default" not in action.help and action.dest in defaults:
            return f"{action.help} (default: {defaults[action.dest]})".replace("%", "%%")
        return action.help


def _register_train(subparsers: argparse._SubParsersAction) -> None:
    # Defaults live in TrainConfig; options left out are absent from args (SUPPRESS), so registering this
    # parser imports nothing from training/ (every `mmr` command builds all parsers, `mmr search` included).
    parser = subparsers.add_parser(
        "train", help="contrastive training: the demo model, or fine-tuning on your captioned images",
        description="Train an open_clip dual encoder with CLIP's softmax loss (SigLIP's sigmoid loss for models "
        "with a logit_bias) on generated scenes or on a captioned set (folder with sidecar .txt captions, or a "
        "CSV with path,caption). Logs loss and a held-out score to stderr and train_log.jsonl; saves OUT "
        "as an open_clip model directory (open_clip_config.json + safetensors) that --model OUT loads. The run "
        "writes in a hidden folder inside OUT (.new-model.*.partial/, its log there too) and replaces a model "
        "already in OUT only when complete, then prints OUT's path on stdout. "
        "Options left out take TrainConfig's defaults (mmretrieval/training/config.py).",
        argument_default=argparse.SUPPRESS, formatter_class=_TrainDefaults,
    )
    parser.add_argument("--out", required=True, help="output model directory")
    parser.add_argument("--data", help="'scenes' (generated, the default) or a captioned folder/CSV")
    parser.add_argument("--arch", help="fresh architecture: shapes-vit-tiny (the default) or an open_clip name")
    parser.add_argument("--init", metavar="SPEC", help="fine-tune this model spec instead (it keeps that model's "
                        "architecture: not with --arch)")
    for name, kind, text in _TRAIN_NUMBERS:
        parser.add_argument(f"--{name.replace('_', '-')}", type=kind, help=text)
    parser.add_argument("--full-precision", action="store_true", default=False,
                        help="store float32 weights (default float16)")
    parser.add_argument("--device", default="auto", help=DEVICES)
    parser.add_argument("--force", action="store_true", default=False, help=_FORCE_HELP)
    parser.set_defaults(handler=_train)


def _train(args: argparse.Namespace) -> int:
    from ..training.config import StepLog, TrainConfig

    names = {f.name for f in fields(TrainConfig)} - {"half", "scene_size"}
    given = {name: getattr(args, name) for name in names if hasattr(args, name)}
    if given.get("data", "scenes") != "scenes":  # recorded in the model's notes: from anywhere, the same set
        given["data"] = os.path.abspath(os.path.expanduser(given["data"]))
    if "arch" in given and "init" in given:
        raise MMRError(f"--arch {args.arch} and --init {args.init} both given: a fine-tune keeps the architecture of "
                       "the model it starts from; give one of them")
    try:
        config = TrainConfig(**given, half=not args.full_precision)  # checks every value before torch is imported
    except SettingError as exc:
        raise MMRError(f"--{exc.setting.replace('_', '-')} {exc.problem}") from None

    from ..training.train import train

    def log(entry: StepLog) -> None:
        scores = " ".join(f"{k}={v}" if isinstance(v, int) else f"{k}={v:.3f}" for k, v in entry.held_out.items())
        say(f"step {entry.step:>6}  loss {entry.loss:.4f}  lr {entry.lr:.2e}  {entry.seconds:7.1f}s  {scores}")

    out = train(config, on_log=log, force=args.force)
    print(out)
    return 0


def _register_blend(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "blend", help="blend a fine-tuned model with the model it started from (WiSE-FT)",
        description="Save (1 - KEEP) * TRAINED + KEEP * INIT, weight by weight, as a model directory: a fine-tune "
        "keeps most of what its starting model knew and most of what it gained (Wortsman et al., 2022); prints "
        "the saved directory's path on stdout.",
    )
    parser.add_argument("trained", help="the fine-tuned model (a directory mmr train wrote)")
    parser.add_argument("init", help="the model it was fine-tuned from (e.g. builtin:shapes)")
    parser.add_argument("--keep-init", type=probability, required=True, metavar="KEEP", help="the init's share, 0 to 1")
    parser.add_argument("--out", required=True, help="output model directory")
    parser.add_argument("--full-precision", action="store_true", help="store float32 weights (default float16)")
    parser.add_argument("--force", action="store_true", help=_FORCE_HELP)
    parser.set_defaults(handler=_blend)


def _blend(args: argparse.Namespace) -> int:
    from ..training.blend import blend_models

    print(blend_models(args.trained, args.init, args.keep_init, args.out, half=not args.full_precision,
                       force=args.force))
    return 0


def _register_eval(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval", help="zero-shot accuracy and text-to-image recall@k",
        description="Metrics as defined by CLIP_benchmark. --folder: zero-shot classification of an "
        "ImageFolder-layout directory (one subfolder per class, its images anywhere below it, found as mmr classify "
        "finds them in a folder: hidden files and folders passed over, a linked class folder followed only when "
        "classify would follow it): top-1 accuracy and mean per-class recall. A class's label is its folder's name "
        "with _ read as a space (golden_retriever: \"golden retriever\"); --json maps each folder to its label "
        "(zeroshot_class_texts). --captions: text-to-image retrieval on a captioned set (sidecar .txt files or a "
        "CSV with path,caption): recall@k = share of captions whose own image is in the top k; a k as large as the "
        "number of images is left out (every caption would find its image). Files left out (missing, undecodable, "
        "passed over) are named on stderr. --shapes "
        "(default when neither is given): the demo model's held-out report on generated scenes (the varied "
        "rendering it is trained on): colour, shape and count accuracy, held-out colour/shape pairs, shapes drawn "
        "apart from the generator, recall@k, attribute-match@5 and position-match@5.",
    )
    parser.add_argument("--folder", help="labelled folder (ImageFolder layout: ROOT/<class>/<image>; label = folder "
                        "name, _ read as a space)")
    parser.add_argument("--captions", help="captioned set: folder with sidecar .txt files, or a CSV")
    parser.add_argument("--shapes", action="store_true", help="held-out generated scenes report")
    parser.add_argument("--templates", default="default", help="for --folder: default, imagenet, none, a file, or one template")
    parser.add_argument("--scenes", type=at_least(MIN_EVAL_SCENES), default=1000,
                        help=f"for --shapes: held-out scenes to search over (default 1000, at least "
                        f"{MIN_EVAL_SCENES}: recall@10 over fewer says little)")
    parser.add_argument("--classic", action="store_true",
                        help="for --shapes: the classic rendering (nearly upright shapes, hard edges)")
    parser.add_argument("--json", action="store_true", help="one JSON object instead of TSV lines")
    add_model_options(parser)
    parser.set_defaults(handler=_eval)


def _eval(args: argparse.Namespace) -> int:
    from ..ingest.files import FileFailure
    from ..models.encoder import load_encoder
    from ..training.evaluate import captions_report, folder_report
    from ..training.shapes_eval import shapes_report
    from ..models.prompt_templates import load_templates
    from ..progress import TqdmProgress

    def left_out(failure: FileFailure) -> None:
        say(f"mmr eval: {failure.path}: left out: {failure.reason}: {failure.message}")

    templates = load_templates(args.templates)
    encoder = load_encoder(args.model, device=args.device, dim=args.dim, precision=args.precision)
    report: dict[str, object] = {"model": str(encoder.identity.spec)}
    if args.folder:
        with TqdmProgress("eval --folder") as progress:
            folder = folder_report(encoder, args.folder, templates, on_left_out=left_out, progress=progress)
        report.update({f"zeroshot_{k}": v for k, v in folder.items()})
    if args.captions:
        with TqdmProgress("eval --captions") as progress:
            captions = captions_report(encoder, args.captions, on_left_out=left_out, progress=progress)
        report.update({f"retrieval_{k}": v for k, v in captions.items()})
    if args.shapes or not (args.folder or args.captions):
        with TqdmProgress("eval", unit="part") as progress:
            shapes = shapes_report(encoder, n_scenes=args.scenes, varied=not args.classic, progress=progress)
        report.update({f"shapes_{k}": v for k, v in shapes.items()})
    if args.json:
        print(json.dumps(report))
    else:  # one metric a line: the folder-to-label mapping (one line per class) is --json's
        emit(({"metric": k, "value": v} for k, v in report.items() if not isinstance(v, dict)), False,
             ["metric", "value"])
    return 0


def _models(args: argparse.Namespace) -> int:
    import open_clip

    rows = ({"architecture": arch, "pretrained": tag} for arch, tag in open_clip.list_pretrained())
    emit(rows, args.json, ["architecture", "pretrained"])
    return 0
