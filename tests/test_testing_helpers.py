"""onnxgate.testing: the helpers users put in their own test suites."""

import pytest
import torch
from torch import nn

from onnxgate.testing import assert_exports

pytest_plugins = ["onnxgate.testing"]


class Good(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        return self.conv(x).mean(dim=(2, 3))


class FrozenBatch(nn.Module):
    def forward(self, x):
        return x.reshape(int(x.shape[0]), -1) * 2


def test_assert_exports_passes_a_good_model(tmp_path):
    path = assert_exports(Good().eval(), {"x": torch.randn(2, 3, 16, 16)}, dims={"x": {0: "B"}},
                          ranges={"B": (1, 8)}, tmp_path=tmp_path)
    assert path.exists()


def test_assert_exports_fails_with_the_diagnosis(tmp_path):
    with pytest.raises(pytest.fail.Exception) as info:
        assert_exports(FrozenBatch(), {"x": torch.randn(2, 5)}, dims={"x": {0: "B"}}, tmp_path=tmp_path, repair=False)
    assert "B (frozen at 2)" in str(info.value)


def test_fixture(onnx_export):
    assert onnx_export(Good().eval(), {"x": torch.randn(2, 3, 8, 8)}).exists()
