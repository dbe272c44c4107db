"""`onnxgate deploy`: one artifact per target, each verified through the same parity code as the ONNX file.

A tiny CNN (C == H == W, so a wrong layout gives wrong numbers rather than a shape error) goes through the real
pipeline with a deploy stage: real OpenVINO, real onnxruntime (ORT format), real coremltools; TensorRT is skipped
without a CUDA device. A tampered OpenVINO .bin must fail verification naming the target; a tampered artifact in
the bundle must be caught by the bundle's checksums. TFLite (a converter environment with TensorFlow) is in
test_deploy_tflite.py, marked slow.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("openvino")

from helpers import tiny_config, tiny_loaded  # noqa: E402

from onnxgate.deploy.model import (FAILED, NOT_CONVERTED, PASSED, SKIPPED, UNVERIFIED, DeployedArtifact,  # noqa: E402
                                   DeployReport, parse_targets)
from onnxgate.errors import BadInputError, ExitCode  # noqa: E402
from onnxgate.outcome import judge  # noqa: E402


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    from onnxgate.pipeline import run

    out = tmp_path_factory.mktemp("deploy") / "out"
    report = run(tiny_loaded(), out, config=tiny_config(), bench=None, optimize=False,
                 deploy=("openvino", "ort-mobile", "tensorrt", "coreml"))
    return report, out


def rows(report) -> dict[str, dict]:
    return {f"{a['target']}/{a['variant']}": a for a in report.stages["deploy"]["artifacts"]}


def test_every_executable_target_is_verified_against_pytorch(deployed):
    report, out = deployed
    assert report.verdict == "pass", report.reason
    found = rows(report)
    for key in ("openvino/fp32", "openvino/fp16", "ort-mobile/fp32"):
        row = found[key]
        assert row["status"] == PASSED, row
        assert row["feeds"] >= 4 and row["max_abs_err"] is not None and row["latency_ms"] > 0
        assert row["shapes"].endswith("with B 1..8"), row["shapes"]  # verified over the claimed domain
        assert row["parity"]["reference"] == "pytorch" and row["parity"]["passed"]
        for rel in row["files"]:
            assert (out / "bundle" / "targets" / rel).is_file()
    # the precision each runs at is stated, and the FP16 IR is judged with a reduced-precision tolerance
    assert "INFERENCE_PRECISION_HINT=f32" in found["openvino/fp32"]["runtime"]
    assert "INFERENCE_PRECISION_HINT=" in found["openvino/fp16"]["runtime"]
    assert found["openvino/fp16"]["tolerance"] and found["openvino/fp32"]["tolerance"] is None
    assert any(f.endswith(".config") for f in found["ort-mobile/fp32"]["files"])


def test_the_report_carries_the_per_target_table(deployed):
    jsonschema = pytest.importorskip("jsonschema")
    _, out = deployed
    schema = json.loads((Path(__file__).parents[1] / "docs" / "schemas" / "report.schema.json").read_text())
    jsonschema.validate(json.loads((out / "report.json").read_text()), schema)
    html = (out / "report.html").read_text()
    assert "<h2>Deploy targets</h2>" in html and "INFERENCE_PRECISION_HINT=f32" in html
    assert "converted, not numerically verified" in html


def test_targets_that_cannot_run_here_are_never_passed(deployed):
    from onnxgate.runtimes.tensorrt import cuda_devices

    report, out = deployed
    found = rows(report)
    coreml = found["coreml/mlprogram"]
    assert coreml["status"] == UNVERIFIED and coreml["verdict"] == "converted, not numerically verified"
    assert (out / "bundle" / "targets" / "coreml" / "model.mlpackage").is_dir()
    if not cuda_devices()[0]:
        trt = found["tensorrt/"]
        assert trt["status"] == SKIPPED and "CUDA" in trt["reason"] and not trt["files"]


def test_bundle_manifest_records_targets_and_catches_a_tampered_artifact(deployed, tmp_path):
    import shutil

    from onnxgate.bundle import verify_bundle

    report, out = deployed
    manifest = json.loads((out / "bundle" / "manifest.json").read_text())
    assert "targets/openvino/model.bin" in manifest["files"]
    verdicts = {(a["target"], a["variant"]): a["verdict"] for a in manifest["targets"]["artifacts"]}
    assert verdicts[("openvino", "fp32")] == "passed"
    assert verify_bundle(out / "bundle").passed
    copy = tmp_path / "bundle"
    shutil.copytree(out / "bundle", copy)
    with open(copy / "targets" / "ort-mobile" / "model.ort", "r+b") as fh:
        fh.seek(-64, 2)
        fh.write(b"\x00" * 64)
    result = verify_bundle(copy)
    assert result.status == "tampered" and "targets/ort-mobile/model.ort" in result.reason
    assert judge(result).exit_code == ExitCode.INTEGRITY


def test_a_tampered_openvino_bin_fails_verification_naming_the_target(deployed, tmp_path):
    """A broken conversion: the IR's weights changed after conversion. The parity check (not a checksum) fails."""
    import shutil

    from onnxgate.deploy.check import Built, Context, verify_built
    from onnxgate.runtimes.openvino import OpenVinoRunner
    from onnxgate.runtimes.torch_runner import TorchRunner
    from onnxgate.spec import Dim, parse_input

    report, out = deployed
    for name in ("model.xml", "model.bin"):
        shutil.copyfile(out / "bundle" / "targets" / "openvino" / name, tmp_path / name)
    loaded = tiny_loaded()
    raw = bytearray((tmp_path / "model.bin").read_bytes())
    conv = loaded.module.conv.weight.detach().numpy().astype(np.float32).tobytes()
    at = raw.find(conv)
    assert at >= 0, "the conv's weights are stored as they are in the FP32 IR"
    raw[at:at + len(conv)] = (np.frombuffer(conv, dtype=np.float32) * 1.5).tobytes()  # same size, other numbers
    (tmp_path / "model.bin").write_bytes(bytes(raw))
    ctx = Context(tmp_path / "model.onnx", tmp_path, [parse_input("x:Bx4x4x4:float32")], {"B": Dim("B", 1, 8, 2)},
                  TorchRunner(loaded.module, input_names=["x"], output_names=["output"]), loaded=loaded,
                  measure_latency=False)
    built = Built("fp32", [tmp_path / "model.xml", tmp_path / "model.bin"], "fp32", "fp32", "OpenVINO",
                  lambda: OpenVinoRunner(tmp_path / "model.xml", precision_hint="f32"))
    row = verify_built(built, ctx, "openvino")
    assert row.status == FAILED and "differs from pytorch" in row.reason
    outcome = judge(DeployReport("tiny", "model.onnx", "PyTorch", str(tmp_path), ["openvino"], [row]))
    assert outcome.exit_code == ExitCode.PARITY_FAILED
    assert outcome.reason.startswith("deploy target openvino (fp32): differs from pytorch")


