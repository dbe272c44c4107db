"""Verification inputs: random feeds, saved arrays, image folders, user functions."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from onnxgate.errors import BadInputError
from onnxgate.spec import InputSpec, parse_input
from onnxgate.verify.inputs import Preprocess, load_callable, load_image_folder, load_npz, random_inputs

SPECS = [parse_input("x:Bx3x8x8:float32"), parse_input("ids:BxS:int64:5..7"), parse_input("mask:B,S:bool"),
         parse_input("h:2:float16")]


def test_random_inputs_honour_shapes_dtypes_and_ranges():
    feed = random_inputs(SPECS, {"B": 2, "S": 5}, seed=0)
    assert feed["x"].shape == (2, 3, 8, 8) and feed["x"].dtype == np.float32
    assert feed["ids"].dtype == np.int64 and set(np.unique(feed["ids"])) <= {5, 6, 7}
    assert feed["mask"].dtype == np.bool_ and feed["mask"].shape == (2, 5)
    assert feed["h"].dtype == np.float16 and feed["h"].shape == (2,)


def test_random_inputs_are_seeded():
    a, b, c = (random_inputs(SPECS, {"B": 1, "S": 4}, seed=s) for s in (1, 1, 2))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["x"], c["x"])


def test_random_inputs_defaults_and_float_range():
    feed = random_inputs([InputSpec("n", (1000,), "int32"), InputSpec("u", (100,), "float32", (0.0, 1.0)),
                          InputSpec("b", (2,), "bfloat16")], {}, seed=0)
    assert feed["n"].min() == 0 and feed["n"].max() == 9  # inclusive default 0..9
    assert 0 <= feed["u"].min() and feed["u"].max() <= 1
    assert feed["b"].dtype == np.float32  # numpy has no bfloat16


def test_variant_feeds_vary_sign_and_scale_of_floats_only():
    """Issue 23: a value branch cannot hide behind one distribution. Floats negative, positive, zero, x10, x0.01 of
    the seeded normal feed; integers and bools as drawn; an input's value range is kept."""
    from onnxgate.verify.inputs import VARIANTS, variant_feeds

    specs = [*SPECS, parse_input("u:B:float32:0.5..2")]
    base = random_inputs(specs, {"B": 2, "S": 5}, seed=3)
    feeds = dict(variant_feeds(specs, {"B": 2, "S": 5}, seed=3))
    assert list(feeds) == list(VARIANTS)
    x = base["x"]
    np.testing.assert_array_equal(feeds["all-negative"]["x"], -np.abs(x))
    assert (feeds["all-positive"]["x"] >= 0).all() and not feeds["zeros"]["x"].any()
    np.testing.assert_allclose(feeds["scaled x10"]["x"], x * 10, rtol=1e-6)
    np.testing.assert_allclose(feeds["scaled x0.01"]["x"], x * 0.01, rtol=1e-6)
    for feed in feeds.values():
        assert feed["x"].dtype == np.float32 and feed["h"].dtype == np.float16
        np.testing.assert_array_equal(feed["ids"], base["ids"])
        np.testing.assert_array_equal(feed["mask"], base["mask"])
        assert ((0.5 <= feed["u"]) & (feed["u"] <= 2)).all()
    assert (feeds["all-negative"]["u"] <= 1.25).all() and (feeds["all-positive"]["u"] >= 1.25).all()
    assert variant_feeds([parse_input("ids:BxS:int64")], {"B": 1, "S": 3}) == []  # nothing to vary


def test_value_probes_flip_sign_and_magnitude_of_floats_only():
    from onnxgate.verify.inputs import value_probes

    example = {"x": np.ones((2, 3), np.float32), "ids": np.full((2, 3), 6, np.int64)}
    probes = dict(value_probes(example, [parse_input("x:Bx3:float32"), parse_input("ids:Bx3:int64:5..7")]))
    assert (probes["example x-1"]["x"] == -1).all() and (probes["example x0.1"]["x"] < 1).all()
    assert (probes["example 10|x|"]["x"] == 10).all() and (probes["example -|x|"]["x"] == -1).all()
    assert all(p["x"].dtype == np.float32 and (p["ids"] == 6).all() for p in probes.values())
    assert value_probes({"ids": example["ids"]}) == []


def test_random_inputs_need_every_dynamic_size():
    with pytest.raises(BadInputError, match="no size for the dynamic dim"):
        random_inputs(SPECS, {"B": 1}, seed=0)


def test_load_npz_single_and_stacked(tmp_path):
    specs = [parse_input("x:Bx3:float32"), parse_input("ids:B:int64")]
    np.savez(tmp_path / "one.npz", x=np.ones((2, 3)), ids=np.arange(2, dtype=np.int32), extra=np.zeros(1))
    (feed,) = load_npz(tmp_path / "one.npz", specs)
    assert feed["x"].dtype == np.float32 and feed["ids"].dtype == np.int64  # cast within kind
    np.savez(tmp_path / "stack.npz", x=np.ones((4, 2, 3), np.float32), ids=np.zeros((4, 2), np.int64))
    feeds = load_npz(tmp_path / "stack.npz", specs)
    assert len(feeds) == 4 and feeds[0]["x"].shape == (2, 3)


