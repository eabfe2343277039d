"""Contrastive training: fresh architectures on generated scenes, fine-tuning on user pairs, both losses."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from mmretrieval.training import scenes
from mmretrieval.models.encoder import load_encoder
from mmretrieval.errors import MMRError
from mmretrieval.training.train import TrainConfig, train


def _weights(directory) -> dict[str, torch.Tensor]:
    return load_file(str(directory / "open_clip_model.safetensors"))


def _captioned_folder(root, n=8):
    root.mkdir()
    for i in range(n):
        example = scenes.generate(5, i)
        example.image.save(root / f"{i}.png")
        (root / f"{i}.txt").write_text(example.caption + "\n" + scenes.full_caption(example.scene) + "\n")
    (root / "broken.png").write_text("not an image")
    (root / "broken.txt").write_text("a caption for a broken file")
    return root


def test_fresh_demo_architecture_trains_logs_and_reloads(tmp_path):
    logs = []
    config = TrainConfig(out=str(tmp_path / "m"), steps=3, batch_size=6, workers=0, device="cpu",
                         warmup_steps=1, eval_every=2, half=True)
    out = train(config, on_log=logs.append)
    assert [entry.step for entry in logs] == [0, 2]
    assert all(np.isfinite(entry.loss) for entry in logs)
    assert {"color", "shape", "count", "attribute_match@5"} <= set(logs[-1].held_out)
    lines = (out / "train_log.jsonl").read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[-1])["step"] == 2
    config_json = json.loads((out / "open_clip_config.json").read_text())
    assert config_json["architecture"] == "shapes-vit-tiny"
    assert config_json["training"]["steps"] == 3 and config_json["training"]["saved_at_step"] == 2
    assert all(t.dtype == torch.float16 for t in _weights(out).values() if t.is_floating_point())
    encoder = load_encoder(str(out), device="cpu")
    assert encoder.encode_texts(["a red circle"]).shape == (1, 128)


def test_training_is_a_pure_function_of_the_seed(tmp_path):
    def run(name, seed):
        config = TrainConfig(out=str(tmp_path / name), steps=2, batch_size=4, workers=0, device="cpu",
                             warmup_steps=1, eval_every=0, seed=seed, half=False)
        return _weights(train(config))

    first, again, other = run("a", 0), run("b", 0), run("c", 1)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)


@pytest.mark.parametrize("fixture", ["tiny_model_dir", "tiny_siglip_dir"])
def test_fine_tuning_on_captioned_folder_changes_the_weights(fixture, request, tmp_path):
    base = request.getfixturevalue(fixture)
    data = _captioned_folder(tmp_path / "pairs")
    config = TrainConfig(out=str(tmp_path / "tuned"), data=str(data), init=str(base), steps=2, batch_size=4,
                         workers=0, device="cpu", warmup_steps=1, eval_every=0, lr=1e-2, half=False)
    out = train(config)
    before, after = _weights(base), _weights(out)
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    tuned = load_encoder(str(out), device="cpu")
    assert tuned.is_sigmoid == (fixture == "tiny_siglip_dir")  # SigLIP models keep their bias (and sigmoid loss)
    assert json.loads((out / "open_clip_config.json").read_text())["architecture"] == f"finetuned:{base}"


def test_training_on_a_csv(tmp_path, tiny_model_dir):
    data = _captioned_folder(tmp_path / "pairs", n=4)
    csv_file = tmp_path / "pairs.csv"
    csv_file.write_text("path,caption\n" + "".join(f"pairs/{i}.png,{scenes.generate(5, i).caption}\n" for i in range(4)))
    out = train(TrainConfig(out=str(tmp_path / "o"), data=str(csv_file), init=str(tiny_model_dir), steps=1,
                            batch_size=4, workers=0, device="cpu", warmup_steps=1, eval_every=0))
    assert (out / "open_clip_model.safetensors").is_file() and data.is_dir()


def test_bad_training_inputs(tmp_path):
    with pytest.raises(MMRError, match="missing does not exist"):
        train(TrainConfig(out=str(tmp_path / "o"), data=str(tmp_path / "missing"), steps=1, workers=0, device="cpu"))
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(MMRError, match="neither a folder nor a .csv"):
        train(TrainConfig(out=str(tmp_path / "o"), data=str(tmp_path / "notes.txt"), steps=1, workers=0, device="cpu"))
    with pytest.raises(MMRError, match="unknown architecture"):
        train(TrainConfig(out=str(tmp_path / "o"), arch="NoSuchNet", steps=1, workers=0, device="cpu"))
    broken = tmp_path / "broken.csv"  # its only image is gone: nothing to train on
    broken.write_text("path,caption\ngone.png,a red circle\nnotes.txt,a blue square\n")
    with pytest.raises(MMRError, match="none of the captioned images of .*broken.csv could be decoded; nothing was"):
        train(TrainConfig(out=str(tmp_path / "o"), data=str(broken), steps=1, workers=0, device="cpu"))
    with pytest.raises(MMRError, match="is a file; name a folder"):
        train(TrainConfig(out=str(tmp_path / "notes.txt"), steps=1, workers=0, device="cpu"))
    assert not (tmp_path / "o").exists()  # no failed run left a model folder behind


def test_user_pairs_hold_out_a_seeded_split_and_score_it(tmp_path, tiny_model_dir):
    data = _captioned_folder(tmp_path / "pairs", n=44)
    logs = []
    train(TrainConfig(out=str(tmp_path / "o"), data=str(data), init=str(tiny_model_dir), steps=2, batch_size=4,
                      workers=0, device="cpu", warmup_steps=1, eval_every=1), on_log=logs.append)
    scored = [entry.held_out for entry in logs if entry.held_out]
    assert scored and "recall@1" in scored[-1] and scored[-1]["images"] == 2  # 44 usable pairs: 1 in 20 held out
    assert "recall@5" not in scored[-1]  # over 2 images recall@5 is 1 by construction: left out, as mmr eval does


def test_held_out_split_is_disjoint_seeded_and_small():
    from mmretrieval.training.datasets import CaptionedImage
    from mmretrieval.training.pairs import split_held_out

    items = [CaptionedImage(path=__import__("pathlib").Path(f"{i}.png"), captions=(str(i),)) for i in range(100)]
    train_items, held = split_held_out(items, seed=0)
    assert len(held) == 5 and len(train_items) == 95 and not set(held) & set(train_items)
    assert split_held_out(items, seed=0) == (train_items, held)
    assert split_held_out(items, seed=1)[1] != held
    assert split_held_out(items[:19], seed=0)[1] == []


def _open_fds_under(folder) -> list[str]:
    """Files under ``folder`` this process holds open (a deleted one too: its link reads "... (deleted)")."""
    import os

    fd_dir = "/proc/self/fd"
    targets = []
    for fd in os.listdir(fd_dir):
        try:
            targets.append(os.readlink(os.path.join(fd_dir, fd)))
        except OSError:
            continue
    return [t for t in targets if t.startswith(str(folder) + os.sep)]


@pytest.mark.skipif(not __import__("os").path.isdir("/proc/self/fd"), reason="needs /proc")
def test_a_failed_run_closes_its_log(tmp_path, monkeypatch):
    import mmretrieval.training.train as train_module

    def broken_scoring(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(train_module, "_held_out_score", broken_scoring)
    config = TrainConfig(out=str(tmp_path / "m"), steps=1, batch_size=2, workers=0, device="cpu", eval_every=0,
                         warmup_steps=1)
    with pytest.raises(RuntimeError, match="boom") as excinfo:
        train(config)
    assert excinfo.traceback  # the traceback (and its frames) are still alive here
    assert _open_fds_under((tmp_path / "m").resolve()) == []  # the log, written aside, was closed


def test_a_batch_where_every_image_fails_is_skipped_not_a_crash(tmp_path, tiny_model_dir, caplog):
    data = tmp_path / "pairs"
    data.mkdir()
    for i in range(7):  # PNGs by their first bytes (kept for training), which do not decode
        (data / f"{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n but not a png at all")
        (data / f"{i}.txt").write_text(f"caption {i}")
    scenes.generate(5, 0).image.save(data / "good.png")  # one image decodes: the set is not refused
    (data / "good.txt").write_text(scenes.generate(5, 0).caption)
    with caplog.at_level("WARNING", logger="mmretrieval.training.train"):
        out = train(TrainConfig(out=str(tmp_path / "o"), data=str(data), init=str(tiny_model_dir), steps=4,
                                batch_size=4, workers=0, device="cpu", warmup_steps=1, eval_every=0))
    assert "no image of the batch decoded; skipping the step" in caplog.text
    assert (out / "open_clip_model.safetensors").is_file()  # the last step still saves


def test_a_warm_up_as_long_as_the_run_is_warned_about(tmp_path, tiny_model_dir):
    data = _captioned_folder(tmp_path / "pairs", n=4)
    with pytest.warns(UserWarning, match="never reaches 0.0001; pass e.g. --warmup-steps 1"):
        train(TrainConfig(out=str(tmp_path / "o"), data=str(data), init=str(tiny_model_dir), steps=2, batch_size=4,
                          workers=0, device="cpu", lr=1e-4, eval_every=0))  # the default warm-up: 200 steps


def test_cli_train_takes_trainconfig_defaults_for_options_left_out(tmp_path):
    from mmretrieval.cli import main

    out = tmp_path / "cli-model"
    assert main(["train", "--out", str(out), "--steps", "1", "--batch-size", "2", "--workers", "0",
                 "--device", "cpu", "--eval-every", "0", "--warmup-steps", "1"]) == 0
    saved = json.loads((out / "open_clip_config.json").read_text())["training"]
    assert saved["steps"] == 1 and saved["arch"] == "shapes-vit-tiny" and saved["lr"] == TrainConfig(out="x").lr


def _unit(rows: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(rows, dim=-1)


def test_multi_positive_losses_are_open_clips_with_one_positive_each():
    import open_clip

    from mmretrieval.training.losses import multi_positive_clip_loss, multi_positive_siglip_loss

    generator = torch.Generator().manual_seed(0)
    images, texts = _unit(torch.randn(8, 16, generator=generator)), _unit(torch.randn(8, 16, generator=generator))
    scale, bias, eye = torch.tensor(10.0), torch.tensor(-3.0), torch.eye(8, dtype=torch.bool)
    assert multi_positive_clip_loss(images, texts, scale, eye).item() == pytest.approx(
        open_clip.loss.ClipLoss()(images, texts, scale).item(), rel=1e-5)
    assert multi_positive_siglip_loss(images, texts, scale, bias, eye).item() == pytest.approx(
        open_clip.loss.SigLipLoss()(images, texts, scale, bias).item(), rel=1e-5)


def test_an_image_that_fits_another_caption_is_not_pushed_away_from_it():
    from mmretrieval.training.losses import multi_positive_clip_loss

    images = _unit(torch.tensor([[1.0, 0.0], [1.0, 0.05], [0.0, 1.0]]))  # image 1 looks like image 0
    texts = _unit(torch.tensor([[1.0, 0.0], [1.0, 0.05], [0.0, 1.0]]).clone()).requires_grad_()
    positives = torch.eye(3, dtype=torch.bool)
    positives[0, 1] = True  # caption 0 ("a red circle") also describes image 1
    one_right = multi_positive_clip_loss(images, texts, torch.tensor(20.0), torch.eye(3, dtype=torch.bool))
    both_right = multi_positive_clip_loss(images, texts, torch.tensor(20.0), positives)
    assert both_right.item() < one_right.item()


def test_unrelated_texts_are_wrong_answers_for_every_image_only():
    from mmretrieval.training.losses import multi_positive_clip_loss, multi_positive_siglip_loss

    images = _unit(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
    texts = images.clone()
    eye, scale, bias = torch.eye(2, dtype=torch.bool), torch.tensor(10.0), torch.tensor(-3.0)
    far, near = _unit(torch.tensor([[0.0, 0.0, 1.0]])), _unit(torch.tensor([[1.0, 0.1, 0.0]]))
    for loss, extra in ((multi_positive_clip_loss, ()), (multi_positive_siglip_loss, (bias,))):
        alone = loss(images, texts, scale, *extra, eye).item()
        assert loss(images, texts, scale, *extra, eye, torch.empty(0, 3)).item() == pytest.approx(alone)
        # text near an image costs more than text far from all of them: training pushes it away
        with_far, with_near = (loss(images, texts, scale, *extra, eye, text).item() for text in (far, near))
        assert alone < with_far < with_near


def test_null_anchor_wants_the_neutral_prompt_between_fitting_and_misfitting_captions():
    from mmretrieval.training.losses import null_anchor_loss

    images = _unit(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
    texts, eye, scale = images.clone(), torch.eye(2, dtype=torch.bool), torch.tensor(10.0)
    between = _unit(torch.tensor([1.0, 1.0, 0.3]))  # 0.69 with each image; fitting captions 1.0, misfitting 0.0
    below = _unit(torch.tensor([-1.0, -1.0, 0.3]))  # under the misfits: every label would read as present
    above = images[0]  # as close to image 0 as its own caption: "something" would hide what it shows
    anchored = null_anchor_loss(images, texts, between, scale, eye)
    assert anchored < null_anchor_loss(images, texts, below, scale, eye)
    assert anchored < null_anchor_loss(images, texts, above, scale, eye)
    # with every caption fitting every image there is no misfit to stay above: only the fitting half counts
    all_fit = torch.ones(2, 2, dtype=torch.bool)
    fit_half = -torch.nn.functional.logsigmoid(scale * (images @ texts.T - (images @ below)[:, None])).mean() / 2
    assert null_anchor_loss(images, texts, below, scale, all_fit).item() == pytest.approx(fit_half.item())


def test_unrelated_texts_are_seeded_start_neutral_and_never_name_what_scenes_show():
    from mmretrieval.collection.confidence import NOISE_PROMPTS
    from mmretrieval.models.zeroshot import NULL_LABEL
    from mmretrieval.training.unrelated import unrelated_texts

    drawn = [unrelated_texts(7, step, 32) for step in range(200)]
    assert drawn[3] == unrelated_texts(7, 3, 32) and drawn[3] != drawn[4]
    assert all(len(texts) == 32 and texts[0] == NULL_LABEL for texts in drawn)
    vocabulary = {*scenes.COLORS, *scenes.SHAPES, *(scenes.plural(s, 2) for s in scenes.SHAPES), *scenes.BACKGROUNDS,
                  *scenes.SIZES, *" ".join(scenes.POSITIONS).split(), *scenes.COUNT_WORDS.values(), "shape", "shapes"}
    words = {word for texts in drawn for text in texts for word in text.split()}
    assert not words & vocabulary
    assert not {text for texts in drawn for text in texts} & set(NOISE_PROMPTS)  # the match hint's band stays unseen


def test_caption_matches_agrees_with_caption_facts():
    examples = [scenes.generate(1, i, varied=True) for i in range(120)]
    matches = scenes.caption_matches(np.array([e.facts.codes() for e in examples]),
                                     np.array([scenes.attribute_codes(e.scene) for e in examples]))
    expected = np.array([[e.facts.matches(f.scene) for f in examples] for e in examples])
    np.testing.assert_array_equal(matches, expected)
    assert matches.diagonal().all() and 0 < matches.mean() < 0.5


class _AlwaysFlip:
    def random(self) -> float:
        return 0.0

    def uniform(self, low: float, high: float) -> float:
        return 1.0


def test_flips_move_the_scenes_position_with_the_image():
    from PIL import Image

    from mmretrieval.training.train import _augment

    example = next(e for e in scenes.stream(2, varied=True)
                   if e.scene.position == "top left" and e.facts.position is None)
    image, scene = _augment(example.image, example.scene, _AlwaysFlip(), may_flip=True)
    assert scene.position == "bottom right"  # flipped left-right, then top-bottom
    np.testing.assert_array_equal(np.asarray(image), np.asarray(example.image.transpose(Image.Transpose.ROTATE_180)))
    named = next(e for e in scenes.stream(2, varied=True) if e.facts.position is not None)
    image, scene = _augment(named.image, named.scene, _AlwaysFlip(), may_flip=False)  # its caption names the position
    assert scene == named.scene and np.array_equal(np.asarray(image), np.asarray(named.image))


def test_varied_scenes_are_reproducible_and_only_they_have_textures():
    first, again = scenes.generate(9, 4, varied=True), scenes.generate(9, 4, varied=True)
    assert first.caption == again.caption and np.array_equal(np.asarray(first.image), np.asarray(again.image))
    assert "texture" in {scenes.generate(9, i, varied=True).scene.background for i in range(60)}
    assert "texture" not in {scenes.generate(9, i).scene.background for i in range(60)}


def test_scene_dataset_rehearses_classic_scenes_and_names_positions_at_the_asked_rate():
    from mmretrieval.images.preprocess import ImagePreparer
    from mmretrieval.training.config import SHAPES_PREPROCESS
    from mmretrieval.training.train import SceneDataset

    preparer = ImagePreparer(json.dumps(SHAPES_PREPROCESS))

    def dataset(**config) -> SceneDataset:
        return SceneDataset(3, 400, preparer, lambda texts: torch.zeros(len(texts), 4, dtype=torch.long),
                            TrainConfig(out="x", **config))

    def textures_and_named_positions(data: SceneDataset) -> tuple[int, float]:
        codes = [data[i] for i in range(240)]
        textures = sum(int(scene[4]) == scenes.BACKGROUNDS.index("texture") for *_, scene in codes)
        singles = [caption for *_, caption, scene in codes if scene[5] >= 0]
        return textures, np.mean([int(caption[5]) >= 0 for caption in singles])

    varied, rate = textures_and_named_positions(dataset())
    assert varied > 20 and 0.3 < rate < 0.7  # the defaults: varied scenes (a sixth textured), half the positions named
    assert textures_and_named_positions(dataset(classic_share=1.0))[0] == 0  # textures are varied scenes only
    assert 0 < textures_and_named_positions(dataset(classic_share=0.5))[0] < 0.8 * varied
    assert textures_and_named_positions(dataset(position_rate=1.0, label_rate=0.0))[1] == 1.0
    labels = [dataset(label_rate=1.0)[i][2] for i in range(60)]  # bare labels: colour and/or shape, nothing else
    assert all((codes[2:] == -1).all() and (codes[:2] >= 0).any() for codes in labels)
    assert {tuple(int(c) >= 0 for c in codes[:2]) for codes in labels} == {(True, False), (False, True), (True, True)}


def test_grey_scenes_show_no_colour_and_no_caption_names_one():
    from mmretrieval.images.preprocess import ImagePreparer
    from mmretrieval.training.config import SHAPES_PREPROCESS
    from mmretrieval.training.train import SceneDataset

    texts: list[str] = []

    def tokenizer(batch: list[str]) -> torch.Tensor:
        texts.extend(batch)
        return torch.zeros(len(batch), 4, dtype=torch.long)

    def items(**config) -> list:
        texts.clear()
        data = SceneDataset(5, 400, ImagePreparer(json.dumps(SHAPES_PREPROCESS)), tokenizer,
                            TrainConfig(out="x", **config))
        return [data[i] for i in range(80)]

    grey = items(grey_rate=1.0, label_rate=0.3)
    for pixels, _, caption_codes, scene_codes in grey:  # pixels as the model's input, before normalisation
        assert torch.equal(pixels[0], pixels[1]) and torch.equal(pixels[1], pixels[2])
        assert caption_codes[0] == -1 and scene_codes[0] == -1  # no colour named, none a coloured caption matches
        assert scene_codes[1] >= 0
    assert not any(set(text.split()) & set(scenes.COLORS) for text in texts)
    assert sum(text in scenes.SHAPES for text in texts) > 10  # bare labels still come, naming the shape alone
    coloured = items(grey_rate=0.0)
    assert all(scene_codes[0] >= 0 for *_, scene_codes in coloured)
    assert not all(torch.equal(pixels[0], pixels[1]) for pixels, *_ in coloured)
    assert any(set(text.split()) & set(scenes.COLORS) for text in texts)


def test_bf16_where_the_hardware_has_it_embeddings_float32_unless_asked(monkeypatch):
    from mmretrieval.errors import ModelSpecError
    from mmretrieval.models.precision import inference_dtype, native_bf16, open_clip_precision

    cpu = torch.device("cpu")
    for avx512_bf16, amx in ((False, False), (True, False), (False, True)):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
        native = avx512_bf16 or amx
        assert native_bf16(cpu) == native  # what training's autocast goes by
        assert inference_dtype(cpu) == inference_dtype(cpu, "fp32") == torch.float32  # embeddings: unless asked
        if native:
            assert inference_dtype(cpu, "bf16") == torch.bfloat16 and open_clip_precision(cpu, "bf16") == "pure_bf16"
        else:  # emulated bf16 is slower than float32: refused, saying why
            with pytest.raises(ModelSpecError, match="neither AVX512-BF16 nor AMX"):
                inference_dtype(cpu, "bf16")
    assert not native_bf16(torch.device("mps")) and inference_dtype(torch.device("mps")) == torch.float32
    with pytest.raises(ModelSpecError, match="unknown precision 'fp16'"):
        inference_dtype(cpu, "fp16")


def test_label_captions_say_what_they_name():
    rng = random.Random(0)
    for example in scenes.stream(4, stop=80, varied=True):
        text, facts = scenes.label_caption(example.scene, rng)
        assert facts.matches(example.scene) and text.split()[-1] in {*scenes.SHAPES, *scenes.COLORS, "shape"}
        assert (facts.color in text.split()) == (facts.color is not None) and (facts.shape in text.split()) == (
            facts.shape is not None)


def test_blend_is_the_weighted_mean_of_a_fine_tune_and_its_start(tmp_path, tiny_model_dir, tiny_siglip_dir):
    from mmretrieval.cli import main

    start = _weights(tiny_model_dir)
    trained = train(TrainConfig(out=str(tmp_path / "ft"), init=str(tiny_model_dir), steps=2, batch_size=4,
                                workers=0, device="cpu", eval_every=0, warmup_steps=1, half=False))
    assert main(["blend", str(trained), str(tiny_model_dir), "--keep-init", "0.25", "--out", str(tmp_path / "b"),
                 "--full-precision"]) == 0
    blended, tuned = _weights(tmp_path / "b"), _weights(trained)
    assert any(not torch.equal(tuned[k], start[k]) for k in start)
    for name, tensor in blended.items():
        torch.testing.assert_close(tensor, 0.75 * tuned[name] + 0.25 * start[name])
    notes = json.loads((tmp_path / "b" / "open_clip_config.json").read_text())
    assert notes["blend"]["keep_init"] == 0.25 and notes["training"]["init"] == str(tiny_model_dir)
    assert load_encoder(str(tmp_path / "b"), device="cpu").encode_texts(["a red circle"]).shape[0] == 1

    from mmretrieval.training.blend import blend_models

    with pytest.raises(MMRError, match="different architectures"):  # a SigLIP model has a logit_bias besides
        blend_models(str(trained), str(tiny_siglip_dir), 0.5, tmp_path / "never")
    with pytest.raises(MMRError, match="between 0 and 1"):
        blend_models(str(trained), str(tiny_model_dir), 1.5, tmp_path / "never")
    assert not (tmp_path / "never").exists()
    before = (trained / "open_clip_model.safetensors").read_bytes()
    for out in (trained, f"{trained}/"):  # over its own input, however spelled: refused, the input kept
        with pytest.raises(MMRError, match="is the model .* that it would be made from"):
            blend_models(str(trained), str(tiny_model_dir), 0.5, out)
    with pytest.raises(MMRError, match="that it would be made from"):
        train(TrainConfig(out=str(tiny_model_dir), init=str(tiny_model_dir), steps=1, workers=0, device="cpu"))
    assert (trained / "open_clip_model.safetensors").read_bytes() == before


@pytest.mark.parametrize(("given", "message"), [
    ({"steps": 0}, r"steps must be a whole number of at least 1 \(a run of no steps would save no model\), got 0"),
    ({"batch_size": 0}, "batch_size must be a whole number of at least 2 .*, got 0"),
    ({"batch_size": 1}, "batch_size must be a whole number of at least 2 .*, got 1"),
    ({"workers": -1}, "workers must be a whole number of at least 0 .*, got -1"),
    ({"warmup_steps": -1}, "warmup_steps must be a whole number of at least 0, got -1"),
    ({"eval_every": -5}, "eval_every must be a whole number of at least 0 .*, got -5"),
    ({"unrelated": -3}, r"unrelated must be a whole number of at least 0 \(0: none\), got -3"),
    ({"steps": 2.5}, "steps must be a whole number of at least 1 .*, got 2.5"),
    ({"seed": 2 ** 64}, "seed must be a whole number from 0 to 2"),
    ({"lr": -1.0}, "lr must be a number above 0, got -1.0"),
    ({"lr": 0.0}, "lr must be a number above 0, got 0.0"),
    ({"lr": float("nan")}, "lr must be a number above 0, got nan"),
    ({"weight_decay": float("inf")}, "weight_decay must be a number of at least 0, got inf"),
    ({"classic_share": 2.0}, "classic_share must be a share from 0 to 1, got 2.0"),
    ({"grey_rate": -0.1}, "grey_rate must be a share from 0 to 1, got -0.1"),
    ({"arch": "ViT-B-32", "init": "builtin:shapes"}, "arch 'ViT-B-32' and init 'builtin:shapes' both given"),
    ({"out": " "}, "out is empty"),
])
def test_a_config_out_of_range_is_refused_naming_the_value_and_the_range(given, message):
    with pytest.raises(MMRError, match=message):
        TrainConfig(**{"out": "m", **given})


def test_the_architecture_is_the_demo_ones_only_for_a_fresh_model():
    assert TrainConfig(out="m").arch == "shapes-vit-tiny" and TrainConfig(out="m", arch="ViT-B-32").arch == "ViT-B-32"
    assert TrainConfig(out="m", init="builtin:shapes").arch is None  # a fine-tune keeps its init's


def _quick(out, **given) -> TrainConfig:
    return TrainConfig(out=str(out), steps=1, batch_size=2, workers=0, device="cpu", eval_every=0, warmup_steps=1,
                       **given)


def test_an_out_folder_with_other_files_is_refused_unless_forced_and_they_are_kept(tmp_path, tiny_model_dir):
    out = tmp_path / "notes"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    with pytest.raises(MMRError, match=r"holds files that are not a model of mmr train or blend \(notes\.txt\); "
                                       "choose a new folder, or pass --force"):
        train(_quick(out, init=str(tiny_model_dir)))
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    train(_quick(out, init=str(tiny_model_dir)), force=True)
    assert (out / "notes.txt").read_text() == "my notes" and (out / "open_clip_model.safetensors").is_file()
    foreign = tmp_path / "downloaded"  # an open_clip model that neither train nor blend wrote
    foreign.mkdir()
    (foreign / "open_clip_config.json").write_text('{"model_cfg": {}}')
    with pytest.raises(MMRError, match="holds a model that mmr train or blend did not write"):
        train(_quick(foreign, init=str(tiny_model_dir)))


def test_a_model_folder_of_ours_is_replaced_with_no_file_of_the_old_model_left(tmp_path, tiny_model_dir):
    from mmretrieval.training.blend import blend_models

    trained = train(_quick(tmp_path / "ft", init=str(tiny_model_dir)))
    stale = tmp_path / "out"
    train(_quick(stale, init=str(tiny_model_dir)))
    (stale / ".open_clip_model.safetensors.otherhost~1.abc.tmp").write_bytes(b"half")  # a write killed elsewhere
    blend_models(str(trained), str(tiny_model_dir), 0.5, stale)  # over a model that train wrote: allowed
    assert sorted(p.name for p in stale.iterdir()) == [".open_clip_model.safetensors.otherhost~1.abc.tmp",
                                                       "open_clip_config.json", "open_clip_model.safetensors"]
    notes = json.loads((stale / "open_clip_config.json").read_text())
    assert notes["blend"]["keep_init"] == 0.5 and notes["architecture"] == f"finetuned:{tiny_model_dir}"
    train(_quick(stale, init=str(trained)))  # and a run over the blend
    assert "blend" not in json.loads((stale / "open_clip_config.json").read_text())
    assert (stale / "train_log.jsonl").is_file()
    (stale / "notes.txt").write_text("mine")
    with pytest.raises(MMRError, match=r"\(notes\.txt\); choose a new folder, or pass --force"):
        blend_models(str(trained), str(tiny_model_dir), 0.5, stale)
    blend_models(str(trained), str(tiny_model_dir), 0.5, stale, force=True)
    assert sorted(p.name for p in stale.iterdir() if not p.name.startswith(".")) == [
        "notes.txt", "open_clip_config.json", "open_clip_model.safetensors"]  # the old run's log is gone


def test_a_captions_csv_with_an_empty_path_cell_trains_nothing(tmp_path, tiny_model_dir):
    scenes.generate(5, 0).image.save(tmp_path / "a.png")
    (tmp_path / "sub").mkdir()
    data = tmp_path / "pairs.csv"
    data.write_text("path,caption\na.png,a shape\n,orphan\n")
    with pytest.raises(MMRError, match=r"pairs\.csv, line 3: the path cell is empty"):
        train(_quick(tmp_path / "o", data=str(data), init=str(tiny_model_dir)))
    assert not (tmp_path / "o").exists()
    scenes.generate(5, 1).image.save(tmp_path / "b.png")  # two: one pair is refused (no wrong answer to learn from)
    data.write_text("path,caption\na.png,a shape\nb.png,another\nsub,a folder is not an image\n")  # sub: left out
    out = train(TrainConfig(out=str(tmp_path / "o"), data=str(data), init=str(tiny_model_dir), steps=2,
                            batch_size=2, workers=0, device="cpu", eval_every=0, warmup_steps=1))
    assert (out / "open_clip_model.safetensors").is_file()


def test_held_out_files_that_cannot_be_images_are_left_out_before_the_split_and_named_once(tmp_path, tiny_model_dir,
                                                                                           caplog):
    """A missing file held out alone made the run fail at its last step ("none of the captioned images could be
    decoded"), throwing the run away; bad rows warned again in every epoch (a fine-tune walkthrough)."""
    data = _captioned_folder(tmp_path / "pairs", n=21)  # 21 images and a broken one
    (data / "gone.txt").write_text("a caption for a file that is not there")
    listed = data / "pairs.csv"
    rows = [(f"{i}.png", (data / f"{i}.txt").read_text().splitlines()[0]) for i in range(21)]
    listed.write_text("path,caption\n" + "".join(f"{p},{c}\n" for p, c in rows + [("gone.png", "x"),
                                                                                  ("broken.png", "y")]))
    logs = []
    with caplog.at_level("WARNING"):
        out = train(TrainConfig(out=str(tmp_path / "o"), data=str(listed), init=str(tiny_model_dir), steps=12,
                                batch_size=4, workers=0, device="cpu", warmup_steps=1, eval_every=0),
                    on_log=logs.append)
    assert (out / "open_clip_model.safetensors").is_file()
    assert caplog.text.count("gone.png: missing") == 1 and caplog.text.count("broken.png: not an image") == 1
    assert "2 of the 23 captioned images are left out" in caplog.text
    assert logs[-1].held_out["images"] == 1 and logs[-1].held_out["undecodable"] == 0


def test_a_batch_larger_than_the_set_is_cut_to_it_and_each_epoch_has_its_own_order(tmp_path, tiny_model_dir, caplog):
    """With fewer pairs than --batch-size every step held copies of a pair, each the other's wrong answer: the
    loss could not fall below ln(copies) (a fine-tune walkthrough); and every epoch met the pairs in one order."""
    from mmretrieval.training.pairs import PairDataset, batch_size_for

    data = _captioned_folder(tmp_path / "pairs", n=6)
    with caplog.at_level("WARNING"):
        out = train(TrainConfig(out=str(tmp_path / "o"), data=str(data), init=str(tiny_model_dir), steps=2,
                                batch_size=16, workers=0, device="cpu", warmup_steps=1, eval_every=0))
    assert "--batch-size 16 is more than the 6 training pairs: batches of 6 instead" in caplog.text
    notes = json.loads((out / "open_clip_config.json").read_text())["training"]
    assert notes["batch_size"] == 6 and notes["data"] == str(data)
    assert "unrelated" not in notes and "grey_rate" not in notes  # settings of the scenes, which never applied
    for count, batch_size in ((6, 6), (100, 64), (10, 3)):  # batches that would span two epochs, too (a review)
        dataset = PairDataset([None] * count, 60 * batch_size, batch_size, seed=2 ** 62, preparer=None, tokenizer=None)
        batches = [[dataset.position(b * batch_size + j)[0] for j in range(batch_size)] for b in range(60)]
        assert all(len(set(batch)) == batch_size for batch in batches)  # no pair twice in a batch
        epochs = {}
        for b, batch in enumerate(batches):
            epochs.setdefault(dataset.position(b * batch_size)[1], []).extend(batch)
        assert len({tuple(order) for order in epochs.values()}) > 1  # each epoch its own order
    with pytest.raises(MMRError, match="1 captioned image to train on: contrastive training needs 2 or more"):
        batch_size_for(1, 4)


def test_a_checkpoint_kept_on_ctrl_c_keeps_the_log_up_to_its_step(tmp_path, monkeypatch, caplog):
    """The kept step-30 weights came with a log that ran to step 50, and the warning named no step."""
    import mmretrieval.training.train as train_module

    logs = []
    steps = train_module._steps

    def interrupted_after_the_checkpoint(config, *args):
        for entry in steps(config, *args):
            yield entry
            if entry.step == 2:
                raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "_steps", interrupted_after_the_checkpoint)
    monkeypatch.setattr(train_module, "_held_out_score", lambda *args: {})
    config = TrainConfig(out=str(tmp_path / "m"), steps=4, batch_size=4, workers=0, device="cpu", eval_every=1,
                         warmup_steps=1)
    with caplog.at_level("WARNING"), pytest.raises(KeyboardInterrupt):
        train(config, on_log=logs.append)
    saved = json.loads((tmp_path / "m" / "open_clip_config.json").read_text())["training"]["saved_at_step"]
    logged = [json.loads(line)["step"] for line in (tmp_path / "m" / "train_log.jsonl").read_text().splitlines()]
    assert max(logged) == saved and f"holds the last checkpoint saved, of step {saved}" in caplog.text