def test_the_judge_never_fails_skipped_or_structure_only_and_fails_the_rest():
    def report(*statuses):
        return DeployReport("m", "m.onnx", "PyTorch", "out", ["x"],
                            [DeployedArtifact(f"t{i}", "v", s, reason="why") for i, s in enumerate(statuses)])

    assert judge(report(PASSED, SKIPPED, UNVERIFIED)).passed
    assert judge(report(PASSED, NOT_CONVERTED)).exit_code == ExitCode.RUNTIME_INCOMPATIBLE
    assert judge(report(NOT_CONVERTED, FAILED)).exit_code == ExitCode.PARITY_FAILED  # wrong numbers are worse
    assert "deploy target t1 (v)" in judge(report(PASSED, FAILED)).reason


def test_targets_parse_with_aliases_and_refuse_unknown_names():
    assert parse_targets("OpenVINO, ort,litert,trt") == ("openvino", "ort-mobile", "tflite", "tensorrt")
    with pytest.raises(BadInputError, match="Did you mean 'openvino'"):
        parse_targets("openvno")
    with pytest.raises(BadInputError, match="no deploy target"):
        parse_targets(" , ")


def test_toml_deploy_key_is_checked(tmp_path):
    from onnxgate.configure import load_toml

    good = tmp_path / "good.toml"
    good.write_text('ref = "torchvision:resnet18"\ndeploy = ["openvino", "ort-mobile"]\n')
    assert load_toml(good).deploy == ("openvino", "ort-mobile")
    bad = tmp_path / "bad.toml"
    bad.write_text('ref = "torchvision:resnet18"\ndeploy = ["openvino", "tflight"]\n')
    with pytest.raises(BadInputError, match="'deploy'.*tflight"):
        load_toml(bad)


def test_a_missing_extra_is_exit_8_naming_it():
    code = ("import sys; sys.modules['coremltools'] = None\n"
            "from onnxgate.deploy.api import check_extras\n"
            "from onnxgate.errors import OnnxgateError\n"
            "try:\n    check_extras(('openvino', 'coreml'))\n"
            "except OnnxgateError as e:\n    print(int(e.exit_code), e.hint)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.startswith("8 ") and "onnxgate[coreml]" in out


def test_cli_deploys_a_bundle_against_its_golden_outputs(deployed, tmp_path):
    import shutil

    _, out = deployed
    bundle = tmp_path / "bundle"
    shutil.copytree(out / "bundle", bundle)
    onnxgate = str(Path(sys.executable).with_name("onnxgate"))
    proc = subprocess.run([onnxgate, "deploy", str(bundle), "--to", "ort-mobile,coreml", "--json"],
                          capture_output=True, text=True)
    doc = json.loads(proc.stdout)
    assert proc.returncode == 0 and doc["ok"], proc.stderr[-2000:]
    arts = {a["target"]: a for a in doc["result"]["artifacts"]}
    assert arts["ort-mobile"]["status"] == PASSED and "golden feed only" in arts["ort-mobile"]["shapes"]
    assert arts["coreml"]["status"] == SKIPPED and "PyTorch" in arts["coreml"]["reason"]
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert [a["target"] for a in manifest["targets"]["artifacts"]] == ["ort-mobile", "coreml"]
    assert not (bundle / "targets" / "openvino").exists()  # the earlier targets were replaced, not mixed in
    bad = subprocess.run([onnxgate, "deploy", str(bundle), "--to", "onnx2"], capture_output=True, text=True)
    assert bad.returncode == ExitCode.BAD_INPUT and "not a deploy target" in bad.stderr
