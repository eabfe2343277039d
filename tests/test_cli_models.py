"""The model commands of ``mmr``, run in-process: output formats, exit codes, and errors without tracebacks."""

from __future__ import annotations

import json
import random
import shutil

import pytest
import torch

from mmretrieval.training import scenes
from mmretrieval.cli import main


@pytest.fixture
def red_circle(tmp_path):
    path = tmp_path / "red circle.png"
    scenes.render(scenes.Scene("red", "circle", 1, "large", "plain", "center"), random.Random(1)).save(path)
    return path


def _run(capsys, *argv):
    status = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return status, out, err


def test_classify_prints_tsv_best_label_first(capsys, red_circle):
    status, out, _ = _run(capsys, "classify", red_circle, "--labels", "red circle,blue square", "--labels",
                          "yellow star", "--top-k", "3", "--device", "cpu")
    assert status == 0
    rows = [line.split("\t") for line in out.splitlines()]
    assert [r[1] for r in rows][0] == "red circle" and len(rows) == 3
    assert rows[0][0] == str(red_circle)
    assert sum(float(r[2]) for r in rows) == pytest.approx(1.0, abs=1e-3)


def test_classify_json_multi_label(capsys, red_circle, tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("red shape\ncircle\nblue square\n")
    status, out, _ = _run(capsys, "classify", red_circle, "--labels", f"@{labels}", "--multi-label",
                          "--threshold", "0.5", "--json", "--templates", "none", "--device", "cpu")
    assert status == 0
    found = {json.loads(line)["label"] for line in out.splitlines()}
    assert {"red shape", "circle"} <= found and "blue square" not in found


def test_classify_skips_bad_images_and_fails_only_if_all_fail(capsys, red_circle, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_text("nope")
    status, out, err = _run(capsys, "classify", bad, red_circle, "--labels", "a,b", "--device", "cpu")
    assert status == 0 and str(bad) in err and str(red_circle) in out
    status, out, err = _run(capsys, "classify", bad, "--labels", "a,b", "--device", "cpu")
    assert status == 2 and out == ""


class _Payload:
    def __reduce__(self):
        return (print, ("pwned",))


def _evil_dir(tmp_path, tiny_model_dir, name="evil", save=lambda value, path: torch.save(value, path)):
    """A model folder whose weights file is a pickle that would print "pwned" if it ran (written by ``save``)."""
    directory = tmp_path / name
    directory.mkdir()
    shutil.copy(tiny_model_dir / "open_clip_config.json", directory)
    save({"x": _Payload()}, directory / "open_clip_pytorch_model.bin")
    return directory


def _corrupt_dir(tmp_path, tiny_model_dir):
    directory = shutil.copytree(tiny_model_dir, tmp_path / "corrupt")
    (directory / "open_clip_model.safetensors").write_bytes(b"\x00" * 64)
    return directory


@pytest.mark.parametrize(
    ("make_spec", "message"),
    [
        (lambda tmp, tiny: "ViT-Q-99", "unknown open_clip architecture"),
        (lambda tmp, tiny: tmp / "missing-model", "does not exist"),
        (_corrupt_dir, "corrupt"),
        (_evil_dir, "pickle that would run code"),
        (lambda tmp, tiny: "ViT-B-32:openai", "not in the Hugging Face cache"),
    ],
)
def test_bad_model_specs_exit_2_with_a_clear_message(capsys, red_circle, tmp_path, tiny_model_dir, make_spec, message):
    spec = make_spec(tmp_path, tiny_model_dir)
    status, out, err = _run(capsys, "classify", red_circle, "--labels", "a,b", "--model", spec, "--device", "cpu")
    assert status == 2 and out == ""
    assert err.startswith("mmr classify: error:") and message in err
    assert "pwned" not in out + err


def test_a_plain_pickle_as_a_checkpoint_is_one_error_line(capsys, red_circle, tmp_path, tiny_model_dir):
    """torch's note on the pickle protocol came first, as a warning line of its own (a security walkthrough)."""
    import pickle

    directory = _evil_dir(tmp_path, tiny_model_dir, "plain-pickle",
                          save=lambda value, path: path.write_bytes(pickle.dumps(value, protocol=4)))
    status, out, err = _run(capsys, "classify", red_circle, "--labels", "a,b", "--model", directory, "--device", "cpu")
    assert status == 2 and out == "" and "pwned" not in err
    assert err.splitlines() == [err.rstrip("\n")] and err.startswith("mmr classify: error: checkpoint")


def test_eval_folder_and_shapes_json(capsys, tmp_path, red_circle):
    for colour in ("red", "blue"):
        folder = tmp_path / "set" / colour
        folder.mkdir(parents=True)
        for i in range(3):
            scenes.render(scenes.Scene(colour, "square", 1, "large", "plain", "center"), random.Random(i)).save(folder / f"{i}.png")
    status, out, _ = _run(capsys, "eval", "--folder", tmp_path / "set", "--templates", "default", "--json", "--device", "cpu")
    report = json.loads(out)
    assert status == 0 and report["zeroshot_images"] == 6 and report["zeroshot_top1"] == 1.0
    assert "shapes_color" not in report


def test_eval_shapes_reports_the_issues_measurements_on_both_renderings(capsys, monkeypatch):
    import mmretrieval.training.shapes_eval as shapes_eval

    seen = []
    real = shapes_eval.shapes_report

    def spy(encoder, n_scenes, varied=True, **kwargs):
        seen.append(varied)
        return real(encoder, n_scenes=n_scenes, n_captions=20, varied=varied, **kwargs)

    monkeypatch.setattr(shapes_eval, "shapes_report", spy)
    for extra in ((), ("--classic",)):
        status, out, err = _run(capsys, "eval", "--shapes", "--scenes", "60", "--json", "--device", "cpu", *extra)
        assert "eval: 6/6 part (100%)" in err  # minutes of silence at the default 1,000 scenes, before
        report = json.loads(out)
        assert status == 0 and report["model"] == "builtin:shapes"
        for key in ("shapes_shape", "shapes_held_out_pairs_shape", "shapes_drawn_apart_shape",
                    "shapes_position_match@5", "shapes_attribute_match@5"):
            assert 0.0 <= report[key] <= 1.0, key
    assert seen == [True, False]


def test_models_lists_registry_architectures(capsys):
    status, out, _ = _run(capsys, "models")
    assert status == 0 and "ViT-B-32\tlaion2b_s34b_b79k" in out.splitlines()


def test_missing_labels_is_a_usage_error(capsys, red_circle):
    with pytest.raises(SystemExit) as caught:
        main(["classify", str(red_circle)])
    assert caught.value.code == 2
    assert capsys.readouterr().err.splitlines() == [  # one line, as every mmr error; the usage is --help's
        "mmr classify: error: the following arguments are required: --labels (see mmr classify --help)"]


def test_dim_truncates_a_new_collection_and_warns_once(capsys, tmp_path, tiny_model_dir, red_circle):
    collection = tmp_path / "col"
    status, _, err = _run(capsys, "ingest", red_circle.parent, "--collection", collection, "--model", tiny_model_dir,
                          "--dim", "16", "--device", "cpu", "--workers", "0")
    assert status == 0 and "mmr ingest: warning: truncating 32-d vectors to 16" in err
    status, out, _ = _run(capsys, "info", "--collection", collection, "--json")
    assert json.loads(out)["dim"] == 16
    status, out, _ = _run(capsys, "search", "a red circle", "--collection", collection, "--device", "cpu")
    assert status == 0 and out.split("\t")[1].strip() == str(red_circle)
    status, _, err = _run(capsys, "ingest", red_circle.parent, "--collection", collection, "--dim", "16")
    assert status == 2 and "--dim needs --model" in err


def test_an_unexpected_exception_is_one_line_and_verbose_shows_it(capsys, monkeypatch):
    import mmretrieval.cli.model_cmds as model_cmds

    def broken(args):
        raise ValueError("something nobody foresaw")

    monkeypatch.setattr(model_cmds, "_models", broken)
    status, out, err = _run(capsys, "models")
    assert status == 2 and err.strip() == "mmr models: error: ValueError: something nobody foresaw (run with -v for details)"
    status = main(["-v", "models"])  # the traceback, and still 2: 1 means "nothing found"
    err = capsys.readouterr().err
    assert status == 2 and "Traceback (most recent call last)" in err and 'raise ValueError("something nobody' in err
    assert err.splitlines()[-1] == "mmr models: error: ValueError: something nobody foresaw"


def test_classify_walks_folders_and_lists_in_batches_each_label_on_its_own_file(capsys, tmp_path):
    """Colours the demo model cannot miss, a bad file in the middle of a batch, a missing source: every row
    names its own file (a failure must not shift labels onto batch-mates), and the probabilities are those of
    each file embedded alone."""
    from mmretrieval.models.encoder import load_encoder
    from mmretrieval.models.prompt_templates import load_templates
    from mmretrieval.models.zeroshot import ZeroShotClassifier

    folder = tmp_path / "photos"
    (folder / "nested").mkdir(parents=True)
    colours = ["red", "blue", "green", "yellow", "purple"]
    for i, colour in enumerate(colours):
        where = folder / "nested" if i % 2 else folder
        scenes.render(scenes.Scene(colour, "circle", 1, "large", "plain", "center"), random.Random(i)).save(
            where / f"{i}-{colour}.png")
    (folder / "2-broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    extra = tmp_path / "extra.png"
    scenes.render(scenes.Scene("orange", "square", 1, "large", "plain", "center"), random.Random(9)).save(extra)
    listing = tmp_path / "list.txt"
    listing.write_text(f"{extra}\n")
    status, out, err = _run(capsys, "classify", folder, listing, tmp_path / "gone.png", "--labels",
                            ",".join(colours + ["orange"]), "--json", "--batch-size", "2", "--device", "cpu")
    assert status == 0
    rows = {row["path"]: row for row in map(json.loads, out.splitlines())}
    expected = {str(p): p.stem.split("-")[1] for p in folder.rglob("*.png")} | {str(extra): "orange"}
    assert {path: row["label"] for path, row in rows.items()} == expected
    assert "2-broken.jpg: skipped:" in err and "gone.png: skipped:" in err and "does not exist" in err
    encoder = load_encoder("builtin:shapes", device="cpu")
    classifier = ZeroShotClassifier.build(encoder, colours + ["orange"], load_templates("default"))
    for path, row in rows.items():
        alone = classifier.probabilities(encoder.encode_images([path]))[0]
        assert row["probability"] == pytest.approx(float(alone.max()), abs=1e-5)


def test_classify_an_empty_folder_says_so(capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    status, out, err = _run(capsys, "classify", tmp_path / "empty", "--labels", "a,b", "--device", "cpu")
    assert status == 1 and out == "" and "no images found" in err


def test_classify_multi_label_prints_an_image_with_no_label_over_the_threshold(capsys, red_circle):
    status, out, _ = _run(capsys, "classify", red_circle, "--labels", "red shape,blue square", "--multi-label",
                          "--threshold", "1", "--json", "--device", "cpu")
    assert status == 0 and [json.loads(line) for line in out.splitlines()] == [
        {"path": str(red_circle), "label": None, "probability": None}]


def test_every_precision_option_offers_the_precisions_the_encoder_knows():
    import argparse

    from mmretrieval.cli import build_parser
    from mmretrieval.models.settings import PRECISIONS
    from mmretrieval.ui.server import add_serve_arguments

    serve = argparse.ArgumentParser()
    add_serve_arguments(serve)
    subcommands = build_parser()._subparsers._group_actions[0].choices
    parsers = [serve] + [subcommands[name] for name in ("ingest", "classify", "eval")]
    for parser in parsers:  # the faces spell the list out (the command line must not import torch to build them)
        [option] = [action for action in parser._actions if "--precision" in action.option_strings]
        assert tuple(option.choices) == PRECISIONS


def test_train_help_shows_train_configs_defaults(capsys):
    import dataclasses
    import re

    from mmretrieval.training.config import TrainConfig

    with pytest.raises(SystemExit) as exited:
        main(["train", "--help"])
    assert exited.value.code == 0
    text = " ".join(capsys.readouterr().out.split("options:")[1].split())  # argparse wraps help lines
    for field in dataclasses.fields(TrainConfig):
        if field.name in ("out", "data", "arch", "init", "half", "scene_size"):
            continue  # described in words, or not an option
        option = "--" + field.name.replace("_", "-")
        shown = re.search(re.escape(option) + r" \S+ (.+?) \(default: ([^)]+)\)", text)
        assert shown, option
        assert shown.group(1) and shown.group(2) == str(field.default), option


def test_classify_refuses_a_lone_label_that_a_softmax_would_score_1(capsys, red_circle):
    status, out, err = _run(capsys, "classify", red_circle, "--labels", "blue square", "--device", "cpu")
    assert status == 2 and out == ""
    assert err.strip() == ("mmr classify: error: one label ('blue square') in a softmax over the labels gets "
                           "probability 1.0 on every image; pass --multi-label to score it against a neutral prompt, "
                           "or give two or more labels")
    status, out, _ = _run(capsys, "classify", red_circle, "--labels", "blue square", "--multi-label", "--json",
                          "--threshold", "0", "--device", "cpu")
    [row] = [json.loads(line) for line in out.splitlines()]
    assert status == 0 and row["label"] == "blue square" and row["probability"] < 0.5  # now it says something


def test_classify_merges_labels_that_differ_only_in_case_and_says_so(capsys, red_circle):
    status, out, err = _run(capsys, "classify", red_circle, "--labels", "red circle,blue square", "--labels",
                            " Red Circle ", "--top-k", "5", "--json", "--device", "cpu")
    rows = [json.loads(line) for line in out.splitlines()]
    assert status == 0 and [row["label"] for row in rows] == ["red circle", "blue square"]
    assert rows[0]["probability"] > 0.9  # not split with its twin at 0.5 each
    assert "mmr classify: warning: labels 'red circle' and 'Red Circle' differ only in case: kept 'red circle'" in err


def test_label_and_template_files_with_a_byte_order_mark(capsys, red_circle, tmp_path):
    from mmretrieval.models.prompt_templates import load_templates

    labels, templates = tmp_path / "labels.txt", tmp_path / "templates.txt"
    labels.write_text("red circle\nblue square\n", encoding="utf-8-sig")  # as Notepad saves UTF-8
    templates.write_text("a photo of a {}.\n", encoding="utf-8-sig")
    assert load_templates(str(templates)) == ("a photo of a {}.",)
    status, out, _ = _run(capsys, "classify", red_circle, "--labels", f"@{labels}", "--templates", templates,
                          "-k", "2", "--json", "--device", "cpu")  # -k as in search (a walkthrough's first try)
    assert status == 0 and [json.loads(line)["label"] for line in out.splitlines()] == ["red circle", "blue square"]


def test_one_template_of_your_own_is_taken_as_a_file_of_it_is(capsys, red_circle, tmp_path):
    """--templates "a drawing of a {}." was an unknown template set on the command line, though the API took it."""
    from mmretrieval.models.prompt_templates import load_templates

    template = "a drawing of a {}."
    (tmp_path / "one.txt").write_text(template + "\n")
    assert load_templates(template) == (template,)
    runs = [_run(capsys, "classify", red_circle, "--labels", "red circle,blue square", "--templates", given,
                 "--json", "--device", "cpu") for given in (template, tmp_path / "one.txt")]
    assert runs[0][0] == 0 and runs[0][1] == runs[1][1]
    status, _, err = _run(capsys, "classify", red_circle, "--labels", "a,b", "--templates", "a drawing {", "--device",
                          "cpu")
    assert status == 2 and "exactly one '{}'" in err


@pytest.mark.parametrize(("argv", "message"), [
    (["eval", "--scenes", "0"], "mmr eval: error: argument --scenes: must be at least 20, got 0"),
    (["eval", "--scenes", "-5"], "mmr eval: error: argument --scenes: must be at least 20, got -5"),
    (["train", "--steps", "0"], "mmr train: error: --steps must be a whole number of at least 1"),
    (["train", "--batch-size", "0"], "mmr train: error: --batch-size must be a whole number of at least 2"),
    (["train", "--lr", "-1"], "mmr train: error: --lr must be a number above 0, got -1.0"),
    (["train", "--workers", "-1"], "mmr train: error: --workers must be a whole number of at least 0"),
    (["train", "--classic-share", "2"], "mmr train: error: --classic-share must be a share from 0 to 1, got 2.0"),
    (["train", "--eval-every", "-5"], "mmr train: error: --eval-every must be a whole number of at least 0"),
    (["train", "--unrelated", "-3"], "mmr train: error: --unrelated must be a whole number of at least 0"),
    (["train", "--warmup-steps", "-1"], "mmr train: error: --warmup-steps must be a whole number of at least 0"),
    (["train", "--arch", "ViT-B-32", "--init", "builtin:shapes"],
     "mmr train: error: --arch ViT-B-32 and --init builtin:shapes both given: a fine-tune keeps the architecture"),
    (["train", "--data", "captions.csv", "--grey-rate", "0.5"],  # it was ignored in silence
     "mmr train: error: --grey-rate applies to the generated scenes only, not to the captioned set /"),  # absolute
    (["blend", "a", "b", "--keep-init", "1.5"], "mmr blend: error: argument --keep-init: must be a probability"),
])
def test_numbers_out_of_range_are_one_line_and_exit_2(capsys, tmp_path, argv, message):
    if argv[0] == "train":  # the option under test last: it wins over these (a run one tiny step long, were it let by)
        argv = ["train", "--steps", "1", "--batch-size", "2", "--workers", "0", "--device", "cpu", "--eval-every", "0",
                "--warmup-steps", "1", *argv[1:]]
    if argv[0] in ("train", "blend"):
        argv = [*argv, "--out", tmp_path / "m"]
    try:
        status = main([str(a) for a in argv])
    except SystemExit as exited:  # argparse's own refusals
        status = exited.code
    err = capsys.readouterr().err
    assert status == 2 and len(err.splitlines()) == 1 and err.startswith(message), err
    assert not (tmp_path / "m").exists()


def test_eval_says_a_folder_that_is_a_file_is_a_file(capsys, tmp_path):
    captions = tmp_path / "captions.csv"
    captions.write_text("path,caption\n")
    status, _, err = _run(capsys, "eval", "--folder", captions, "--device", "cpu")
    assert status == 2 and f"{captions} is a file, not a labelled folder" in err and "does not exist" not in err


def test_train_and_blend_refuse_an_out_folder_with_other_files_unless_forced(capsys, tmp_path, tiny_model_dir):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    quick = ["--steps", "1", "--batch-size", "2", "--workers", "0", "--device", "cpu", "--eval-every", "0",
             "--warmup-steps", "1", "--init", tiny_model_dir]
    status, _, err = _run(capsys, "train", "--out", out, *quick)
    assert status == 2 and "pass --force to write the model beside them" in err
    status, _, err = _run(capsys, "blend", tiny_model_dir, tiny_model_dir, "--keep-init", "0.5", "--out", out)
    assert status == 2 and "pass --force to write the model beside them" in err
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    assert _run(capsys, "train", "--out", out, *quick, "--force")[0] == 0
    assert (out / "notes.txt").read_text() == "my notes" and (out / "train_log.jsonl").is_file()
    assert _run(capsys, "blend", out, tiny_model_dir, "--keep-init", "0.5", "--out", tmp_path / "blend")[0] == 0
    status, _, err = _run(capsys, "blend", out, tiny_model_dir, "--keep-init", "0.5", "--out", out, "--force")
    assert status == 2 and "that it would be made from" in err  # --force never writes over an input
