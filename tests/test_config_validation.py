"""Validated configuration and metadata (security issue, item 4): onnxgate.toml against its schema, the onnxgate.*
metadata of an ONNX file before use, and the options that used to crash or be silently ignored."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxgate.cli.main import main
from onnxgate.errors import BadInputError, ExitCode
from onnxgate.configure import load_toml
from onnxgate.spec import Dim, ExportConfig, parse_input

# --------------------------------------------------------------------------------------------------- onnxgate.toml

FULL = '''ref = "torchvision:resnet18"
input = ["x:Bx3x224x224:float32"]
dim = ["B=1..8"]
labels = "labels.txt"
weights = "w.pth"
arch = "torchvision:resnet18"
trust_pickle = false
reinit_degenerate = true
output = "out.onnx"
allow_static = ["B"]
device = "cpu"
target = ["onnxruntime==1.17"]
[export]
strategy = "torchscript"
opset = 17
[meta]
owner = "vision-team"
revision = 3
score = 0.5
'''


def write(tmp_path: Path, text: str | bytes, name: str = "onnxgate.toml") -> Path:
    (tmp_path / "labels.txt").write_text("cat\ndog\n", encoding="utf-8")
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def test_every_key_of_a_valid_config(tmp_path):
    run = load_toml(write(tmp_path, FULL))
    assert run.ref == "torchvision:resnet18" and run.weights == "w.pth" and run.output == "out.onnx"
    assert run.trust_pickle is False and run.targets == ("onnxruntime==1.17",)
    cfg = run.export
    assert (cfg.strategy, cfg.opset, cfg.device, cfg.reinit_degenerate) == ("torchscript", 17, "cpu", True)
    assert cfg.dims == (Dim("B", 1, 8),) and cfg.labels == ("cat", "dog") and cfg.allow_static == ("B",)
    assert cfg.meta == {"owner": "vision-team", "revision": "3", "score": "0.5"}


@pytest.mark.parametrize("text, needle", [
    ('trust_pickle = "false"\n', "key 'trust_pickle' must be true or false"),
    ('trust_pickle = 1\n', "key 'trust_pickle' must be true or false"),
    ('[export]\nopset = "18"\n', "key 'export.opset' must be an integer"),
    ('[export]\nopset = true\n', "key 'export.opset' must be an integer"),
    ('[export]\nopset = 18.0\n', "key 'export.opset' must be an integer"),
    ('[export]\nopset = -1\n', "key 'export.opset' must be at least 1"),
    ('[export]\nstrategy = "banana"\n', "key 'export.strategy' must be \"dynamo\" or \"torchscript\""),
    ('export = "dynamo"\n', "key 'export' must be a table like [export] strategy = "),
    ('meta = "owner"\n', "key 'meta' must be a table"),
    ('[export]\nopest = 18\n', "key 'export.opest' is not a key onnxgate knows at [export]: did you mean 'opset'?"),
    ('reff = "x"\n', "did you mean 'ref'?"),
    ('trust-pickle = true\n', "did you mean 'trust_pickle'?"),
    ('[exprot]\nopset = 18\n', "did you mean 'export'?"),
    ('[export.deep]\nx = 1\n', "key 'export.deep' is not a key onnxgate knows at [export]"),
    ('[meta]\nx = { a = 1 }\n', "key 'meta.x' must be a string or a number (it is a table)"),
    ('[meta]\nx = true\n', "key 'meta.x' must be a string or a number (it is the boolean true)"),
    ('[meta]\n"onnxgate.inputs" = "[]"\n', "key 'meta.onnxgate.inputs'"),
    ('input = "x:1x3:float32"\n', "key 'input' must be an array of strings"),
    ('input = ["x:1x3xx2:float32"]\n', "key 'input' ('x:1x3xx2:float32')"),
    ('dim = ["B=9..1"]\n', "key 'dim' ('B=9..1')"),
    ('labels = "missing.txt"\n', "key 'labels' ('missing.txt')"),
    ('device = "banana"\n', "key 'device' ('banana') is not a device"),
    ('target = ["foo"]\n', "key 'target' ('foo')"),
    ('allow_static = ["not a name"]\n', "key 'allow_static' ('not a name') is not a dim name"),
    ('ref = ""\n', "key 'ref' must not be empty"),
    ('ref = 1\nreff = 2\n', "key 'ref' must be a string"),
])
def test_wrong_types_and_unknown_keys_name_the_file_and_the_key(tmp_path, text, needle):
    path = write(tmp_path, text)
    with pytest.raises(BadInputError) as info:
        load_toml(path)
    error = info.value
    assert error.exit_code == ExitCode.BAD_INPUT and error.hint
    assert str(path) in error.message and needle in error.message, error.message


def test_a_string_false_never_turns_pickle_loading_on(tmp_path):
    for text in ('trust_pickle = "false"\n', 'trust_pickle = "no"\n', 'trust_pickle = 0\n'):
        with pytest.raises(BadInputError):
            load_toml(write(tmp_path, text))
    assert load_toml(write(tmp_path, "trust_pickle = false\n")).trust_pickle is False


def test_several_problems_are_reported_together(tmp_path):
    with pytest.raises(BadInputError) as info:
        load_toml(write(tmp_path, 'opest = 1\ntrust_pickle = "yes"\n[export]\nopset = "18"\n'))
    message = info.value.message
    assert "'opest'" in message and "'trust_pickle'" in message and "'export.opset'" in message


@pytest.mark.parametrize("data, needle", [
    (b'ref = "\xff\xfe"\n', "not valid UTF-8"),
    (b"ref = [" * 4000, "not valid TOML"),
    (b"a = 1\n" * 300_000, "larger than 1 MiB"),
    (b'ref = "a"\nref = "b"\n', "not valid TOML"),
])
def test_unreadable_files_are_bad_input(tmp_path, data, needle):
    with pytest.raises(BadInputError, match=needle):
        load_toml(write(tmp_path, data))


def test_a_folder_is_not_a_config(tmp_path):
    with pytest.raises(BadInputError, match="cannot be read"):
        load_toml(tmp_path)


def test_cli_reports_a_bad_config_as_json_before_loading_anything(capsys, tmp_path):
    path = write(tmp_path, 'ref = "torchvision:resnet18"\nexport = "dynamo"\n')
    code = main(["export", "--config", str(path), "-o", str(tmp_path / "m.onnx"), "--json"])
    out, err = capsys.readouterr()
    assert code == ExitCode.BAD_INPUT
    error = json.loads(out)["error"]
    assert "key 'export' must be a table" in error["message"] and str(path) in error["message"]
    assert "Traceback" not in err


# --------------------------------------------------------------------------------------------------- metadata

def small_model(meta: dict[str, str] | None = None, *, input_dims=("B", 4), init_type=None) -> onnx.ModelProto:
    w = numpy_helper.from_array(np.eye(4, 3, dtype=np.float32), "W")
    if init_type is not None:
        w.data_type = init_type
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(input_dims))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 3])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, meta if meta is not None else {
        "onnxgate.inputs": json.dumps(["x:Bx4:float32"]),
        "onnxgate.dims": json.dumps({"B": {"name": "B", "min": 1, "max": 8, "example": 2}})})
    return model


def save(model: onnx.ModelProto, path: Path, *, bad_utf8: bytes | None = None) -> Path:
    data = model.SerializeToString()
    if bad_utf8 is not None:  # swap a same-length ASCII placeholder for bytes that are not UTF-8
        data = data.replace(b"PLACEHOLDER", bad_utf8)
    path.write_bytes(data)
    return path


def specs_of(path: Path, config: ExportConfig | None = None):
    from onnxgate.verify.api import specs_from_model
    from onnxgate.verify.structure import check_structure

    return specs_from_model(check_structure(path, try_ort=False), config or ExportConfig())


def test_recorded_specs_are_read(tmp_path):
    specs, dims = specs_of(save(small_model(), tmp_path / "m.onnx"))
    assert [str(s) for s in specs] == ["x:Bx4:float32"] and dims == {"B": Dim("B", 1, 8, 2)}


B = {"name": "B", "min": 1, "max": 8, "example": 2}


@pytest.mark.parametrize("entry, value, needle", [
    ("onnxgate.inputs", "[", "not valid JSON"),
    ("onnxgate.inputs", "", "not valid JSON"),
    ("onnxgate.inputs", "NaN", "not valid JSON"),
    ("onnxgate.inputs", "[" * 100_000 + "]" * 100_000, "nests too deeply"),
    ("onnxgate.inputs", '{"x": "1x4"}', "must be a JSON array"),
    ("onnxgate.inputs", "[]", "must be a JSON array"),
    ("onnxgate.inputs", "[1]", "item 1 is the number 1"),
    ("onnxgate.inputs", '["x:-1x4:float32"]', "does not parse at '-1'"),
    ("onnxgate.inputs", '["x:99999999999x4:float32"]', "larger than onnxgate accepts"),
    ("onnxgate.inputs", '["x:Bx4:complex128"]', "unknown dtype"),
    ("onnxgate.inputs", '["x:Bx4:float32", "x:Bx4:float32"]', "listed twice"),
    ("onnxgate.inputs", '["' + "x" * (1 << 20) + '"]', "characters long"),
    ("onnxgate.dims", "{", "not valid JSON"),
    ("onnxgate.dims", '{"B": 3}', "dim 'B' is the number 3"),
    ("onnxgate.dims", '{"B": null}', "dim 'B' is null"),
    ("onnxgate.dims", json.dumps({"B": {**B, "min": -5}}), "'min' is -5"),
    ("onnxgate.dims", json.dumps({"B": {**B, "max": 10**15}}), "outside 0..2,147,483,647"),
    ("onnxgate.dims", json.dumps({"B": {**B, "min": "1"}}), "'min' is the string '1'"),
    ("onnxgate.dims", json.dumps({"B": {**B, "min": True}}), "'min' is the boolean true"),
    ("onnxgate.dims", json.dumps({"B": {**B, "min": 1.5}}), "'min' is the number 1.5"),
    ("onnxgate.dims", json.dumps({"B": {**B, "bogus": 1}}), "unknown fields 'bogus'"),
    ("onnxgate.dims", json.dumps({"B": {**B, "name": "C"}}), "names itself 'C'"),
    ("onnxgate.dims", json.dumps({"B": {**B, "min": 5, "max": 2, "example": 5}}), "is empty"),
    ("onnxgate.dims", json.dumps({"B": {**B, "example": 99}}), "example size 99 lies outside"),
    ("onnxgate.dims", json.dumps({"B": {**B, "max": 2**31 - 1, "example": 2**30}}), "too much data"),
])
def test_malformed_metadata_names_the_entry(tmp_path, entry, value, needle):
    meta = {"onnxgate.inputs": json.dumps(["x:Bx4:float32"]), "onnxgate.dims": json.dumps({"B": B}), entry: value}
    path = save(small_model(meta), tmp_path / "m.onnx")
    with pytest.raises(BadInputError) as info:
        specs_of(path)
    error = info.value
    assert f"'{entry}'" in error.message and "malformed" in error.message and needle in error.message, error.message
    assert "--input" in error.hint


@pytest.mark.parametrize("entry", ["onnxgate.inputs", "onnxgate.dims"])
def test_invalid_utf8_in_metadata_is_refused(tmp_path, entry):
    meta = {"onnxgate.inputs": json.dumps(["x:Bx4:float32"]), "onnxgate.dims": json.dumps({"B": B}),
            entry: "PLACEHOLDER"}
    path = save(small_model(meta), tmp_path / "m.onnx", bad_utf8=b"\xff\xfe\xc3\x28\xa0\xa1\xe2\x28\xa1\x80\x80")
    with pytest.raises(BadInputError, match=f"'{entry}' is malformed: it is not valid UTF-8"):
        specs_of(path)


def test_input_flags_override_malformed_metadata(tmp_path):
    path = save(small_model({"onnxgate.inputs": "[", "onnxgate.dims": "{"}), tmp_path / "m.onnx")
    specs, dims = specs_of(path, ExportConfig(inputs=(parse_input("x:Bx4:float32"),), dims=(Dim("B", 1, 4, 2),)))
    assert specs[0].name == "x" and dims["B"].example == 2


def test_generated_data_is_bounded_before_allocation(tmp_path):
    from onnxgate.verify.inputs import MAX_GENERATED_BYTES, random_inputs

    spec = parse_input("x:Bx1024x1024:float32")
    with pytest.raises(BadInputError, match="would take 4.0 GiB"):
        random_inputs([spec], {"B": 1024}, seed=0)
    assert random_inputs([spec], {"B": 1}, seed=0)["x"].nbytes < MAX_GENERATED_BYTES
    # user-given sizes: the message names the input, not the metadata
    path = save(small_model(), tmp_path / "m.onnx")
    with pytest.raises(BadInputError, match="per input") as info:
        specs_of(path, ExportConfig(inputs=(parse_input("x:Bx100000x100000:float32"),)))
    assert "metadata" not in info.value.message


def test_graph_inputs_without_metadata_are_checked(tmp_path):
    path = save(small_model({}, input_dims=(2**40, 4)), tmp_path / "m.onnx")
    with pytest.raises(BadInputError, match="outside 0"):
        specs_of(path)


def test_verify_json_names_the_malformed_entry(capsys, tmp_path):
    path = save(small_model({"onnxgate.inputs": "[", "onnxgate.dims": "{}"}), tmp_path / "m.onnx")
    np.savez(tmp_path / "feed.npz", x=np.ones((2, 4), np.float32))
    code = main(["verify", str(path), "--json", "--data", str(tmp_path / "feed.npz")])
    out, err = capsys.readouterr()
    assert code == ExitCode.BAD_INPUT and "Traceback" not in err
    error = json.loads(out)["error"]
    assert "'onnxgate.inputs' is malformed" in error["message"] and "--input" in error["hint"]


def test_preprocess_metadata_is_validated():
    from onnxgate.verify.inputs import Preprocess

    assert Preprocess.from_meta({"preprocess": "crop=8"}).crop == 8
    for bad in ("crop=abc", "crop=-5", f"crop={10**12}", "crop=8,std=0/0/0", "crop=8,mean=nan/0/0"):
        with pytest.raises(BadInputError, match="metadata entry 'preprocess' is malformed"):
            Preprocess.from_meta({"preprocess": bad}, model="m.onnx")


def test_recorded_source_is_checked_as_text():
    from onnxgate.metadata import recorded_source

    assert recorded_source({"onnxgate.source": "torchvision:resnet18"}, model="m") == "torchvision:resnet18"
    assert recorded_source({}, model="m") is None
    for bad in ("x" * 5000, "a\x00b", "  "):
        with pytest.raises(BadInputError, match="'onnxgate.source' is malformed"):
            recorded_source({"onnxgate.source": bad}, model="m")


# --------------------------------------------------------------------------------------------------- inspect

def inspect_json(capsys, path: Path) -> tuple[int, dict, str]:
    code = main(["inspect", str(path), "--json"])
    out, err = capsys.readouterr()
    return code, json.loads(out)["result"], err


@pytest.mark.parametrize("data_type", [0, 99, -3])
def test_inspect_reports_an_unknown_initializer_dtype(capsys, tmp_path, data_type):
    path = save(small_model(init_type=data_type), tmp_path / "m.onnx")
    code, report, err = inspect_json(capsys, path)
    assert code == ExitCode.BAD_INPUT and "Traceback" not in err
    assert any(f"unknown data type {data_type}" in e for e in report["structure_errors"]) and not report["passed"]


def test_inspect_fails_a_negative_input_dim(capsys, tmp_path):
    path = save(small_model(input_dims=(-1, 4)), tmp_path / "m.onnx")
    code, report, _ = inspect_json(capsys, path)
    assert code == ExitCode.BAD_INPUT and not report["passed"]
    assert any("negative size -1" in e for e in report["structure_errors"])


def test_inspect_json_survives_names_that_are_not_utf8(capsys, tmp_path):
    """onnxruntime prints its provider fallback on stdout for such a file: --json output must stay one document."""
    model = small_model()
    model.graph.output[0].name = "PLACEHOLDER"
    model.graph.node[0].output[0] = "PLACEHOLDER"
    path = save(model, tmp_path / "m.onnx", bad_utf8=b"\xff\xfe\xc3\x28\xa0\xa1\xe2\x28\xa1\x80\x80")
    code, report, _ = inspect_json(capsys, path)
    assert code == ExitCode.BAD_INPUT and any("not valid UTF-8" in e for e in report["structure_errors"])


def test_inspect_lists_metadata_problems_without_failing(capsys, tmp_path):
    path = save(small_model({"onnxgate.inputs": "[", "onnxgate.dims": "{}"}), tmp_path / "m.onnx")
    code, report, _ = inspect_json(capsys, path)
    assert code == 0 and report["passed"]
    assert any("'onnxgate.inputs' is malformed" in p for p in report["metadata_problems"])


# --------------------------------------------------------------------------------------------------- options

@pytest.mark.parametrize("flag, value", [("--rtol", "-1"), ("--atol", "-0.5"), ("--rtol", "nan"), ("--atol", "inf")])
def test_verify_refuses_a_tolerance_that_is_not_one(capsys, tmp_path, flag, value):
    path = save(small_model(), tmp_path / "m.onnx")
    code = main(["verify", str(path), flag, value, "--json"])
    out, _ = capsys.readouterr()
    assert code == ExitCode.BAD_INPUT and flag in json.loads(out)["error"]["message"]


def test_export_option_errors(capsys, tmp_path):
    pytest.importorskip("torch")
    base = ["export", "torchvision:resnet18", "-o", str(tmp_path / "m.onnx"), "--json"]
    for extra, needle in ((["--opset", "3"], "--opset 3 is outside"), (["--opset", "99"], "--opset 99 is outside"),
                          (["--opset", "22", "--strategy", "torchscript"], "the torchscript exporter 7..20"),
                          (["--device", "banana"], "not a device")):
        code = main([*base, *extra])
        error = json.loads(capsys.readouterr().out)["error"]
        assert code == ExitCode.BAD_INPUT and needle in error["message"], error
    assert not list(tmp_path.glob("*.onnx"))


def test_export_on_a_missing_gpu_is_bad_input(capsys, tmp_path):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    code = main(["export", "torchvision:resnet18", "-o", str(tmp_path / "m.onnx"), "--device", "cuda", "--json"])
    error = json.loads(capsys.readouterr().out)["error"]
    assert code == ExitCode.BAD_INPUT and "no such device" in error["message"] and "CPU" in error["hint"]


def test_export_into_a_read_only_folder_is_bad_input(capsys, tmp_path):
    pytest.importorskip("torch")
    if os.geteuid() == 0:
        folder = Path("/proc")  # root writes anywhere else
    else:
        folder = tmp_path / "ro"
        folder.mkdir()
        folder.chmod(0o555)
    code = main(["export", "torchvision:resnet18", "-o", str(folder / "m.onnx"), "--json"])
    error = json.loads(capsys.readouterr().out)["error"]
    assert code == ExitCode.BAD_INPUT and "not writable" in error["message"]


def test_plan_keeps_only_strategies_that_support_a_pinned_opset():
    pytest.importorskip("torch")
    from onnxgate.export.ladder import default_plan, supported_opsets

    top = supported_opsets()["dynamo"][1]
    assert default_plan(ExportConfig(opset=11)) == [("dynamo", 11), ("torchscript", 11)]
    if top > supported_opsets()["torchscript"][1]:
        assert default_plan(ExportConfig(opset=top)) == [("dynamo", top)]
    with pytest.raises(BadInputError, match="outside the opsets"):
        default_plan(ExportConfig(opset=3))


def test_an_opset_the_exporter_did_not_honour_is_an_error(capsys, tmp_path):
    """The dynamo exporter writes opset 18 and converts down; when that fails it used to keep 18 silently."""
    torch = pytest.importorskip("torch")
    import onnxgate

    class Net(torch.nn.Module):
        def forward(self, x):
            return torch.relu(x) * 2

    from onnxgate.errors import ExportError

    with pytest.raises(ExportError) as info:
        onnxgate.export(Net(), tmp_path / "m.onnx", config=ExportConfig(
            inputs=(parse_input("x:2x4:float32"),), strategy="dynamo", opset=11, check_determinism=False))
    attempt = info.value.result.attempts[0]
    assert attempt.outcome == "check_failed" and "wrote opset 18" in attempt.error
    assert not (tmp_path / "m.onnx").exists()