def test_a_new_architecture_trains_with_its_own_tokenizer(tmp_path, monkeypatch):
    """`--arch ViT-B-16-SigLIP` crashed with IndexError: CLIP's token ids ran past SigLIP's vocabulary."""
    import open_clip

    from mmretrieval.errors import ModelSpecError

    asked = []

    def tokenizer_of(name, **kwargs):
        asked.append(name)
        raise ModuleNotFoundError("No module named 'transformers'", name="transformers")

    monkeypatch.setattr(open_clip, "get_tokenizer", tokenizer_of)
    with pytest.raises(ModelSpecError, match=r"tokenizer needs the transformers package: pip install "):
        train(TrainConfig(out=str(tmp_path / "sig"), arch="ViT-B-16-SigLIP", steps=1, batch_size=2, workers=0,
                          device="cpu"))
    assert asked == ["ViT-B-16-SigLIP"] and not (tmp_path / "sig").exists()


def test_a_slow_run_logs_at_least_every_minute_not_only_every_fifty_steps(tmp_path):
    """A fresh ViT-S-32 took ~9 s a step on a CPU: ~7 minutes between two lines (a fine-tune walkthrough)."""
    logs = []
    train(TrainConfig(out=str(tmp_path / "m"), steps=4, batch_size=2, workers=0, device="cpu", eval_every=0,
                      warmup_steps=1, log_every_s=0.0), on_log=logs.append)  # every step counts as slow
    assert [entry.step for entry in logs] == [0, 1, 2, 3]


def test_a_fifo_named_as_an_image_is_left_out_without_waiting(tmp_path, caplog):
    """The first check opened each file with a blocking open(): a FIFO in the set hung mmr train (a review)."""
    import os

    from mmretrieval.training.datasets import CaptionedImage
    from mmretrieval.training.pairs import usable_pairs

    os.mkfifo(tmp_path / "pipe.png")
    scenes.generate(5, 0).image.save(tmp_path / "good.png")
    items = [CaptionedImage(tmp_path / "pipe.png", ("a pipe",)), CaptionedImage(tmp_path / "good.png", ("a scene",))]
    with caplog.at_level("WARNING"):
        assert usable_pairs(items) == items[1:]
    assert "pipe.png: not a regular file" in caplog.text
