"""Target compatibility (`--target RUNTIME==VERSION`): the table's verdicts on small hand-built models, the
installed onnxruntime as the authority for its own release, and the table's own integrity. Torch-free."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper

from onnxgate.errors import BadInputError
from onnxgate.verify.structure import check_structure
from onnxgate.verify.targets import (
    TargetResult,
    _table,
    check_targets,
    installed_ort_max_opset,
    ort_support,
    parse_target,
    render_targets_table,
)

INSTALLED_ORT = ".".join(onnxruntime.__version__.split(".")[:2])


def _value(name: str, elem=TensorProto.FLOAT, shape=None):
    return helper.make_tensor_value_info(name, elem, shape)


def save(tmp_path: Path, nodes, *, opset: int, ir: int = 8, inputs=None, outputs=None, extra_opsets=(),
         functions=(), name: str = "m.onnx") -> Path:
    """A one-graph model, written without the checker: some targets are meant to reject it."""
    graph = helper.make_graph(nodes, "g", inputs or [_value("x", shape=[2, 4])], outputs or [_value("y")])
    model = helper.make_model(graph, ir_version=ir, functions=list(functions),
                              opset_imports=[helper.make_opsetid("", opset), *extra_opsets])
    path = tmp_path / name
    onnx.save(model, str(path))
    return path


def relu_model(tmp_path, opset=17, ir=8):
    return save(tmp_path, [helper.make_node("Relu", ["x"], ["y"])], opset=opset, ir=ir)


def one(model, target) -> TargetResult:
    (result,) = check_targets(model, [target])
    return result


# ------------------------------------------------------------------------------------------------ onnxruntime


def test_old_onnxruntime_rejects_newer_opset_ir_and_operator(tmp_path):
    """Gelu first appears in opset 20; onnxruntime 1.16 implements opset 19 and IR 9."""
    model = save(tmp_path, [helper.make_node("Gelu", ["x"], ["y"])], opset=21, ir=10)
    r = one(model, "onnxruntime==1.16")
    assert not r.supported and r.row == "1.16" and r.unknown_version is None
    assert any("model opset 21 > newest opset 19 that onnxruntime 1.16 implements" in x
               and "compatibility.md" in x for x in r.reasons)
    assert any("IR version 10 > 9" in x for x in r.reasons)
    assert any("operator Gelu first appears in opset 20" in x for x in r.reasons)
    assert r.checked_by == "table"


def test_installed_onnxruntime_is_judged_by_loading(tmp_path):
    model = save(tmp_path, [helper.make_node("Gelu", ["x"], ["y"])], opset=21, ir=10)
    r = one(model, f"onnxruntime=={INSTALLED_ORT}")
    assert r.supported and r.reasons == []
    assert r.checked_by == f"loaded into the installed onnxruntime {onnxruntime.__version__}"


def test_installed_onnxruntime_that_cannot_load_says_why(tmp_path):
    """No onnxruntime release has a CPU kernel for ImageDecoder: the load fails and its error is the reason."""
    model = save(tmp_path, [helper.make_node("ImageDecoder", ["x"], ["y"])], opset=20, ir=10,
                 inputs=[_value("x", TensorProto.UINT8, [16])], outputs=[_value("y", TensorProto.UINT8)])
    r = one(model, f"onnxruntime=={INSTALLED_ORT}")
    assert not r.supported
    assert "cannot load the model" in r.reasons[0] and "ImageDecoder" in r.reasons[0]


def test_operator_without_kernel_in_a_release(tmp_path):
    """DeformConv (opset 19) got its CPU kernel in onnxruntime 1.25 (probed wheels 1.24.4 / 1.25.1)."""
    model = save(tmp_path, [helper.make_node("DeformConv", ["x", "w", "o"], ["y"], kernel_shape=[1, 1])], opset=19,
                 inputs=[_value("x", shape=[1, 1, 2, 2]), _value("w", shape=[1, 1, 1, 1]),
                         _value("o", shape=[1, 2, 2, 2])])
    old, new = check_targets(model, ["onnxruntime==1.24", "onnxruntime==1.25.1"])
    assert not old.supported and old.reasons == [
        "operator DeformConv is not supported by onnxruntime 1.24 (source: probe of the onnxruntime wheel from PyPI)"]
    assert new.supported


def test_ort_support_matches_the_compatibility_table():
    assert ort_support("1.16.3") == (19, 9)
    assert ort_support("1.11") == (16, 8)
    assert ort_support("1.22.1") == (22, 10)
    newest = _table()["runtimes"]["onnxruntime"]["rows"][-1]
    assert ort_support("9.99.0") == (newest["max_opset"], newest["max_ir"])  # newer than the table: newest row
    assert ort_support("0.0.1") == (11, 6)  # older than the table: oldest row


def test_installed_ort_max_opset_is_what_the_installed_onnxruntime_loads(tmp_path):
    top = installed_ort_max_opset()
    assert one(relu_model(tmp_path, opset=top), f"onnxruntime=={INSTALLED_ORT}").supported
    versions = [r["version"] for r in _table()["runtimes"]["onnxruntime"]["rows"]]
    if INSTALLED_ORT in versions:  # a release the table knows: its opset limit must be exact, not just a lower bound
        beyond = save(tmp_path, [helper.make_node("Relu", ["x"], ["y"])], opset=top + 1, name="beyond.onnx")
        assert not one(beyond, f"onnxruntime=={INSTALLED_ORT}").supported


# ------------------------------------------------------------------------------------------------ TensorRT


def unique_model(tmp_path, opset=17):
    return save(tmp_path, [helper.make_node("Unique", ["x"], ["y"])], opset=opset)


def test_tensorrt_flags_an_operator_its_parser_lacks(tmp_path):
    r = one(unique_model(tmp_path), "tensorrt==8.6")
    assert not r.supported and r.row == "8.6"
    assert r.reasons == ["operator Unique is not supported by TensorRT 8.6 (source: onnx-tensorrt docs/operators.md "
                         "(TensorRT 8.5) + onnx-tensorrt docs/Changelog.md)"]
    # the row was derived (8.5 matrix + 8.6 changelog): the result says how, since the list decided the verdict
    assert any(n.startswith("table row TensorRT 8.6: the 8.5 support matrix less") for n in r.notes)
    assert not any(n.startswith("table row") for n in one(relu_model(tmp_path), "tensorrt==8.6").notes)


def test_tensorrt_8_6_gained_layernormalization_over_8_5(tmp_path):
    model = save(tmp_path, [helper.make_node("LayerNormalization", ["x", "s"], ["y"])], opset=17,
                 inputs=[_value("x", shape=[2, 4]), _value("s", shape=[4])])
    r85, r86 = check_targets(model, ["tensorrt==8.5", "tensorrt==8.6.1"])
    assert not r85.supported and "LayerNormalization" in r85.reasons[0]
    assert r86.supported and r86.row == "8.6"


def test_tensorrt_documented_opset_range(tmp_path):
    assert not one(relu_model(tmp_path, opset=21), "tensorrt==10.0").supported
    r = one(relu_model(tmp_path, opset=8), "tensorrt==10.15")
    assert not r.supported and "model opset 8 < oldest opset 9" in r.reasons[0]
    assert one(relu_model(tmp_path, opset=17), "tensorrt==10.15").supported


def test_operators_inside_subgraphs_and_local_functions_are_checked(tmp_path):
    """An If branch and a model-local function both hide a Unique; the function call itself is not a foreign op."""
    branch = helper.make_graph([helper.make_node("Unique", ["x"], ["u"])], "then", [], [_value("u")])
    plain = helper.make_graph([helper.make_node("Identity", ["x"], ["v"])], "else", [], [_value("v")])
    cond = helper.make_node("If", ["c"], ["y"], then_branch=branch, else_branch=plain)
    in_if = save(tmp_path, [cond], opset=17, inputs=[_value("x", shape=[4]), _value("c", TensorProto.BOOL, [])],
                 name="if.onnx")
    fn = helper.make_function("local.fns", "Dedup", ["a"], ["b"], [helper.make_node("Unique", ["a"], ["b"])],
                              [helper.make_opsetid("", 17)])
    in_fn = save(tmp_path, [helper.make_node("Dedup", ["x"], ["y"], domain="local.fns")], opset=17,
                 extra_opsets=[helper.make_opsetid("local.fns", 1)], functions=[fn], name="fn.onnx")
    for model in (in_if, in_fn):
        r = one(model, "tensorrt==10.15")
        assert [x.split(" (source")[0] for x in r.reasons] == ["operator Unique is not supported by TensorRT 10.15"]


def test_tensorrt_restriction_is_a_note_not_a_failure(tmp_path):
    body = helper.make_graph([helper.make_node("Identity", ["cond_in"], ["cond_out"])], "body",
                             [_value("i", TensorProto.INT64, []), _value("cond_in", TensorProto.BOOL, [])],
                             [_value("cond_out", TensorProto.BOOL, [])])
    model = save(tmp_path, [helper.make_node("Loop", ["n", "c"], [], body=body)], opset=17,
                 inputs=[_value("n", TensorProto.INT64, []), _value("c", TensorProto.BOOL, [])], outputs=[])
    r = one(model, "tensorrt==10.15")
    assert r.supported and any(n.startswith("operator Loop on TensorRT 10.15: scan output length") for n in r.notes)


# ------------------------------------------------------------------------------------------------ OpenVINO


def test_openvino_rows(tmp_path):
    det = save(tmp_path, [helper.make_node("Det", ["x"], ["y"])], opset=18, inputs=[_value("x", shape=[3, 3])],
               name="det.onnx")
    mish = save(tmp_path, [helper.make_node("Mish", ["x"], ["y"])], opset=18, name="mish.onnx")
    r = one(det, "openvino==2024.0")
    assert not r.supported and r.row == "2024.0" and r.max_opset is None
    assert r.reasons == ["operator Det is not supported by OpenVINO 2024.0 (source: probe of the openvino wheel "
                         "from PyPI)"]
    old, new = check_targets(mish, ["openvino==2024.0", "openvino==2024.6"])
    assert not old.supported and new.supported
    # no global opset limit in OpenVINO's frontend: a new opset is a note, never a failure
    r = one(relu_model(tmp_path, opset=26, ir=13), "openvino==2025.4")
    assert r.supported and any("no global opset or IR limit" in n for n in r.notes)


# ------------------------------------------------------------------------------------------------ domains


def test_com_microsoft_operators_run_only_on_onnxruntime(tmp_path):
    model = save(tmp_path, [helper.make_node("FastGelu", ["x"], ["y"], domain="com.microsoft")], opset=17,
                 extra_opsets=[helper.make_opsetid("com.microsoft", 1)])
    ort, trt, ov = check_targets(model, ["onnxruntime==1.16", "tensorrt==10.15", "openvino==2026.4"])
    assert ort.supported
    assert not trt.supported and trt.reasons == [
        "operator com.microsoft::FastGelu is in domain 'com.microsoft' (onnxruntime's contrib operators), which "
        "TensorRT 10.15 does not implement"]
    assert ov.supported and any("converts only some operators of domain 'com.microsoft'" in n for n in ov.notes)


# ------------------------------------------------------------------------------------------------ versions & input


def test_unknown_version_falls_back_to_the_nearest_older_row(tmp_path):
    r = one(unique_model(tmp_path), "tensorrt==10.8")
    assert r.row == "10.0" and not r.supported
    assert r.unknown_version.startswith("TensorRT 10.8 is not in the compatibility table; judged by the nearest "
                                        "older release, TensorRT 10.0")
    assert r.unknown_version in r.notes and "TensorRT 10.0" in r.reasons[0]
    r = one(relu_model(tmp_path), "openvino==2024.3")
    assert r.row == "2024.0" and r.supported and r.unknown_version


@pytest.mark.parametrize("target", ["onnxruntime=1.16", "onnxruntime==", "onnxrt==1.16", "tensorrt==10",
                                    "openvino==v2024.0", "", "tensorrt==10.0 openvino==2024.0"])
def test_malformed_targets_raise_bad_input(target):
    with pytest.raises(BadInputError) as info:
        parse_target(target)
    err = info.value
    assert "\n" not in err.message and f"'{target}'" in err.message
    assert err.hint and "RUNTIME==MAJOR.MINOR" in err.hint


def test_targets_are_validated_before_the_model_is_read(tmp_path):
    with pytest.raises(BadInputError, match="not of the form"):
        check_targets(tmp_path / "missing.onnx", ["onnxruntime==1.16", "tensorrt=10"])


def test_version_older_than_the_table_is_bad_input(tmp_path):
    with pytest.raises(BadInputError, match="older than every TensorRT release") as info:
        check_targets(relu_model(tmp_path), ["tensorrt==7.2"])
    assert info.value.hint == "Target tensorrt==8.5 or newer."


def test_runtime_names_are_case_insensitive_and_patch_versions_match_their_row():
    assert parse_target("TensorRT==10.15.1") == ("tensorrt", "10.15.1")


def test_accepts_a_structure_report_and_serializes(tmp_path):
    report = check_structure(unique_model(tmp_path), try_ort=False)
    results = check_targets(report, ["tensorrt==10.15", "onnxruntime==1.20"])
    data = json.loads(json.dumps([r.to_dict() for r in results]))
    assert [d["supported"] for d in data] == [False, True]
    assert set(data[0]) >= {"target", "runtime", "version", "supported", "reasons", "notes", "unknown_version"}


def test_render_targets_table(tmp_path):
    from rich.console import Console

    results = check_targets(unique_model(tmp_path), ["tensorrt==8.6", "onnxruntime==1.20", "tensorrt==10.8"])
    console = Console(record=True, width=200)
    console.print(render_targets_table(results))
    text = console.export_text()
    assert "tensorrt==8.6" in text and "unsupported" in text and "table row 1.20" in text
    assert "operator Unique is not supported by TensorRT 8.6" in text


# ------------------------------------------------------------------------------------------------ the data


def test_every_row_is_sourced_and_names_real_operators():
    table = _table()
    known = {s.name for s in onnx.defs.get_all_schemas_with_history() if s.domain == ""}
    for runtime, spec in table["runtimes"].items():
        versions = [tuple(map(int, r["version"].split("."))) for r in spec["rows"]]
        assert versions == sorted(set(versions)), runtime
        for row in spec["rows"]:
            assert row["version_source"] in table["sources"], (runtime, row["version"])
            assert all(k in table["sources"] for k in row["ops_source"]), (runtime, row["version"])
            assert row["ops_source"] or not row["unsupported_ops"], (runtime, row["version"])
            names = set(row["unsupported_ops"]) | set(row.get("limited_ops", {}))
            assert names <= known, (runtime, row["version"], names - known)


def test_runs_with_torch_unimportable(tmp_path):
    """A production box has no torch: target checks must not need it."""
    import subprocess
    import sys

    model = unique_model(tmp_path)
    code = ("import sys; sys.modules['torch'] = None\n"
            "from onnxgate.verify.targets import check_targets\n"
            f"(r,) = check_targets({str(model)!r}, ['tensorrt==10.15'])\n"
            "assert not r.supported and 'Unique' in r.reasons[0]\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
