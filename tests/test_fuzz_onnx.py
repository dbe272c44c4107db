"""Seeded fuzzing: mutated ONNX files and onnxgate.toml files against `inspect`, `verify` and `load_toml`.

Every case runs in-process (``onnxgate.cli.main.main([...])`` with ``--json``), inside a forked worker so that a
native crash (SIGSEGV/SIGABRT in onnx or onnxruntime) is counted as a crash of that case instead of taking pytest
down. What must hold for every case:

- no exception escapes (that is the traceback of exit 1 a user would see), and the exit code is a documented one;
- with ``--json``, stdout is exactly one JSON document (the result, or the ``{"ok": false, "error": ...}`` envelope);
- no case exits 0 where failure is certain (a negative input dim, an unknown tensor dtype, a ``verify`` that has
  nothing to verify against, a toml with a wrong type or an unknown key).

``verify`` never gets ``--against`` or ``--trust-source``: a file that names a source must not make it run one
(the sources generated here name modules and files that do not exist, so nothing can run either way).

The generator is shared with ``benchmarks/fuzz_offline.py`` (the larger offline run): ``build_cases(root, seed,
onnx_count, toml_count)`` and ``run_cases(cases, results_path)``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import signal
import sys
import time
import traceback
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

DOCUMENTED_EXIT_CODES = {0, 2, 3, 4, 6, 7, 8, 9}
BAD_UTF8 = b"\xff\xfe\xc3\x28\xa0\xa1\xe2\x28\xa1\x80"  # 10 bytes, invalid UTF-8 in several ways
MARK = "Zq9MARKq9Z"  # 10 ASCII bytes, replaced by BAD_UTF8 after serialization (same length: lengths stay valid)
assert len(MARK.encode()) == len(BAD_UTF8)
HARMLESS_SOURCES = ["onnxgate_fuzz_no_such_module:Net", "/nonexistent/onnxgate-fuzz/model.py:Net",
                    "onnxgate_fuzz_missing.pkg:build", "/nonexistent/onnxgate-fuzz/model.pt2", ""]


# --------------------------------------------------------------------------------------------------- base models

def _dims_meta(**dims) -> str:
    return json.dumps({n: {"name": n, "min": lo, "max": hi, "example": ex} for n, (lo, hi, ex) in dims.items()})


def base_models() -> dict[str, onnx.ModelProto]:
    """Three small valid models, each with the metadata `onnxgate export` writes."""
    rng = np.random.default_rng(0)
    models = {}

    w = numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), "W")  # raw_data
    b = helper.make_tensor("b", TensorProto.FLOAT, [3], [0.1, -0.2, 0.3])  # float_data
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Add", ["h", "b"], ["h2"]),
         helper.make_node("Relu", ["h2"], ["y"])], "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 3])], [w, b])
    models["mlp"] = _finish(graph, {"onnxgate.inputs": json.dumps(["x:Bx4:float32"]),
                                    "onnxgate.dims": _dims_meta(B=(1, 8, 2)), "onnxgate.strategy": "dynamo",
                                    "onnxgate.opset": "18", "labels": json.dumps(["a", "b", "c"])})

    cw = numpy_helper.from_array(rng.standard_normal((2, 1, 3, 3)).astype(np.float32), "CW")
    shape = numpy_helper.from_array(np.array([0, -1], dtype=np.int64), "shape")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "CW"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("Reshape", ["c", "shape"], ["r"]), helper.make_node("Softmax", ["r"], ["y"], axis=-1)],
        "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 128])], [cw, shape])
    models["conv"] = _finish(graph, {"onnxgate.inputs": json.dumps(["x:Nx1x8x8:float32"]),
                                     "onnxgate.dims": _dims_meta(N=(1, 4, 2)),
                                     "onnxgate.source": HARMLESS_SOURCES[0], "onnxgate.reinit_degenerate": "true",
                                     "preprocess": "crop=8,mean=0/0/0,std=1/1/1"})

    emb = numpy_helper.from_array(rng.standard_normal((10, 4)).astype(np.float32), "E")
    graph = helper.make_graph(
        [helper.make_node("Gather", ["E", "ids"], ["g"]),
         helper.make_node("ReduceMean", ["g"], ["y"], axes=[1], keepdims=0)], "embed",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["B", "S"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 4])], [emb])
    models["embed"] = _finish(graph, {"onnxgate.inputs": json.dumps(["ids:BxS:int64:0..9"]),
                                      "onnxgate.dims": _dims_meta(B=(1, 4, 2), S=(2, 16, 8))}, opset=17)
    return models


def _finish(graph, meta: dict[str, str], opset: int = 18) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="onnxgate-fuzz")
    model.ir_version = 8
    helper.set_model_props(model, {"onnxgate.version": "0.1.0", **meta})
    onnx.checker.check_model(model, full_check=True)
    return model


def feeds_for(name: str) -> dict[str, np.ndarray]:
    """A valid --data feed for each base model."""
    if name == "embed":
        return {"ids": np.arange(16, dtype=np.int64).reshape(2, 8) % 10}
    if name == "conv":
        return {"x": np.ones((2, 1, 8, 8), dtype=np.float32)}
    return {"x": np.ones((2, 4), dtype=np.float32)}


# --------------------------------------------------------------------------------------------------- ONNX mutations

@dataclass
class Mutant:
    family: str  # bitflip | truncate | field | metadata | toml
    what: str  # a short description of the mutation, for failure reports
    data: bytes
    base: str = ""
    expect_fail: bool = False  # exit 0 would be wrong (the mutation certainly breaks the model / config)


def _bitflip(rng: random.Random, data: bytes) -> tuple[str, bytes]:
    buf = bytearray(data)
    flips = rng.randint(1, 8)
    for _ in range(flips):
        i = rng.randrange(len(buf))
        buf[i] ^= 1 << rng.randrange(8)
    return f"{flips} bit flips", bytes(buf)


def _truncate(rng: random.Random, data: bytes) -> tuple[str, bytes]:
    cut = rng.choice([rng.randrange(len(data)), rng.randrange(max(1, len(data) // 8)), len(data) - rng.randint(1, 16)])
    cut = max(0, cut)
    return f"truncated at {cut}/{len(data)}", data[:cut]


HUGE = [2**31, 2**40, 2**62, 10**12]
NEGATIVE = [-1, -2, -(2**40)]


def _field(rng: random.Random, model: onnx.ModelProto) -> tuple[str, onnx.ModelProto, bool]:
    """One protobuf field mutation. Returns (description, model, certainly invalid)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    kind = rng.choice(["data_type", "init_dims", "raw_data", "op_type", "domain", "opset", "input_dim",
                       "elem_type", "ir_version", "utf8_name", "drop_init", "attr", "dup_output"])
    inits = list(g.initializer)
    if kind == "data_type" and inits:
        t = rng.choice(inits)
        t.data_type = rng.choice([0, 99, 17, 26, -3, 1000, TensorProto.STRING, TensorProto.INT8, TensorProto.DOUBLE])
        return f"initializer {t.name} data_type={t.data_type}", m, t.data_type in (0, 99, 26, -3, 1000)
    if kind == "init_dims" and inits:
        t = rng.choice(inits)
        choice = rng.choice(["neg", "huge", "extra", "drop", "zero"])
        if choice == "neg":
            t.dims[rng.randrange(len(t.dims))] = rng.choice(NEGATIVE)
        elif choice == "huge":
            t.dims[rng.randrange(len(t.dims))] = rng.choice(HUGE)
        elif choice == "extra":
            t.dims.append(rng.choice([3, 7, 2**33]))
        elif choice == "drop" and len(t.dims):
            del t.dims[-1]
        else:
            t.dims[rng.randrange(len(t.dims))] = 0
        return f"initializer {t.name} dims={list(t.dims)}", m, choice in ("neg", "huge")
    if kind == "raw_data":
        raw = [t for t in inits if t.raw_data]
        if raw:
            t = rng.choice(raw)
            n = len(t.raw_data)
            t.raw_data = rng.choice([t.raw_data[: n // 2], t.raw_data + b"\x00" * rng.randint(1, 64), b"", t.raw_data[:-1]])
            return f"initializer {t.name} raw_data {n}->{len(t.raw_data)} bytes", m, True
    if kind == "op_type" and len(g.node):
        n = rng.choice(g.node)
        n.op_type = rng.choice(["NoSuchOp", "", "relu", MARK, "Conv" if n.op_type != "Conv" else "MatMul", "a" * 5000])
        return f"node op_type={n.op_type[:20]!r}", m, n.op_type in ("NoSuchOp", "", "relu", MARK, "a" * 5000)
    if kind == "domain" and len(g.node):
        n = rng.choice(g.node)
        n.domain = rng.choice(["com.evil", "ai.onnx.ml", MARK, "x" * 300])
        return f"node domain={n.domain[:20]!r}", m, True
    if kind == "opset":
        o = m.opset_import[0]
        choice = rng.choice(["version", "domain", "add", "clear"])
        if choice == "version":
            o.version = rng.choice([0, -1, 1, 3, 11, 99, 10**12])
        elif choice == "domain":
            o.domain = rng.choice(["com.microsoft", MARK, "ai.onnx.ml"])
        elif choice == "add":
            m.opset_import.add(domain=rng.choice(["", "com.evil"]), version=rng.choice([1, 18, -5]))
        else:
            del m.opset_import[:]
        return f"opset_import {choice}: {[(o.domain, o.version) for o in m.opset_import]}", m, \
            choice == "clear" or (choice == "version" and o.version in (0, -1, 10**12))
    if kind == "input_dim":
        dim = rng.choice(list(g.input[0].type.tensor_type.shape.dim))
        value = rng.choice(NEGATIVE + HUGE + [0])
        dim.dim_value = value  # clears dim_param
        return f"input dim_value={value}", m, value < 0
    if kind == "elem_type":
        v = rng.choice([g.input[0], g.output[0]])
        v.type.tensor_type.elem_type = rng.choice([0, 99, TensorProto.STRING, TensorProto.COMPLEX64, -1])
        return f"{v.name} elem_type={v.type.tensor_type.elem_type}", m, v.type.tensor_type.elem_type in (0, 99, -1)
    if kind == "ir_version":
        m.ir_version = rng.choice([0, 1, 3, 99, -1, 2**40])
        return f"ir_version={m.ir_version}", m, m.ir_version in (0, -1, 99, 2**40)
    if kind == "utf8_name":
        target = rng.choice(["input", "output", "node_output", "init", "producer", "doc"])
        if target == "input":
            g.input[0].name = MARK
        elif target == "output":
            g.output[0].name = MARK
        elif target == "node_output":
            g.node[0].output[0] = MARK
        elif target == "init" and inits:
            inits[0].name = MARK
        elif target == "producer":
            m.producer_name = MARK
        else:
            g.doc_string = MARK
        return f"invalid UTF-8 in {target} name", m, target in ("input", "output", "node_output", "init")
    if kind == "drop_init" and inits:
        t = rng.choice(inits)
        g.initializer.remove(t)
        return f"initializer {t.name} removed", m, True
    if kind == "attr":
        for n in g.node:
            if n.attribute:
                a = n.attribute[0]
                a.ClearField("ints") if a.ints else None
                a.type = rng.choice([0, onnx.AttributeProto.STRING, onnx.AttributeProto.GRAPH])
                return f"node {n.op_type} attribute {a.name} type={a.type}", m, True
    # dup_output (or a kind that found nothing to mutate): two nodes write the same name
    if len(g.node) > 1:
        g.node[1].output[0] = g.node[0].output[0]
        return "two nodes write one name", m, True
    m.graph.output[0].name = "nowhere"
    return "graph output names nothing", m, True


BAD_JSON = ["[", "{", "", "null", "nan", "NaN", "1e999", '"x"', "[1, 2]", "[null]", "{}", "[[[[", "[" * 3000 + "]" * 3000,
            '{"a": ' * 3000 + "1" + "}" * 3000, "\x00", "\u2028", "tru", "[]", MARK]


def _meta_value(rng: random.Random, key: str, base_meta: dict[str, str]) -> str:
    """A broken value for metadata entry ``key`` (``base_meta``: the unmutated entries, for names)."""
    if key == "onnxgate.inputs":
        first = json.loads(base_meta["onnxgate.inputs"])[0]
        if isinstance(first, dict):  # the structured form export writes
            name, dim0 = first["name"], str(first["shape"][0])
        else:
            name, dim0 = first.split(":")[0], first.split(":")[1].split("x")[0]
        return rng.choice(BAD_JSON + [
            json.dumps([{"name": name, "shape": [-1, 4], "dtype": "float32", "value_range": None}]),
            json.dumps([{"name": name, "shape": [2**40, 2**40], "dtype": "float32"}]),
            json.dumps([{"name": name, "shape": "1x4", "dtype": "float32"}]),
            json.dumps([{"name": name, "shape": [dim0, 4], "dtype": "float32", "value_range": [5, 1]}]),
            json.dumps([{"name": name, "shape": [1, 4], "dtype": "float32", "extra": 1}]),
            json.dumps([f"{name}:-1x4:float32"]), json.dumps([f"{name}:99999999999x99999999:float32"]),
            json.dumps([f"{name}:{dim0}x4:complex128"]), json.dumps([f"{name}:{dim0}x4:float32:5..1"]),
            json.dumps([f"{name}:{dim0}x4"] * 2), json.dumps(["no such input:1:float32"]), json.dumps([1, 2]),
            json.dumps({"x": "1x4"}), json.dumps([f"{name}:{'x'.join(['3'] * 40)}:float32"]),
            json.dumps([f"{name}:{2**40}x{2**40}:float32"]), json.dumps(["x" * 100000]),
            json.dumps([f"{name}:1x4:int64:0..1e300"]), json.dumps([f"{name}:1x4:float32:-inf..inf"])])
    if key == "onnxgate.dims":
        dim = next(iter(json.loads(base_meta["onnxgate.dims"])))
        return rng.choice(BAD_JSON + [
            json.dumps({dim: 3}), json.dumps([dim]), json.dumps({dim: {"name": dim, "min": -5, "max": 8, "example": 2}}),
            json.dumps({dim: {"name": dim, "min": 1, "max": 10**15, "example": 10**12}}),
            json.dumps({dim: {"name": dim, "min": 1, "max": 2**31, "example": 2**30}}),
            json.dumps({dim: {"bogus": 1}}), json.dumps({dim: {"name": "C"}}), json.dumps({dim: {"name": dim, "min": "1"}}),
            json.dumps({dim: {"name": dim, "min": 1.5}}), json.dumps({dim: {"name": dim, "min": True}}),
            json.dumps({dim: {"name": dim, "min": 5, "max": 2}}), json.dumps({dim: {"name": dim, "example": 99, "max": 4}}),
            json.dumps({dim: {"name": dim, "example": -3}}), json.dumps({dim: {"name": dim, "example": 0}}),
            json.dumps({dim: None}), json.dumps({"": {}}), json.dumps({dim: {"name": dim, "example": 10**400}})])
    if key == "onnxgate.source":
        return rng.choice(HARMLESS_SOURCES + [MARK, "\x00", ":" * 50, "::x", "x" * 100000])
    if key == "onnxgate.reinit_degenerate":
        return rng.choice(["yes", "TRUE", "", MARK, "1"])
    if key == "labels":
        return rng.choice(BAD_JSON + [json.dumps({"a": 1}), json.dumps([1, None])])
    if key == "preprocess":
        return rng.choice(["crop=abc", "crop=-5", f"crop={10**12}", "mean=1/2,crop=3", "crop=8,std=0/0/0", "crop",
                           "=", "crop=8,order=XYZ", MARK, "crop=8," * 1000, "resize=-1,crop=8"])
    return rng.choice(BAD_JSON + [MARK, "x" * 10000])


METADATA_KEYS = ["onnxgate.inputs", "onnxgate.dims", "onnxgate.source", "onnxgate.reinit_degenerate", "labels",
                 "preprocess", "onnxgate.opset", "onnxgate.strategy", "onnxgate.version", "onnxgate.transforms",
                 "onnxgate.quantization", MARK]


def _metadata(rng: random.Random, model: onnx.ModelProto) -> tuple[str, onnx.ModelProto, bool]:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    meta = {p.key: p.value for p in m.metadata_props}
    original = {"onnxgate.inputs": '["x:Bx4:float32"]', "onnxgate.dims": '{"B": {}}', **meta}
    changes = []
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        key = rng.choice(METADATA_KEYS)
        if rng.random() < 0.1:
            meta.pop(key, None)
            changes.append(f"{key[:20]} removed")
            continue
        value = _meta_value(rng, key, original)
        meta[key] = value
        changes.append(f"{key[:20]}={value[:40]!r}")
    del m.metadata_props[:]
    for k, v in meta.items():
        m.metadata_props.add(key=k, value=v)
    return "; ".join(changes), m, False  # inspect may show a model with broken metadata; verify never passes here


def _serialize(model: onnx.ModelProto) -> bytes:
    return model.SerializeToString().replace(MARK.encode(), BAD_UTF8)


def onnx_mutants(seed: int, count: int, extra_bases: dict[str, onnx.ModelProto] | None = None) -> list[Mutant]:
    """``count`` mutated ONNX files, spread over the base models and the four mutation families."""
    rng = random.Random(seed)
    bases = {**base_models(), **(extra_bases or {})}
    serialized = {n: _serialize(m) for n, m in bases.items()}
    families = ["bitflip"] * 2 + ["truncate"] + ["field"] * 3 + ["metadata"] * 3
    out = []
    for i in range(count):
        name = rng.choice(sorted(bases))
        family = families[i % len(families)]
        if family == "bitflip":
            what, data = _bitflip(rng, serialized[name])
            bad = False
        elif family == "truncate":
            what, data = _truncate(rng, serialized[name])
            bad = False
        else:
            what, model, bad = (_field if family == "field" else _metadata)(rng, bases[name])
            data = _serialize(model)
        out.append(Mutant(family, f"{name}: {what}", data, name, bad))
    return out


# --------------------------------------------------------------------------------------------------- toml mutations

BASE_TOML = {
    "ref": '"torchvision:resnet18"',
    "input": '["x:Bx3x224x224:float32"]',
    "dim": '["B=1..8"]',
    "labels": '"labels.txt"',
    "device": '"cpu"',
    "trust_pickle": "false",
    "target": '["onnxruntime==1.17"]',
    "allow_static": '["B"]',
    "weights": '"weights.pth"',
    "arch": '"torchvision:resnet18"',
    "output": '"out"',
}
BASE_EXPORT = {"strategy": '"dynamo"', "opset": "18"}
BASE_META = {"owner": '"vision-team"', "revision": "3"}
# Values of the wrong type for each key: every one of these must be refused.
WRONG_TYPES = {
    "ref": ["1", "true", '["a"]', "{ a = 1 }"], "input": ['"x:Bx4:float32"', "1", "[1, 2]", '[["x"]]', "{}"],
    "dim": ['"B=1..8"', "[1]", "true"], "labels": ["1", '["a"]', "false"], "device": ["0", "true", '["cpu"]'],
    "trust_pickle": ['"false"', '"true"', "1", "0", '"yes"', "[]"], "target": ['"onnxruntime==1.17"', "[1]"],
    "allow_static": ['"B"', "[1]"], "weights": ["1", "[]"], "arch": ["1"], "output": ["1", "{}"],
}
WRONG_EXPORT = {"strategy": ['"banana"', "1", "true", '["dynamo"]'],
                "opset": ['"18"', "18.0", "true", "-1", "0", "[18]", '"eighteen"']}
BAD_VALUES = {"input": ['["x:1x3xx224:float32"]', '["x"]', '["x:-1x3:float32"]', f'["x:{"9" * 30}x3:float32"]'],
              "dim": ['["B=9..1"]', '["B"]', '["B=1..8@16"]'], "labels": ['"no-such-labels.txt"', '""'],
              "device": ['"banana"', '"cuda:x"', '""'], "allow_static": ['["not a name"]']}
TYPO_KEYS = {"ref": "reff", "input": "inputs", "dim": "dims", "labels": "label", "trust_pickle": "trust-pickle",
             "device": "devcie", "target": "targets", "output": "ouptut"}
TYPO_EXPORT = {"opset": "opest", "strategy": "stratgy"}


def _render_toml(top: dict[str, str], export: dict[str, str] | None, meta: dict[str, str] | None,
                 extra_sections: str = "") -> str:
    lines = [f"{k} = {v}" for k, v in top.items()]
    if export is not None:
        lines += ["[export]"] + [f"{k} = {v}" for k, v in export.items()]
    if meta is not None:
        lines += ["[meta]"] + [f"{k} = {v}" for k, v in meta.items()]
    return "\n".join(lines) + "\n" + extra_sections


def toml_mutants(seed: int, count: int) -> list[Mutant]:
    rng = random.Random(seed)
    base_text = _render_toml(BASE_TOML, BASE_EXPORT, BASE_META)
    out = []
    kinds = ["wrong_type", "wrong_export", "bad_value", "typo", "typo_export", "meta", "section", "bitflip",
             "truncate", "utf8", "huge", "dup"]
    for i in range(count):
        kind = kinds[i % len(kinds)]
        top, export, meta = dict(BASE_TOML), dict(BASE_EXPORT), dict(BASE_META)
        extra, must_fail = "", True
        if kind == "wrong_type":
            key = rng.choice(sorted(WRONG_TYPES))
            top[key] = rng.choice(WRONG_TYPES[key])
            what = f"{key} = {top[key]}"
        elif kind == "wrong_export":
            key = rng.choice(sorted(WRONG_EXPORT))
            export[key] = rng.choice(WRONG_EXPORT[key])
            what = f"[export] {key} = {export[key]}"
        elif kind == "bad_value":
            key = rng.choice(sorted(BAD_VALUES))
            top[key] = rng.choice(BAD_VALUES[key])
            what = f"{key} = {top[key]}"
        elif kind == "typo":
            key = rng.choice(sorted(TYPO_KEYS))
            top[TYPO_KEYS[key]] = top.pop(key)
            what = f"key {key} misspelt {TYPO_KEYS[key]}"
        elif kind == "typo_export":
            key = rng.choice(sorted(TYPO_EXPORT))
            export[TYPO_EXPORT[key]] = export.pop(key)
            what = f"[export] key {key} misspelt {TYPO_EXPORT[key]}"
        elif kind == "meta":
            meta["evil"] = rng.choice(["{ a = 1 }", "[1, 2]", "true", "1979-05-27", '["x"]'])
            what = f"[meta] evil = {meta['evil']}"
        elif kind == "section":
            choice = rng.choice(["export_scalar", "meta_scalar", "unknown_section", "nested", "export_list"])
            if choice == "export_scalar":
                export = None
                top["export"] = '"dynamo"'
            elif choice == "meta_scalar":
                meta = None
                top["meta"] = '"owner"'
            elif choice == "export_list":
                export = None
                top["export"] = '["dynamo"]'
            elif choice == "unknown_section":
                extra = "[exprot]\nopset = 18\n"
            else:
                extra = "[export.deep]\nx = 1\n"
            what = f"section {choice}"
        elif kind in ("bitflip", "truncate"):
            data = base_text.encode()
            what, data = (_bitflip if kind == "bitflip" else _truncate)(rng, data)
            out.append(Mutant("toml", what, data, expect_fail=False))
            continue
        elif kind == "utf8":
            data = base_text.encode()
            i = rng.randrange(len(data))
            out.append(Mutant("toml", f"invalid UTF-8 at {i}", data[:i] + BAD_UTF8 + data[i:], expect_fail=True))
            continue
        elif kind == "huge":
            choice = rng.choice(["opset", "dim", "input"])
            if choice == "opset":
                export["opset"] = rng.choice(["99999999999999999999999", "-99999999999999999999", "inf", "nan"])
            elif choice == "dim":
                top["dim"] = f'["B=1..{10**30}"]'
            else:
                top["input"] = f'["x:{2**70}x3:float32"]'
            what = f"huge {choice}"
        else:  # dup
            text = "ref = 'again'\n" + _render_toml(top, export, meta)
            out.append(Mutant("toml", "duplicate key", text.encode(), expect_fail=True))
            continue
        out.append(Mutant("toml", what, _render_toml(top, export, meta, extra).encode(), expect_fail=must_fail))
    return out


# --------------------------------------------------------------------------------------------------- cases and probes

@dataclass
class Case:
    family: str  # row of the results table
    probe: str  # inspect | verify | verify-data | toml
    path: str
    what: str
    expect_fail: bool
    extra: list[str] = field(default_factory=list)


def build_cases(root: Path, seed: int, onnx_count: int, toml_count: int,
                extra_bases: dict[str, tuple[onnx.ModelProto, dict[str, np.ndarray]]] | None = None) -> list[Case]:
    """Write the mutants under ``root`` and pair each with its probes. ``extra_bases``: more base models, each with
    a valid feed (the offline run adds a model exported by onnxgate)."""
    root.mkdir(parents=True, exist_ok=True)
    extra_bases = extra_bases or {}
    for name in base_models():
        np.savez(root / f"{name}.npz", **feeds_for(name))
    for name, (_, feed) in extra_bases.items():
        np.savez(root / f"{name}.npz", **feed)
    (root / "labels.txt").write_text("a\nb\n", encoding="utf-8")
    cases = []
    for i, m in enumerate(onnx_mutants(seed, onnx_count, {n: m for n, (m, _) in extra_bases.items()})):
        path = root / f"m{i:06d}.onnx"
        path.write_bytes(m.data)
        cases.append(Case(f"{m.family}/inspect", "inspect", str(path), m.what, m.expect_fail))
        if m.family == "metadata" or i % 2:
            # --data makes verify read the metadata's input specs before anything else (no reference needed)
            cases.append(Case(f"{m.family}/verify", "verify", str(path), m.what, True,
                              ["--data", str(root / f"{m.base}.npz")]))
        else:
            cases.append(Case(f"{m.family}/verify", "verify", str(path), m.what, True))
    for i, m in enumerate(toml_mutants(seed + 1, toml_count)):
        path = root / f"c{i:06d}.toml"
        path.write_bytes(m.data)
        cases.append(Case("toml/load_toml", "toml", str(path), m.what, m.expect_fail))
    return cases


def run_probe(case: Case) -> dict:
    """Run one case in this process. Returns its outcome: ok | clean | traceback | wrong0, and json_ok."""
    if case.probe == "toml":
        from onnxgate.errors import OnnxgateError
        from onnxgate.configure import load_toml

        try:
            load_toml(case.path)
        except OnnxgateError as exc:
            return {"outcome": "clean", "code": int(exc.exit_code), "json_ok": True, "detail": exc.message[:200]}
        except BaseException as exc:  # noqa: BLE001 - that is what is being counted
            return {"outcome": "traceback", "code": 1, "json_ok": True, "detail": _exc_line(exc)}
        return {"outcome": "wrong0" if case.expect_fail else "ok", "code": 0, "json_ok": True, "detail": ""}
    from onnxgate.cli.main import main

    argv = [case.probe, case.path, "--json", *case.extra]
    out, err = io.StringIO(), io.StringIO()
    escaped = None
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(argv)
    except BaseException as exc:  # noqa: BLE001
        escaped = exc
    try:
        json.loads(out.getvalue())
        json_ok = True
    except ValueError:
        json_ok = False
    if escaped is not None:
        return {"outcome": "traceback", "code": 1, "json_ok": json_ok, "detail": _exc_line(escaped)}
    detail = err.getvalue().strip().splitlines()[-1][:200] if err.getvalue().strip() else ""
    if code not in DOCUMENTED_EXIT_CODES:
        return {"outcome": "traceback", "code": code, "json_ok": json_ok, "detail": f"exit {code}: {detail}"}
    if code == 0:
        return {"outcome": "wrong0" if case.expect_fail else "ok", "code": 0, "json_ok": json_ok, "detail": detail}
    return {"outcome": "clean", "code": code, "json_ok": json_ok, "detail": detail}


def _exc_line(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" at {Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else ""
    return f"{type(exc).__name__}: {str(exc)[:150]}{where}"


def _limit_memory(extra_bytes: int) -> None:
    """Cap the worker's address space a few GiB above what it maps now: an unbounded allocation fails with
    MemoryError (counted as a traceback) instead of swapping the machine to death."""
    import resource

    with open("/proc/self/statm") as f:
        mapped = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    resource.setrlimit(resource.RLIMIT_AS, (mapped + extra_bytes, resource.RLIM_INFINITY))


def run_cases(cases: list[Case], results_path: Path, *, case_timeout: int = 60, memory_headroom: int = 6 * 2**30,
              progress=None) -> list[dict]:
    """Run every case in a forked worker; a worker that dies (signal, abort, timeout) marks its case as a crash
    and a new worker resumes with the next case."""
    results: dict[int, dict] = {}
    start = 0
    while start < len(cases):
        results_path.write_text("")
        pid = os.fork()
        if pid == 0:  # the worker
            code = 0
            try:
                _build_cli_once()
                _limit_memory(memory_headroom)
                with open(results_path, "a", encoding="utf-8") as sink:
                    for i in range(start, len(cases)):
                        sink.write(json.dumps({"i": i, "start": True}) + "\n")
                        sink.flush()
                        signal.alarm(case_timeout)
                        res = run_probe(cases[i])
                        signal.alarm(0)
                        sink.write(json.dumps({"i": i, **res}) + "\n")
                        sink.flush()
            except BaseException:  # noqa: BLE001
                code = 3
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        last_started = start
        for line in results_path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if rec.pop("start", False):
                last_started = rec["i"]
            else:
                results[rec.pop("i")] = rec
        if progress:
            progress(len(results))
        if last_started in results:
            break  # the worker went through to the end
        sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
        why = f"killed by signal {signal.Signals(sig).name}" if sig else f"worker exit {os.WEXITSTATUS(status)}"
        results[last_started] = {"outcome": "crash", "code": -(sig or 0), "json_ok": False, "detail": why}
        start = last_started + 1
    return [results[i] for i in range(len(cases))]


COLUMNS = ("tried", "exit 0", "clean error", "traceback", "crash", "wrongly exit 0", "no JSON")


def tabulate(cases: list[Case], results: list[dict]) -> dict[str, Counter]:
    rows: dict[str, Counter] = defaultdict(Counter)
    for case, res in zip(cases, results):
        for key in (case.family, "all"):
            row = rows[key]
            row["tried"] += 1
            row[{"ok": "exit 0", "clean": "clean error", "traceback": "traceback", "crash": "crash",
                 "wrong0": "wrongly exit 0"}[res["outcome"]]] += 1
            if case.probe != "toml" and res["outcome"] != "crash" and not res["json_ok"]:
                row["no JSON"] += 1
    return dict(sorted(rows.items(), key=lambda kv: (kv[0] == "all", kv[0])))


def markdown_table(rows: dict[str, Counter]) -> str:
    lines = ["| family / probe | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for name, row in rows.items():
        label = f"**{name}**" if name == "all" else name
        lines.append(f"| {label} | " + " | ".join(str(row[c]) for c in COLUMNS) + " |")
    return "\n".join(lines)


def failures(cases: list[Case], results: list[dict]) -> list[str]:
    bad = []
    for case, res in zip(cases, results):
        if res["outcome"] in ("traceback", "crash", "wrong0") or (case.probe != "toml" and not res["json_ok"]):
            bad.append(f"{case.family} [{res['outcome']}{'' if res['json_ok'] else ', no JSON'}] {case.what[:120]} "
                       f"({Path(case.path).name}): {res['detail']}")
    return bad


def _preimport() -> None:
    """Import what the probes import once, in the parent, so forked workers do not pay for it per batch."""
    import onnxgate.cli.main  # noqa: F401
    import onnxgate.verify.api  # noqa: F401
    import onnxruntime  # noqa: F401

    with contextlib.suppress(ImportError):  # verify imports torch before it looks at a recorded source
        import torch  # noqa: F401


def _build_cli_once() -> None:
    """In a worker only: build the CLI's click command tree once. typer rebuilds it from the function signatures
    on every ``app()`` call (9 of the 13 ms a probe takes); a real ``onnxgate`` process makes one call, so this
    changes nothing a probe does."""
    import functools

    import typer.main

    if not hasattr(typer.main.get_command, "cache_info"):
        typer.main.get_command = functools.lru_cache(maxsize=4)(typer.main.get_command)


# --------------------------------------------------------------------------------------------------- the test

ONNX_CASES = 2000
TOML_CASES = 400


@pytest.mark.skipif(not hasattr(os, "fork"), reason="the fuzz harness forks a worker per batch")
def test_fuzz_inspect_verify_and_toml(tmp_path):
    _preimport()
    cases = build_cases(tmp_path / "cases", seed=20261129, onnx_count=ONNX_CASES, toml_count=TOML_CASES)
    assert sum(1 for c in cases if c.probe != "toml") >= 2 * 1500 and sum(1 for c in cases if c.probe == "toml") >= 200
    started = time.perf_counter()
    results = run_cases(cases, tmp_path / "results.jsonl")
    rows = tabulate(cases, results)
    print(f"\n{len(cases)} cases in {time.perf_counter() - started:.1f} s\n{markdown_table(rows)}")
    bad = failures(cases, results)
    assert not bad, f"{len(bad)} of {len(cases)} fuzz cases failed:\n" + "\n".join(bad[:40])
    # the families the issue names all ran
    assert {c.family for c in cases} >= {"bitflip/inspect", "truncate/verify", "field/inspect", "metadata/verify",
                                        "toml/load_toml"}


if __name__ == "__main__":  # quick look: python tests/test_fuzz_onnx.py [ONNX_COUNT] [TOML_COUNT]
    import tempfile

    _preimport()
    with tempfile.TemporaryDirectory() as tmp:
        n_onnx = int(sys.argv[1]) if len(sys.argv) > 1 else ONNX_CASES
        n_toml = int(sys.argv[2]) if len(sys.argv) > 2 else TOML_CASES
        cs = build_cases(Path(tmp) / "cases", seed=20261129, onnx_count=n_onnx, toml_count=n_toml)
        t0 = time.perf_counter()
        rs = run_cases(cs, Path(tmp) / "results.jsonl")
        print(f"{len(cs)} cases in {time.perf_counter() - t0:.1f} s")
        print(markdown_table(tabulate(cs, rs)))
        for line in failures(cs, rs)[:60]:
            print(line)
