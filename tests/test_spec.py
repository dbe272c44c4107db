"""Input specs, dims, meta, labels and onnxgate.toml parsing."""

import pytest

from onnxgate.errors import BadInputError, ExitCode
from onnxgate.configure import load_toml
from onnxgate.spec import Dim, InputSpec, parse_dim, parse_input, parse_meta, read_labels


def test_static_and_dynamic_shapes():
    assert parse_input("x:1x3x224x224:float32") == InputSpec("x", (1, 3, 224, 224), "float32")
    spec = parse_input("x:Bx3xHxW:fp16")
    assert spec.shape == ("B", 3, "H", "W") and spec.dtype == "float16"
    assert spec.dynamic_axes == {0: "B", 2: "H", 3: "W"}


def test_integer_value_range_and_commas():
    spec = parse_input("ids:batch,seq:int64:0..30521")
    assert spec.shape == ("batch", "seq") and spec.value_range == (0, 30521)
    assert str(spec) == "ids:batchxseq:int64:0..30521"


@pytest.mark.parametrize("text", ["ids:B,max_len:int64:0..30521", "x:seq_x,B,3:float32", "x:Bx3xHxW:float16",
                                  "m:max_len:bool", "s::float32"])
def test_input_specs_round_trip_through_text_and_metadata(text):
    """Dim names holding an 'x' (max_len, seq_x) survive: the display string switches to commas, and the model's
    metadata stores the structured form, read back by the same validator verify uses."""
    import json

    from onnxgate.metadata import input_specs

    spec = parse_input(text)
    assert parse_input(str(spec)) == spec
    stored = {"onnxgate.inputs": json.dumps([spec.to_dict()])}
    assert input_specs(stored, model="m.onnx")[0] == [spec]


def test_unknown_strategy_from_the_python_api_is_bad_input():
    from onnxgate.spec import ExportConfig

    with pytest.raises(BadInputError, match="'tracing' is not one onnxgate has") as info:
        ExportConfig(strategy="tracing")
    assert "dynamo" in info.value.hint


@pytest.mark.parametrize("bad", ["x", "x:1x3x2.5:float32", "x:1x3:complex7", "x:1x3:float32:9..1", "1x:3:float32",
                                 "x:1x3:float32:a..b:extra"])
def test_bad_inputs_are_bad_input_errors(bad):
    with pytest.raises(BadInputError) as info:
        parse_input(bad)
    assert info.value.exit_code == ExitCode.BAD_INPUT
    assert bad in info.value.message and info.value.hint


def test_dims():
    assert parse_dim("B=1..64") == Dim("B", 1, 64, None)
    assert parse_dim("H=32..512@224") == Dim("H", 32, 512, 224)
    assert parse_dim("S=16") == Dim("S", 1, None, 16)
    assert parse_dim("S=8..") == Dim("S", 8, None, None)
    for bad in ("B", "B=9..1", "B=1..8@16", "=3"):
        with pytest.raises(BadInputError):
            parse_dim(bad)


def test_meta():
    assert parse_meta(["owner=vision", "note=a=b"]) == {"owner": "vision", "note": "a=b"}
    with pytest.raises(BadInputError):
        parse_meta(["novalue"])


def test_labels_keep_non_ascii(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_text("猫\n狗\n\nÉcureuil\n", encoding="utf-8")
    assert read_labels(path) == ("猫", "狗", "Écureuil")
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("Écureuil".encode("latin-1"))
    with pytest.raises(BadInputError, match="not valid UTF-8"):
        read_labels(bad)


def test_toml(tmp_path):
    (tmp_path / "labels.txt").write_text("a\nb\n", encoding="utf-8")
    path = tmp_path / "onnxgate.toml"
    path.write_text('ref = "torchvision:resnet18"\ninput = ["x:Bx3x224x224:float32"]\ndim = ["B=1..8"]\n'
                    'labels = "labels.txt"\n[export]\nstrategy = "dynamo"\nopset = 18\n[meta]\nowner = "me"\n')
    run = load_toml(path)
    assert run.ref == "torchvision:resnet18"
    assert run.export.inputs[0].shape == ("B", 3, 224, 224)
    assert run.export.dims == (Dim("B", 1, 8),)
    assert (run.export.strategy, run.export.opset, run.export.meta) == ("dynamo", 18, {"owner": "me"})
    assert run.export.labels == ("a", "b")
    path.write_text('reff = "x"\n')
    with pytest.raises(BadInputError, match="key 'reff' is not a key onnxgate knows at the top level: did you "
                                            "mean 'ref'\\?"):
        load_toml(path)


@pytest.mark.parametrize("text", ["x:99999999999x3:float32", f"x:{'9' * 5000}x3:float32", "x:1x²:float32",
                                  "x:1x3:float32:0..1e999", "x:1x3:float32:-inf..inf"])
def test_input_sizes_and_ranges_are_bounded(text):
    with pytest.raises(BadInputError) as info:
        parse_input(text)
    assert info.value.hint and "Traceback" not in info.value.message


@pytest.mark.parametrize("text", ["B=1..99999999999", f"B={'9' * 5000}", "B=0", "B=1..4@9"])
def test_dim_sizes_are_bounded(text):
    with pytest.raises(BadInputError):
        parse_dim(text)


def test_where_names_the_origin():
    with pytest.raises(BadInputError, match=r"^In cfg.toml, key 'input' \('x'\) does not parse"):
        parse_input("x", where="In cfg.toml, key 'input' ('x')")
    with pytest.raises(BadInputError, match="reserved"):
        parse_meta(["onnxgate.inputs=[]"])
    with pytest.raises(BadInputError, match="empty"):
        parse_meta(["=x"])


@pytest.mark.parametrize("device, ok", [("cpu", True), ("cuda", True), ("cuda:1", True), ("mps", True),
                                        ("banana", False), ("cuda:x", False), ("", False), ("CPU", False)])
def test_device_syntax(device, ok):
    from onnxgate.spec import parse_device

    if ok:
        assert parse_device(device) == device
    else:
        with pytest.raises(BadInputError, match="not a device"):
            parse_device(device)
