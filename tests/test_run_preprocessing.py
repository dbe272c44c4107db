"""``onnxgate run`` proves image bytes to label on its own image DATA (issue 27 item 1): the preprocessing recorded
in the model (or given with --preprocess, then recorded) goes through the server's implementation + onnxruntime and
through torchvision's transforms + PyTorch eager on the run's photos; the figures are in the report, the claim and
the bundle, and a recorded spec that is not the model's fails the run with exit 4."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")
from torch import nn  # noqa: E402

import onnxgate  # noqa: E402
from onnxgate.sources import LoadedModel  # noqa: E402
from onnxgate.spec import ExportConfig, parse_input  # noqa: E402

SPEC = "resize=40,crop=32,mean=0.485/0.456/0.406,std=0.229/0.224/0.225"


class Tiny(nn.Module):
    """A small image classifier (random weights) whose labels depend on the pixels."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                                  nn.Linear(32, 10))

    def forward(self, x):
        return self.body(x)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    import skimage.data
    from PIL import Image

    folder = tmp_path_factory.mktemp("photos")
    for name in ("rocket", "chelsea", "coffee", "astronaut"):
        buffer = io.BytesIO()
        Image.fromarray(getattr(skimage.data, name)()).save(buffer, format="JPEG", quality=92)
        (folder / f"{name}.jpg").write_bytes(buffer.getvalue())
    return folder


def _run(tmp_path, photos, *, meta=None, preprocess=SPEC):
    config = ExportConfig(inputs=(parse_input("x:Bx3x32x32:float32"),), meta=meta or {})
    return onnxgate.run(LoadedModel(Tiny().eval(), "tests:Tiny"), tmp_path / "out", config=config, data=[str(photos)], bench=None,
                        optimize=False, preprocess=preprocess)


def test_run_proves_the_given_preprocessing_on_its_photos_and_records_it(tmp_path, photos):
    report = _run(tmp_path, photos)
    assert report.exit_code == 0, report.reason
    proof = report.stages["preprocessing"]
    assert proof["images"] == 4 and proof["passed"] and proof["top1_agree"] == 4, proof
    assert proof["max_pixel_error"] <= proof["pixel_bound"] and proof["sources"] == [str(photos)]
    manifest = json.loads((tmp_path / "out" / "bundle" / "manifest.json").read_text())
    claimed = json.dumps(manifest)
    assert "resize=40,crop=32" in claimed and "torchvision transforms + PyTorch eager" in claimed  # the claim carries the proof
    html = (tmp_path / "out" / "report.html").read_text()
    assert "Preprocessing, image bytes to label" in html


def test_a_recorded_spec_that_is_not_the_models_fails_the_run(tmp_path, photos):
    wrong = SPEC.replace("mean=0.485/0.456/0.406", "mean=0/0/0")  # what the server would run
    report = _run(tmp_path, photos, meta={"preprocess": wrong})
    assert report.exit_code == 4, report.reason
    proof = report.stages["preprocessing"]
    assert not proof["passed"] and proof["max_pixel_error"] > proof["pixel_bound"]
    from onnxgate.preprocess import Preprocess

    assert Preprocess.parse(proof["spec"]) == Preprocess.parse(wrong)  # the server's, against the model's
    assert Preprocess.parse(proof["reference_spec"]) == Preprocess.parse(SPEC)
    assert "preprocessing" in report.reason
