"""TFLite: onnx2tf converts the verified ONNX file in its own converter environment (created on first use, about
1.5 GB and half a minute from a package mirror, then cached), LiteRT's interpreter verifies the artifact against
PyTorch. Marked slow for that first-use install; skipped when the `tflite` extra (ai-edge-litert) is absent.
The tiny CNN has C == H == W, so feeding the NHWC file an NCHW array is not a shape error but wrong numbers."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
pytest.importorskip("ai_edge_litert", reason="the tflite extra (ai-edge-litert) is not installed")

from onnxgate.deploy.model import FAILED, PASSED  # noqa: E402
from onnxgate.errors import ExitCode  # noqa: E402
from onnxgate.outcome import judge  # noqa: E402

from helpers import tiny_config, tiny_loaded  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    from onnxgate.pipeline import run

    out = tmp_path_factory.mktemp("tflite") / "out"
    report = run(tiny_loaded(), out, config=tiny_config(), bench=None, optimize=False, deploy=("tflite",))
    return report, out


def test_tflite_artifacts_are_verified_in_litert_with_their_layout_stated(deployed):
    report, out = deployed
    assert report.verdict == "pass", report.reason
    arts = {a["variant"]: a for a in report.stages["deploy"]["artifacts"]}
    assert set(arts) == {"fp32", "fp16"}
    for variant, row in arts.items():
        assert row["status"] == PASSED, row
        assert "x: NCHW -> NHWC" in row["layout"]
        assert row["shapes"] == "x Bx4x4x4 with B 1..8"  # onnx2tf keeps the batch dynamic: probed like ONNX
        assert (out / "bundle" / "targets" / row["files"][0]).is_file()
    assert arts["fp16"]["tolerance"] and arts["fp32"]["tolerance"] is None


def test_a_wrong_layout_tflite_input_fails_verification_naming_the_target(deployed):
    from onnxgate.deploy.check import Built, Context, verify_built
    from onnxgate.deploy.model import DeployReport
    from onnxgate.runtimes.litert import LiteRtRunner
    from onnxgate.runtimes.torch_runner import TorchRunner
    from onnxgate.spec import Dim, parse_input

    report, out = deployed
    path = out / "bundle" / "targets" / "tflite" / "model.tflite"
    loaded = tiny_loaded()
    ctx = Context(out / "model.onnx", out / "bundle" / "targets", [parse_input("x:Bx4x4x4:float32")],
                  {"B": Dim("B", 1, 8, 2)}, TorchRunner(loaded.module, input_names=["x"], output_names=["output"]),
                  loaded=loaded, measure_latency=False)
    # the file takes NHWC; this runner feeds it the NCHW array as it is (no layout given)
    built = Built("fp32", [path], "fp32", "fp32", "LiteRT", lambda: LiteRtRunner(path), dynamic={"B"})
    row = verify_built(built, ctx, "tflite")
    assert row.status == FAILED and "differs from pytorch" in row.reason
    outcome = judge(DeployReport("tiny", "model.onnx", "PyTorch", str(out), ["tflite"], [row]))
    assert outcome.exit_code == ExitCode.PARITY_FAILED and "deploy target tflite (fp32)" in outcome.reason
