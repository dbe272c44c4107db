"""`verify` on real model families at batch 1, 3 and 7 and, for CNNs, two other spatial sizes — against
PyTorch in ONNX Runtime, and in OpenVINO with the same tolerances."""

import pytest

import onnxgate
from onnxgate.examples.corpus import VERIFY_CASES
from onnxgate.spec import ExportConfig, parse_dim, parse_input

pytestmark = pytest.mark.slow

CASES = VERIFY_CASES


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("zoo")
    return folder


def probe(report, dim):
    return sorted({c.sizes[dim] for c in report.cases})


@pytest.mark.parametrize("ref", list(CASES))
def test_verify_at_every_claimed_shape(ref, exported):
    inputs, dims = CASES[ref]
    config = ExportConfig(inputs=tuple(map(parse_input, inputs)), dims=tuple(map(parse_dim, dims)),
                          reinit_degenerate=True)  # torchvision's ViT head is zero-initialized
    path = exported / (ref.replace(":", "_").replace(".", "_") + ".onnx")
    onnxgate.export(ref, path, config=config)
    runtimes = ("onnxruntime", "openvino") if ref == "torchvision:resnet18" else ("onnxruntime",)
    result = onnxgate.verify(path, runtimes=runtimes, trust_source=True)  # against the source the model records
    for parity in result.parities:
        assert parity.passed, parity.summary()
        assert {1, 2, 3, 7} <= set(probe(parity, "B"))
        if inputs[0].startswith("x:Bx3xSxS"):  # the CNNs: two spatial sizes besides the traced one
            assert {160, 224, 288} <= set(probe(parity, "S"))
        for case in parity.cases:
            for comp in case.comparisons:
                assert comp.passed and comp.max_abs_err is not None
    assert [p.candidate for p in result.parities] == list(runtimes)
    assert not any(p.insensitive_outputs for p in result.parities), "a constant reference output proves nothing"