def test_load_npy_for_single_input_models(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((1, 3), np.float32))
    (feed,) = load_npz(tmp_path / "x.npy", [parse_input("x:Bx3:float32")])
    assert feed["x"].shape == (1, 3)
    with pytest.raises(BadInputError, match="one array but the model has 2 inputs"):
        load_npz(tmp_path / "x.npy", [parse_input("x:Bx3"), parse_input("y:B")])


@pytest.mark.parametrize("arrays, match", [
    ({"x": np.ones((2, 4), np.float32)}, "has shape"),  # static dim 3 violated
    ({"x": np.ones((2, 3), np.int64)}, "is int64"),  # int where float is expected: refused, not cast
    ({"y": np.ones((2, 3), np.float32)}, "no array for input"),
    ({"x": np.ones((4, 2, 3), np.float32), "ids": np.zeros(2, np.int64)}, "stack"),
])
def test_load_npz_rejects_bad_files(tmp_path, arrays, match):
    specs = [parse_input("x:Bx3:float32")] + ([parse_input("ids:B:int64")] if "ids" in arrays else [])
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(BadInputError, match=match):
        load_npz(tmp_path / "bad.npz", specs)


def test_load_npz_refuses_pickles(tmp_path):
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(BadInputError, match="cannot be read"):
        load_npz(tmp_path / "obj.npy", [parse_input("x:1")])


def _write_images(folder, count=5):
    folder.mkdir()
    for i in range(count):
        Image.new("RGB", (40 + 10 * i, 30), color=(255, 0, 0)).save(folder / f"img{i}.png")
    (folder / "notes.txt").write_text("not an image")


def test_image_folder_resizes_crops_normalizes_and_batches(tmp_path):
    _write_images(tmp_path / "imgs")
    feeds = load_image_folder(tmp_path / "imgs", size=16, resize=20, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                              batch=2, input_name="pixels")
    assert [f["pixels"].shape for f in feeds] == [(2, 3, 16, 16), (2, 3, 16, 16), (1, 3, 16, 16)]
    x = feeds[0]["pixels"]
    assert x.dtype == np.float32
    assert np.allclose(x[:, 0], 1.0) and np.allclose(x[:, 1:], -1.0)  # red, normalized to [-1, 1]
    bgr = load_image_folder(tmp_path / "imgs", size=16, channel_order="BGR", limit=1)
    assert len(bgr) == 1 and np.allclose(bgr[0]["input"][0, 2], 1.0) and np.allclose(bgr[0]["input"][0, 0], 0.0)


def test_image_folder_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadInputError, match="holds no images"):
        load_image_folder(tmp_path / "empty", size=8)
    with pytest.raises(BadInputError, match="does not exist"):
        load_image_folder(tmp_path / "nowhere", size=8)


def test_preprocess_parses_round_trips_and_reads_metadata(tmp_path):
    text = "resize=256,crop=224,mean=0.485/0.456/0.406,std=0.229/0.224/0.225,order=RGB"
    pre = Preprocess.parse(text)
    assert pre == Preprocess(224, 256, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "RGB")
    assert str(pre) == text and Preprocess.parse(str(pre)) == pre
    assert Preprocess.from_meta({"preprocess": text}) == pre
    assert Preprocess.from_meta({"crop": "32", "order": "bgr"}) == Preprocess(32, order="BGR")
    assert Preprocess.from_meta({"owner": "me"}) is None
    _write_images(tmp_path / "imgs", count=1)
    (feed,) = Preprocess(12).load_folder(tmp_path / "imgs", input_name="x")
    assert feed["x"].shape == (1, 3, 12, 12)


@pytest.mark.parametrize("text", ["resize=256", "crop=abc", "crop=8,gamma=2", "crop=8,mean=1/2", "crop=8,order=RBG",
                                  "crop"])
def test_preprocess_rejects_bad_text(text):
    with pytest.raises(BadInputError):
        Preprocess.parse(text)


def test_load_callable_from_file_and_module(tmp_path, monkeypatch):
    (tmp_path / "feeds.py").write_text(
        "import numpy as np\n"
        "def many():\n"
        "    for i in range(3):\n"
        "        yield {'x': np.full((1, 3), i, dtype=np.float64)}\n"
        "def single():\n"
        "    return {'x': [[1.0, 2.0, 3.0]]}\n"
        "def bad():\n"
        "    return [1, 2]\n"
    )
    specs = [parse_input("x:Bx3:float32")]
    feeds = load_callable(f"{tmp_path / 'feeds.py'}:many", specs, limit=2)
    assert len(feeds) == 2 and feeds[1]["x"].dtype == np.float32 and feeds[1]["x"][0, 0] == 1
    monkeypatch.syspath_prepend(str(tmp_path))
    (feed,) = load_callable("feeds:single")
    assert feed["x"].shape == (1, 3)
    with pytest.raises(BadInputError, match="not a dict"):
        load_callable("feeds:bad")
    with pytest.raises(BadInputError, match="has no function"):
        load_callable("feeds:nothing")
    with pytest.raises(BadInputError, match="cannot import"):
        load_callable("no_such_module_xyz:fn")
    with pytest.raises(BadInputError, match="does not parse"):
        load_callable("feeds")
