"""Meaningful accuracy: image-folder classes are matched to the model's labels by name, and a top-1 budget that
cannot judge anything (too few samples for its resolution, an FP32 model near chance) fails with that reason.

The model is a colour classifier built with onnx.helper (mean of each channel -> MatMul -> logits for "red",
"green", "blue"), so the true top-1 on a folder of coloured images is known: 100% when the folders are matched by
name, 0% when they are numbered in sorted order ("BLUE" < "Red" < "green")."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper
from PIL import Image

from onnxgate.cli.main import main
from onnxgate.errors import BadInputError, ExitCode
from onnxgate.outcome import judge
from onnxgate.transform import optimize, quantize
from onnxgate.transform.budget import Budget, accuracy_gate
from onnxgate.verify.inputs import load_feeds, match_classes
from onnxgate.spec import parse_input

LABELS = ["red", "green", "blue"]
COLOURS = {"red": (200, 30, 40), "green": (30, 190, 50), "blue": (20, 40, 210)}


def colour_model(path, *, labels=LABELS, weights=None) -> str:
    """x[B,3,8,8] -> ReduceMean(H, W) -> MatMul(W) -> logits[B,3]; W = identity: the strongest channel wins."""
    w = np.eye(3, dtype=np.float32) * 10 if weights is None else weights
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["x"], ["m"], axes=[2, 3], keepdims=0, name="mean"),
         helper.make_node("MatMul", ["m", "w"], ["logits"], name="head")], "colours",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["B", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["B", 3])],
        [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    props = {"onnxgate.inputs": json.dumps([parse_input("x:Bx3x8x8:float32").to_dict()]),
             "onnxgate.dims": '{"B": {"name": "B", "min": 1, "max": 64, "example": 4}}', "preprocess": "crop=8"}
    if labels is not None:
        props["labels"] = json.dumps(labels)
    helper.set_model_props(model, props)
    onnx.save(model, str(path))
    return str(path)


def photo_folder(root, per_class: int, names=("Red", "green", "BLUE")):
    """Class folders named as people name them (case varies), each with ``per_class`` noisy coloured images."""
    rng = np.random.default_rng(0)
    for name in names:
        folder = root / name
        folder.mkdir(parents=True)
        colour = np.array(COLOURS.get(name.lower(), (120, 120, 120)))
        for i in range(per_class):
            pixels = np.clip(colour + rng.integers(-25, 25, (8, 8, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("gate")
    return {"model": colour_model(root / "colours.onnx"), "big": photo_folder(root / "big", 34),
            "small": photo_folder(root / "small", 2), "root": root}


def test_class_folders_are_matched_to_the_labels_by_name_and_report_the_true_top1(folders, tmp_path):
    report = quantize(folders["model"], tmp_path / "int8.onnx", calib=folders["big"], eval_data=folders["big"])
    assert report.passed, report.summary()
    assert report.classes == {"BLUE": 2, "Red": 0, "green": 1}  # not 0, 1, 2 in sorted order
    assert report.fp32_accuracy == 1.0 and report.gate.samples == 102 and report.gate.problem is None
    assert report.budget.max_accuracy_drop == 1.0  # labelled data: the default budget, which 102 samples resolve


def test_too_few_samples_for_the_budget_fails_the_gate_with_that_reason(folders, tmp_path):
    report = quantize(folders["model"], tmp_path / "int8.onnx", calib=folders["small"], eval_data=folders["small"])
    assert report.fp32_accuracy == 1.0 and not report.passed and report.output is None
    assert "6 labelled samples" in report.final.miss and "at least 100" in report.final.miss
    assert len(report.steps) == 1  # nothing to search: keeping nodes in float cannot add samples
    outcome = judge(report)
    assert outcome.exit_code == ExitCode.ACCURACY_BUDGET and "cannot judge" in outcome.reason
    assert "enough samples" in outcome.hint
    # a coarser budget is resolved by fewer samples: 6 samples step 16.7 points, within a 20-point budget
    loose = quantize(folders["model"], tmp_path / "loose.onnx", calib=folders["small"], eval_data=folders["small"],
                     max_accuracy_drop=20.0)
    assert loose.passed, loose.summary()


def test_an_fp32_model_at_chance_fails_the_gate_instead_of_passing_at_zero_vs_zero(folders, tmp_path):
    shifted = np.roll(np.eye(3, dtype=np.float32) * 10, 1, axis=1)  # answers the next colour: 0% correct
    model = colour_model(tmp_path / "wrong.onnx", weights=shifted)
    report = quantize(model, tmp_path / "int8.onnx", calib=folders["big"], eval_data=folders["big"])
    assert report.fp32_accuracy == 0.0 and not report.passed
    assert "near chance" in report.final.miss and "0.00%" in report.final.miss
    assert judge(report).exit_code == ExitCode.ACCURACY_BUDGET
    assert report.to_dict()["accuracy_gate"]["problem"] == report.gate.problem


def test_gate_rules():
    labels = np.repeat(np.arange(4), 30)  # 120 samples, 4 balanced classes, of a 1000-class model
    gate = accuracy_gate(Budget(1.0), labels, 0.75, 1000)
    assert gate.problem is None and gate.chance == 0.25 and gate.required_samples == 100
    assert "near chance" in accuracy_gate(Budget(1.0), labels, 0.30, 1000).problem  # a constant answer scores 25%
    assert "every evaluation sample" in accuracy_gate(Budget(5.0), np.zeros(40), 0.9, 10).problem
    assert accuracy_gate(Budget(max_error=1.0), labels, 0.0, 1000) is None  # no top-1 budget: nothing to gate
    assert accuracy_gate(Budget(0.5), labels, 0.9, 1000).required_samples == 200
    binary = np.tile([0, 1], 100)
    assert accuracy_gate(Budget(1.0), binary, 0.70, 2).problem is None
    assert "near chance" in accuracy_gate(Budget(1.0), binary, 0.55, 2).problem


def test_match_classes():
    names = ["tench", "Egyptian cat", "crane", "crane", "espresso"]
    assert match_classes(["egyptian_cat", "Espresso", "0"], names, None)[0] == {"egyptian_cat": 1, "Espresso": 4,
                                                                                 "0": 0}
    with pytest.raises(BadInputError, match="more than one"):
        match_classes(["crane"], names, None)
    with pytest.raises(BadInputError, match=r"2 of 3 class folder\(s\) match none .*'cat', 'dog'"):
        match_classes(["cat", "dog", "tench"], names, None)
    assert match_classes(["3", "1"], None, 5)[0] == {"3": 3, "1": 1}
    mapping, note = match_classes(["n01", "n02"], None, 2)  # as many folders as classes: ImageFolder's order
    assert mapping == {"n01": 0, "n02": 1} and "sorted order" in note
    with pytest.raises(BadInputError, match="records no class labels"):
        match_classes(["cat", "dog"], None, 1000)


def test_unmatched_folders_are_a_bad_input_naming_them(folders, tmp_path, capsys):
    pets = photo_folder(tmp_path / "pets", 2, names=("cat", "dog"))
    with pytest.raises(BadInputError, match="'cat', 'dog'"):
        quantize(folders["model"], tmp_path / "int8.onnx", calib=pets, eval_data=pets)
    code = main(["quantize", folders["model"], "-o", str(tmp_path / "cli.onnx"), "--eval", str(pets), "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert code == ExitCode.BAD_INPUT and "match none of the model's 3 labels" in doc["error"]["message"]


def test_cli_labels_file_names_the_classes_of_a_model_that_records_none(folders, tmp_path, capsys):
    model = colour_model(tmp_path / "unlabelled.onnx", labels=None)
    (tmp_path / "labels.txt").write_text("red\ngreen\nblue\n")
    out = tmp_path / "int8.onnx"
    code = main(["quantize", model, "-o", str(out), "--calib", str(folders["big"]), "--eval", str(folders["big"]),
                 "--labels", str(tmp_path / "labels.txt"), "--json"])
    data = json.loads(capsys.readouterr().out)["result"]
    assert code == 0 and data["fp32_accuracy"] == 1.0 and data["accuracy_gate"]["samples"] == 102


def test_verify_and_optimize_read_image_folders_as_quantize_does(folders, tmp_path):
    meta = {p.key: p.value for p in onnx.load(folders["model"]).metadata_props}
    feeds = load_feeds([str(folders["small"])], [parse_input("x:Bx3x8x8:float32")], meta=meta)
    assert sum(len(f["x"]) for f in feeds) == 6  # class folders are just images where no labels are needed
    report = optimize(folders["model"], tmp_path / "opt.onnx", feeds=str(folders["small"]), preprocess="crop=8")
    assert report.passed and str(folders["small"]) in report.feeds
