"""Contrastive training of open_clip dual encoders: the bundled demo model, and fine-tuning on user data.

The loss follows the model: SigLIP's sigmoid loss for models with a ``logit_bias``, CLIP's softmax loss
otherwise (both from ``open_clip.loss``). Data comes from the synthetic scene generator (each step draws
fresh scenes ``step * batch + j``, so a run is a pure function of its seed and step count) or from a
captioned image set. The result is saved in the open_clip local-directory layout that ``--model DIR`` loads.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import random
import time
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from PIL import Image, ImageEnhance
from torch.utils.data import DataLoader, Dataset

from . import scenes
from ..ingest.batches import Skipped
from .datasets import CaptionedImage, read_captioned
from ..models.encoder import DualEncoder, PixelNormaliser, resolve_device
from ..errors import ImageDecodeError, MMRError
from ..images.decode import decode_image
from ..models.load_errors import tokenizer_error
from ..models.loading import LoadedModel, load_model, root_logger_left_alone, save_model_dir
from ..models.precision import native_bf16
from ..models.specs import ModelIdentity, ModelSpec, model_config_of, refuse_overwriting
from ..images.preprocess import ImagePreparer
from .config import SCENES_ONLY, SHAPES_ARCH, SHAPES_MODEL_CFG, SHAPES_PREPROCESS, StepLog, TrainConfig
from .losses import multi_positive_clip_loss, multi_positive_siglip_loss, null_anchor_loss
from .out_folder import TRAIN_LOG_NAME, check_out_folder, model_written_aside
from .pairs import PairDataset, batch_size_for, split_held_out, usable_pairs
from .unrelated import unrelated_texts

logger = logging.getLogger(__name__)

NULL_ANCHOR_WEIGHT = 0.5  # multi-label scoring's own loss (captions against the neutral prompt) beside the contrastive


class SceneDataset(Dataset):
    """Scene ``i`` of the seed's stream, augmented, prepared for the model and tokenised, with its caption's
    and its scene's attribute codes (which captions of a batch fit which scenes).

    Scenes are drawn with the varied rendering, but for a ``classic_share`` of them (chosen per index, so
    a run stays a pure function of its seed): rehearsal of the classic scenes when fine-tuning a model first
    trained on them. ``position_rate`` is the chance that a single object's caption names its position;
    ``label_rate`` the chance that the caption is a bare label instead (:func:`.scenes.label_caption`);
    ``grey_rate`` the chance that the scene is shown in grey with a caption that names no colour, so that shapes
    are learnt apart from the colours they come in (four colour/shape pairs never occur in colour).

    Augmentation keeps every caption true: flips only when the caption names no position (and the scene's
    position code follows the flip, for the other captions of the batch), brightness and contrast within 10%.
    """

    def __init__(self, seed: int, length: int, preparer: ImagePreparer, tokenizer: Any, config: TrainConfig):
        self.seed, self.length, self.preparer, self.tokenizer = seed, length, preparer, tokenizer
        self.scene_size, self.classic_share = config.scene_size, config.classic_share
        self.position_rate, self.label_rate, self.grey_rate = config.position_rate, config.label_rate, config.grey_rate

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        varied = random.Random(f"{self.seed}:{index}:rendering").random() >= self.classic_share
        grey = random.Random(f"{self.seed}:{index}:grey").random() < self.grey_rate
        example = scenes.generate(self.seed, index, size=self.scene_size, varied=varied,
                                  position_rate=self.position_rate, name_color=not grey)
        image, scene, text, facts = example.image, example.scene, example.caption, example.facts
        if grey:  # the shape apart from its hue: no colour to see, none named, none that a caption can match
            image, scene = image.convert("L").convert("RGB"), dataclasses.replace(scene, color=None)
        labelling = random.Random(f"{self.seed}:{index}:label")
        if labelling.random() < self.label_rate:
            text, facts = scenes.label_caption(scene, labelling, name_color=not grey)
        image, scene = _augment(image, scene, random.Random(f"{self.seed}:{index}:augment"), facts.position is None)
        return (torch.from_numpy(self.preparer(image)), self.tokenizer([text])[0],
                torch.tensor(facts.codes()), torch.tensor(scenes.attribute_codes(scene)))


_FLIPPED = {"horizontal": {"top left": "top right", "top right": "top left", "bottom left": "bottom right",
                           "bottom right": "bottom left"},
            "vertical": {"top left": "bottom left", "bottom left": "top left", "top right": "bottom right",
                         "bottom right": "top right"}}


def _augment(image: Image.Image, scene: scenes.Scene, rng: random.Random,
             may_flip: bool) -> tuple[Image.Image, scenes.Scene]:
    if may_flip:
        for direction, transpose in (("horizontal", Image.Transpose.FLIP_LEFT_RIGHT),
                                     ("vertical", Image.Transpose.FLIP_TOP_BOTTOM)):
            if rng.random() < 0.5:
                image = image.transpose(transpose)
                if scene.position is not None:
                    scene = dataclasses.replace(scene, position=_FLIPPED[direction].get(scene.position, scene.position))
    image = ImageEnhance.Brightness(image).enhance(rng.uniform(0.9, 1.1))
    return ImageEnhance.Contrast(image).enhance(rng.uniform(0.9, 1.1)), scene


def _collate(batch: list) -> tuple[torch.Tensor, ...] | None:
    """Stack the pairs that decoded (with their attribute codes, for scenes); None when none did (the training
    loop skips that step)."""
    pairs = [pair for pair in batch if pair is not None]
    if not pairs:
        return None
    return tuple(torch.stack([p[k] for p in pairs]) for k in range(len(pairs[0])))


def _build(config: TrainConfig, device: torch.device) -> tuple[LoadedModel, dict[str, Any]]:
    import open_clip

    torch.manual_seed(config.seed)
    if config.init:
        spec = ModelSpec.parse(config.init)
        return load_model(spec, device=device, precision="fp32"), model_config_of(spec)
    if config.arch == SHAPES_ARCH:
        model_cfg, preprocess = SHAPES_MODEL_CFG, SHAPES_PREPROCESS
        model = open_clip.CLIP(**model_cfg)
        open_clip.model.set_model_preprocess_cfg(model, preprocess)
        tokenizer = open_clip.SimpleTokenizer(context_length=model_cfg["text_cfg"].get("context_length", 77))
    else:
        model_cfg = open_clip.get_model_config(config.arch)
        if model_cfg is None:
            raise MMRError(f"unknown architecture {config.arch!r}: use {SHAPES_ARCH} or an open_clip registry name")
        tokenizer = _tokenizer(open_clip, config.arch)  # first: it fails in an instant, the model takes seconds
        with root_logger_left_alone():  # open_clip's logging.info() would configure the application's logging
            model = open_clip.create_model(config.arch, pretrained=None)
        preprocess = open_clip.get_model_preprocess_cfg(model)
    identity = ModelIdentity(spec=config.out, architecture=config.arch, embed_dim=model_cfg["embed_dim"],
                             weights="training", preprocess=json.dumps(preprocess, sort_keys=True))
    return LoadedModel(model.to(device), tokenizer, identity, ()), model_cfg


def _tokenizer(open_clip: Any, arch: str) -> Any:
    """The tokenizer a new model of registry architecture ``arch`` is trained with: the one loading the saved
    model gives it (open_clip's for that architecture: SigLIP's own vocabulary, not CLIP's, whose ids run past it).

    Raises:
        ModelSpecError, ModelNotCachedError: it cannot be made here (a package missing, not downloaded).
    """
    try:
        return open_clip.get_tokenizer(arch)
    except Exception as exc:  # open_clip and its tokenizer backends raise many types
        raise tokenizer_error(exc, ModelSpec.parse(arch)) from exc


def _optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    # As open_clip's training: no weight decay on gains, biases, embeddings' scalars or the temperature.
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        flat = param.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name
        (no_decay if flat else decay).append(param)
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.98), eps=1e-6)


def _lr_at(step: int, config: TrainConfig) -> float:
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return 0.5 * config.lr * (1 + math.cos(math.pi * min(1.0, progress)))


def _loader(config: TrainConfig, loaded: LoadedModel, device: torch.device,
            pairs: list[CaptionedImage]) -> DataLoader:
    preparer = ImagePreparer(loaded.identity.preprocess)
    length = config.steps * config.batch_size
    if config.data == "scenes":
        dataset: Dataset = SceneDataset(config.seed, length, preparer, loaded.tokenizer, config)
    else:
        dataset = PairDataset(pairs, length, config.batch_size, config.seed, preparer, loaded.tokenizer)
    return DataLoader(
        dataset, batch_size=config.batch_size, shuffle=False, num_workers=config.workers, collate_fn=_collate,
        pin_memory=device.type == "cuda", persistent_workers=config.workers > 0,
        prefetch_factor=8 if config.workers > 0 else None, drop_last=True,
    )


def train(config: TrainConfig, on_log: Callable[[StepLog], None] | None = None, *, force: bool = False) -> Path:
    """Train, scoring on held-out data every ``eval_every`` steps, and save the model directory.

    Checkpoints and the log are written aside, in a hidden folder of ``config.out``
    (``.new-model.<host>~<pid>.<random>.partial/``: follow the log there with ``tail -f``), and replace a previous
    model's files in ``config.out`` only when the last step is saved (:func:`.out_folder.model_written_aside`), so
    that an interrupted or failed run leaves the previous model as it was, and discards its own checkpoints.

    Args:
        config: the run.
        on_log: called with each log entry.
        force: write into an ``out`` folder that holds other files (they are kept; see :mod:`.out_folder`).

    Returns:
        The output directory (loadable with ``load_encoder(str(path))``).

    Raises:
        MMRError: bad data source, unknown architecture, an unloadable ``init`` model, ``out`` is ``init``'s
            own directory, a file, or (without ``force``) a folder that holds more than a model of ours.
    """
    import open_clip

    if config.init:
        refuse_overwriting(config.out, ModelSpec.parse(config.init))
    out = check_out_folder(config.out, force)
    pairs: list[CaptionedImage] = []
    held_pairs: list[CaptionedImage] = []
    if config.data != "scenes":
        pairs, held_pairs = split_held_out(_usable(config.data), config.seed)
        config = dataclasses.replace(config, batch_size=batch_size_for(len(pairs), config.batch_size))
    device = resolve_device(config.device)
    loaded, model_cfg = _build(config, device)
    model = loaded.model.float().train()
    loss_fn = open_clip.loss.SigLipLoss() if getattr(model, "logit_bias", None) is not None else open_clip.loss.ClipLoss()
    optimizer = _optimizer(model, config)
    if config.warmup_steps > config.steps:
        warnings.warn(f"the warm-up ({config.warmup_steps} steps) is longer than the run ({config.steps} steps): "
                      f"the learning rate never reaches {config.lr:g}; pass e.g. --warmup-steps "
                      f"{max(1, config.steps // 10)}", stacklevel=2)
    with model_written_aside(out) as new:
        logger.info("training log (until the model is complete): %s", new / TRAIN_LOG_NAME)
        with open(new / TRAIN_LOG_NAME, "w", encoding="utf-8") as log_file:
            for entry in _steps(config, loaded, model_cfg, device, pairs, held_pairs, optimizer, loss_fn, new):
                log_file.write(json.dumps(asdict(entry)) + "\n")
                log_file.flush()
                if on_log:
                    on_log(entry)
            os.fsync(log_file.fileno())  # durable before it is renamed into place beside the model
    return out


def _usable(source: str) -> list[CaptionedImage]:
    """The captioned images of ``source`` that can be trained on (:func:`.pairs.usable_pairs`), each one left out
    named once; refused when none decodes (before any output exists): training on them would save the starting
    weights as if trained. Stops at the first image that decodes, so a good set costs one decode.

    Raises:
        MMRError: not one image is usable.
    """
    def left_out(skipped: Skipped) -> None:
        logger.warning("left out: %s: %s", skipped.path, skipped.message)

    items = usable_pairs(read_captioned(source, on_skipped=left_out))
    for item in items:
        try:
            decode_image(item.path, draft_size=256)
            return items
        except ImageDecodeError:
            continue
    raise MMRError(f"none of the captioned images of {source} could be decoded; nothing was trained")


def _steps(config: TrainConfig, loaded: LoadedModel, model_cfg: dict[str, Any], device: torch.device,
           pairs: list[CaptionedImage], held_pairs: list[CaptionedImage], optimizer: torch.optim.Optimizer,
           loss_fn: Callable[..., torch.Tensor], save_to: Path) -> Iterator[StepLog]:
    """Run the training steps, saving at checkpoints into ``save_to``; yields the entries for the log.

    A batch in which no image decoded is skipped (the step still counts, so a run stays a pure function of
    its seed and step count, and the last step still saves).
    """
    model = loaded.model
    sigmoid = getattr(model, "logit_bias", None) is not None
    normalise = PixelNormaliser(loaded.identity.preprocess, device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=native_bf16(device))
    started = logged = time.perf_counter()
    for step, batch in enumerate(_loader(config, loaded, device, pairs)):
        loss = None
        if batch is None:
            logger.warning("step %d: no image of the batch decoded; skipping the step", step)
        else:
            unrelated = None
            if len(batch) == 4 and config.unrelated:
                unrelated = loaded.tokenizer(unrelated_texts(config.seed, step, config.unrelated))
            loss = _step(model, normalise, autocast, optimizer, loss_fn, sigmoid, batch, unrelated,
                         _lr_at(step, config), device)
        last = step == config.steps - 1
        checkpoint = last or bool(config.eval_every and step and step % config.eval_every == 0)
        # a line every 50 steps, and at least every log_every_s (a big model's 50 steps on a CPU take many minutes)
        if loss is not None and (step % 50 == 0 or checkpoint or time.perf_counter() - logged > config.log_every_s):
            held_out = _held_out_score(loaded, device, config, held_pairs) if checkpoint else {}
            logged = time.perf_counter()
            yield StepLog(step, loss, _lr_at(step, config), logged - started, held_out)
        if checkpoint:  # the run's folder holds its latest held-out-scored weights while it lasts
            _save(model, model_cfg, loaded, config, step, save_to)


def _step(model: torch.nn.Module, normalise: PixelNormaliser, autocast: Any, optimizer: torch.optim.Optimizer,
          loss_fn: Callable[..., torch.Tensor], sigmoid: bool, batch: tuple[torch.Tensor, ...],
          unrelated: torch.Tensor | None, lr: float, device: torch.device) -> float:
    """One optimiser step on ``batch``; returns the loss.

    A batch of scenes carries attribute codes: its loss counts every caption that fits an image as right
    (:mod:`.losses`), not only the image's own caption. ``unrelated`` (tokens; the neutral prompt first) are
    wrong answers for every image of such a batch; for CLIP-style models the neutral prompt is also trained
    to sit between the captions that fit and the ones that do not (:func:`.losses.null_anchor_loss`).
    """
    images, tokens = batch[:2]
    for group in optimizer.param_groups:
        group["lr"] = lr
    with autocast:
        image_features = model.encode_image(normalise(images.to(device, non_blocking=True)), normalize=True)
        if unrelated is not None:
            tokens = torch.cat([tokens, unrelated])
        text_features = model.encode_text(tokens.to(device, non_blocking=True), normalize=True)
        text_features, unrelated_features = text_features[:len(images)], text_features[len(images):]
        unrelated_features = unrelated_features if len(unrelated_features) else None
        extra = (model.logit_bias,) if sigmoid else ()
        if len(batch) == 4:
            positives = torch.from_numpy(scenes.caption_matches(batch[2].numpy(), batch[3].numpy())).to(device)
            loss = (multi_positive_siglip_loss if sigmoid else multi_positive_clip_loss)(
                image_features, text_features, model.logit_scale.exp(), *extra, positives, unrelated_features)
            if unrelated_features is not None and not sigmoid:
                loss = loss + NULL_ANCHOR_WEIGHT * null_anchor_loss(
                    image_features, text_features, unrelated_features[0], model.logit_scale.exp(), positives)
        else:
            loss = loss_fn(image_features, text_features, model.logit_scale.exp(), *extra)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    with torch.no_grad():
        model.logit_scale.clamp_(0, math.log(100))
    return float(loss.item())


def _save(model: torch.nn.Module, model_cfg: dict[str, Any], loaded: LoadedModel, config: TrainConfig, step: int,
          directory: Path) -> Path:
    # settings of the run, not of the model; and with a captioned set, the scenes' ones (none applied)
    left_out = {"out", "device", "workers", "log_every_s", *(SCENES_ONLY if config.data != "scenes" else ())}
    extra = {"architecture": config.arch if not config.init else f"finetuned:{config.init}",
             "training": {**{k: v for k, v in asdict(config).items() if k not in left_out}, "saved_at_step": step}}
    preprocess = json.loads(loaded.identity.preprocess)
    return save_model_dir(model, model_cfg, directory, preprocess_cfg=preprocess, extra=extra, half=config.half)


def _held_out_score(loaded: LoadedModel, device: torch.device, config: TrainConfig,
                    held_pairs: list[CaptionedImage]) -> dict[str, float]:
    """The scene report on generated data; text-to-image recall@k on the held-out user pairs otherwise."""
    from .evaluate import captioned_recall, without_trivial_recall
    from .shapes_eval import shapes_report

    if config.data != "scenes" and not held_pairs:
        return {}
    loaded.model.eval()
    try:
        encoder = DualEncoder(LoadedModel(loaded.model, loaded.tokenizer, loaded.identity, ()), device, channels_last=False)
        if not held_pairs:
            return shapes_report(encoder, n_scenes=400, n_captions=100)
        try:
            return without_trivial_recall(captioned_recall(encoder, held_pairs))  # as mmr eval reports it
        except MMRError as exc:  # none of them decodes: the run and its weights go on without a score
            logger.warning("no held-out score: %s", exc)
            return {}
    finally:
        loaded.model.train()
