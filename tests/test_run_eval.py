"""Accuracy without quantizing (issue 27, items 3/4): `onnxgate run REF --eval DATA` measures top-1/top-5 of PyTorch,
the exported model and each shipped variant on DATA — against its true labels, or as agreement with PyTorch when it
has none — and the INT8-only flags (--calib, --method, --max-accuracy-drop, --max-error) without --quantize are exit
2 naming the flag and the fix, never dropped silently.

The model is the built-in digits CNN (``onnxgate.examples.digits``, trained once and cached); DATA is its held-out
split written as an .npz with the true labels under ``labels``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("sklearn")
pytest.importorskip("torch")

from onnxgate.cli.main import main  # noqa: E402
from onnxgate.configure import ExportFlags, RunFlags, run_config  # noqa: E402
from onnxgate.errors import BadInputError  # noqa: E402

REF = "onnxgate.examples.digits:trained_digits_cnn"
SHAPE = ["-i", "x:Bx1x8x8:float32", "--dim", "B=1..512@4"]
SCHEMA = json.loads((Path(__file__).resolve().parents[1] / "docs" / "schemas" / "report.schema.json").read_text())


@pytest.fixture(scope="module")
def digits_npz(tmp_path_factory):
    """(labelled .npz, unlabelled .npz, true labels) of the digits test split."""
    from onnxgate.examples import digits

    _, _, x_test, y_test = digits.digits_split()
    root = tmp_path_factory.mktemp("digits")
    np.savez(root / "test.npz", x=x_test, labels=y_test)
    np.savez(root / "unlabelled.npz", x=x_test[:100])
    return root / "test.npz", root / "unlabelled.npz", y_test


def _run(args, capsys) -> tuple[int, dict]:
    code = main(["run", REF, *SHAPE, "--bench", "none", "--no-bundle", "--force", "--json", *args])
    return code, json.loads(capsys.readouterr().out)


def test_eval_without_quantize_reports_pytorch_onnx_and_optimized_top1_on_true_labels(digits_npz, tmp_path, capsys):
    labelled, _, y_test = digits_npz
    code, env = _run(["--eval", str(labelled), "-o", str(tmp_path / "out")], capsys)
    assert code == 0, env
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    acc = report["stages"]["accuracy"]
    assert set(acc) == {"pytorch", "onnxruntime", "optimized"}
    for entry in acc.values():
        assert entry["against"] == "labels" and entry["samples"] == len(y_test) == 449
        assert entry["top5"] is not None and entry["top5"] >= entry["top1"]
    assert acc["pytorch"]["top1"] > 0.95  # a trained model on true labels, not agreement with itself
    one_sample = 1 / len(y_test)
    assert abs(acc["onnxruntime"]["top1"] - acc["pytorch"]["top1"]) <= one_sample + 1e-12
    assert abs(acc["optimized"]["top1"] - acc["pytorch"]["top1"]) <= one_sample + 1e-12
    assert "quantize" not in report["stages"]
    assert env["result"]["stages"]["accuracy"] == acc  # the --json envelope carries it too
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(report, SCHEMA)


def test_top1_is_measured_against_the_labels_not_against_pytorch(digits_npz, tmp_path, capsys):
    """Labels shifted by one class: the true top-1 collapses, so it is not agreement with PyTorch."""
    labelled, _, y_test = digits_npz
    shifted = tmp_path / "shifted.npz"
    with np.load(labelled) as d:
        np.savez(shifted, x=d["x"], labels=(y_test + 1) % 10)
    code, _ = _run(["--eval", str(shifted), "--no-optimize", "-o", str(tmp_path / "out")], capsys)
    assert code == 0
    acc = json.loads((tmp_path / "out" / "report.json").read_text())["stages"]["accuracy"]
    assert acc["pytorch"]["top1"] < 0.2 and acc["onnxruntime"]["top1"] < 0.2


def test_eval_without_labels_reports_agreement_with_pytorch(digits_npz, tmp_path, capsys):
    _, unlabelled, _ = digits_npz
    code, _ = _run(["--eval", str(unlabelled), "--no-optimize", "-o", str(tmp_path / "out")], capsys)
    assert code == 0
    acc = json.loads((tmp_path / "out" / "report.json").read_text())["stages"]["accuracy"]
    assert set(acc) == {"onnxruntime"}  # PyTorch is the reference: no top-1 of its own without labels
    assert acc["onnxruntime"]["against"] == "pytorch" and acc["onnxruntime"]["top1"] == 1.0
    assert acc["onnxruntime"]["samples"] == 100


@pytest.mark.parametrize("flags, named", [
    ({"calib": "calib.npz"}, "--calib"),
    ({"max_accuracy_drop": 1.0}, "--max-accuracy-drop"),
    ({"method": "entropy"}, "--method"),
    ({"max_error": 0.1, "eval_data": "eval.npz"}, "--max-error"),
    ({"preprocess": "crop=224"}, "--preprocess"),
])
def test_int8_flags_without_quantize_are_refused_naming_the_flag_and_the_fix(flags, named):
    with pytest.raises(BadInputError) as exc:
        run_config(REF, RunFlags(ExportFlags(), **flags))
    assert named in exc.value.message and "would be ignored" in exc.value.message
    assert "--quantize" in exc.value.message + exc.value.hint


def test_int8_flags_with_quantize_and_eval_alone_are_accepted():
    job = run_config(REF, RunFlags(ExportFlags(), quantize="static", calib="c.npz", max_accuracy_drop=1.0))
    assert job.quantize.calib == "c.npz" and job.quantize.max_accuracy_drop == 1.0
    job = run_config(REF, RunFlags(ExportFlags(), eval_data="e.npz"))
    assert job.quantize is None and job.eval_data == "e.npz"


def test_calib_without_quantize_is_exit_2_on_the_command_line(digits_npz, tmp_path, capsys):
    labelled, _, _ = digits_npz
    code, env = _run(["--eval", str(labelled), "--calib", str(labelled), "-o", str(tmp_path / "out")], capsys)
    assert code == 2 and not env["ok"]
    assert "--calib" in env["reason"] and "--quantize" in env["hint"]
    assert not (tmp_path / "out").exists()  # refused before any model is loaded


COLOUR_MODULE = '''
import torch


class Colour(torch.nn.Module):
    """x[B,3,H,W] -> mean per channel -> 10 * identity -> logits for red, green, blue: the strongest channel wins."""

    def __init__(self):
        super().__init__()
        self.head = torch.nn.Linear(3, 3, bias=False)
        with torch.no_grad():
            self.head.weight.copy_(torch.eye(3) * 10)

    def forward(self, x):
        return self.head(x.mean(dim=(2, 3)))


def build():
    return Colour().eval()
'''


def test_eval_on_an_image_folder_labels_samples_by_class_folder_name(tmp_path, capsys, monkeypatch):
    """Class folders named as people name them ("Red", "green", "BLUE") are matched to --labels by name: the true
    top-1 is 100%, where numbering the folders in sorted order would score 0%."""
    from PIL import Image

    (tmp_path / "colourmod.py").write_text(COLOUR_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, (str(tmp_path), os.environ.get("PYTHONPATH")))))
    colours = {"red": (200, 30, 40), "green": (30, 190, 50), "blue": (20, 40, 210)}
    rng = np.random.default_rng(0)
    for name in ("Red", "green", "BLUE"):
        (tmp_path / "photos" / name).mkdir(parents=True)
        for i in range(10):
            pixels = np.clip(np.array(colours[name.lower()]) + rng.integers(-25, 25, (8, 8, 3)), 0, 255)
            Image.fromarray(pixels.astype(np.uint8)).save(tmp_path / "photos" / name / f"{i}.png")
    (tmp_path / "labels.txt").write_text("red\ngreen\nblue\n")
    code = main(["run", "colourmod:build", "-i", "x:Bx3x8x8:float32", "--dim", "B=1..64@4", "--labels",
                 str(tmp_path / "labels.txt"), "--eval", str(tmp_path / "photos"), "--preprocess", "crop=8",
                 "--bench", "none", "--no-bundle", "--no-optimize", "-o", str(tmp_path / "out"), "--json"])
    acc = json.loads(capsys.readouterr().out)["result"]["stages"]["accuracy"]
    assert code == 0
    assert acc["pytorch"]["top1"] == acc["onnxruntime"]["top1"] == 1.0 and acc["pytorch"]["samples"] == 30
    assert acc["pytorch"]["against"] == "labels" and acc["pytorch"]["top5"] is None  # 3 classes: no top-5
