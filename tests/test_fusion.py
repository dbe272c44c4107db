"""Transformer fusions as verified passes: on a tiny BERT, GPT-2 and ViT (random weights, exported by onnxgate) the
fusions keep parity, cut the node count, detect the model type, heads and hidden size from the graph, and a fusion
that breaks parity is rolled back; ``onnxgate run`` on a BERT encoder ships the fused model and says so."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import onnxgate
from onnxgate.transform import fusion, optimize

pytest.importorskip("transformers")

VOCAB = 1000


def tiny_vit():
    """ViTModel: 32x32 images, patches of 8, 2 layers, hidden 64, 4 heads."""
    import torch
    import transformers

    cfg = transformers.ViTConfig(image_size=32, patch_size=8, num_channels=3, hidden_size=64, num_hidden_layers=2,
                                 num_attention_heads=4, intermediate_size=128)
    cfg.return_dict = True
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = transformers.ViTModel(cfg, add_pooling_layer=False).eval()
    return model, {"pixel_values": torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))}


@pytest.fixture(scope="module")
def bert_run(tmp_path_factory):
    """``onnxgate run`` on the tiny BERT (no bench, no bundle): its report and folder."""
    out = tmp_path_factory.mktemp("bert_run") / "out"
    report = onnxgate.run("onnxgate.examples.tiny_transformers:bert", out, bench=None, bundle=False)
    return report, out


@pytest.fixture(scope="module")
def exported(tmp_path_factory, bert_run):
    """name -> the exported ONNX file of each tiny transformer (BERT's comes from the run)."""
    folder = tmp_path_factory.mktemp("fusion")
    paths = {"bert": bert_run[1] / "model.onnx"}
    for name, ref in (("gpt2", "onnxgate.examples.tiny_transformers:gpt2"), ("vit", f"{__file__}:tiny_vit")):
        paths[name] = folder / f"{name}.onnx"
        onnxgate.export(ref, paths[name])
    return paths


def _feed(path: str, seed: int = 5) -> dict[str, np.ndarray]:
    """Fresh inputs, not the verifier's: token ids below the vocabulary, a mask with padding, or pixels."""
    rng = np.random.default_rng(seed)
    feed = {}
    for value in onnx.load(str(path), load_external_data=False).graph.input:
        shape = [d.dim_value for d in value.type.tensor_type.shape.dim]
        if value.name == "input_ids":
            feed[value.name] = rng.integers(0, VOCAB, shape)
        elif value.name == "attention_mask":
            mask = np.ones(shape, np.int64)
            mask[0, -3:] = 0
            feed[value.name] = mask
        else:
            feed[value.name] = rng.standard_normal(shape).astype(np.float32)
    return feed


def _outputs(path, feed):
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]).run(None, feed)


@pytest.mark.parametrize("name, model_type", [("bert", "bert"), ("gpt2", "gpt2"), ("vit", "vit")])
def test_detection_reads_type_heads_and_hidden_size_from_the_graph(exported, name, model_type):
    found = fusion.detect(onnx.load(str(exported[name])))
    assert found.graph is not None, found.reason
    assert (found.graph.model_type, found.graph.num_heads, found.graph.hidden_size) == (model_type, 4, 64)
    assert found.graph.attention_nodes == 2 and len(found.graph.evidence) == 3


@pytest.mark.parametrize("name", ["bert", "gpt2", "vit"])
def test_fusion_keeps_parity_and_cuts_the_node_count(exported, tmp_path, name):
    out = tmp_path / f"{name}.fused.onnx"
    report = optimize(exported[name], out, simplifier=None, level=None)
    assert report.passed and report.output == str(out)
    fused = [r for r in report.records if r.name.startswith("fuse-transformer:") and r.status == "applied"]
    assert fused, [(r.name, r.status, r.message) for r in report.records]
    assert all(r.nodes_after < r.nodes_before for r in fused)
    summary = report.to_dict()["fusion"]
    assert summary["transformer"] and "SkipLayerNormalization" in summary["fused"]
    assert summary["verdict"].startswith("fused (") and "verified" in summary["verdict"]
    ops = Counter(n.op_type for n in onnx.load(str(out)).graph.node)
    assert ops["SkipLayerNormalization"] == 4  # two layers, two residual + LayerNorm each
    # parity judged here, independently of the verifier, on inputs it never saw (a padded mask for text)
    feed = _feed(exported[name])
    for want, got in zip(_outputs(exported[name], feed), _outputs(out, feed)):
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)


def test_a_fusion_that_breaks_parity_is_rolled_back(exported, tmp_path, monkeypatch):
    real = fusion._onnxscript_fuse

    def broken(model):  # the fusion "works", then a LayerNorm's scale is doubled: a wrong rewrite
        out = real(model)
        init = next(i for i in out.graph.initializer
                    if list(i.dims) == [64] and onnx.numpy_helper.to_array(i).any())  # not an all-zero bias
        init.CopyFrom(onnx.numpy_helper.from_array(2 * onnx.numpy_helper.to_array(init), init.name))
        return out

    monkeypatch.setattr(fusion, "_onnxscript_fuse", broken)
    report = optimize(exported["vit"], tmp_path / "vit.onnx", simplifier=None, level=None)
    record = next(r for r in report.records if r.name == "fuse-transformer:onnxscript")
    assert record.status == "rolled_back" and "broke parity" in record.message
    assert "SkipLayerNormalization" not in {n.op_type for n in report.model.graph.node}
    assert "rolled back" in report.to_dict()["fusion"]["verdict"]


def test_a_graph_without_attention_is_left_alone_and_says_why(tmp_path):
    rng = np.random.default_rng(0)
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("MatMul", ["x", "w"], ["h"]), onnx.helper.make_node("Softmax", ["h"], ["y"])], "mlp",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [4, 16])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [4, 10])],
        [onnx.numpy_helper.from_array(rng.standard_normal((16, 10)).astype(np.float32), "w")])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    model.ir_version = 8
    found = fusion.detect(model)
    assert found.graph is None and "not a transformer" in found.reason
    result = fusion.TransformerFusion("onnxruntime")(model)
    assert not result.changed and "not a transformer" in result.details["skipped"]
    path = tmp_path / "mlp.onnx"
    onnx.save(model, str(path))
    assert fusion.fusion_passes(path) == []
    report = optimize(path, tmp_path / "out.onnx", simplifier=None, level=None)
    assert not [r for r in report.records if r.name.startswith("fuse-transformer:")]
    assert report.to_dict()["fusion"] is None


def test_run_on_a_bert_encoder_ships_the_fused_model_and_says_so(bert_run):
    report, out = bert_run
    assert report.verdict == "pass", report.reason
    stage = report.stages["optimize"]
    assert stage["path"] == str(out / "model.opt.onnx")
    assert stage["fusion"]["applied"] and stage["fusion"]["detected"]["model_type"] == "bert"
    assert "verified" in stage["fusion"]["verdict"]
    ops = {n.op_type for n in onnx.load(str(out / "model.opt.onnx")).graph.node}
    assert {"SkipLayerNormalization", "BiasGelu"} <= ops
    written = json.loads((out / "report.json").read_text())
    assert written["stages"]["optimize"]["fusion"]["verdict"] == stage["fusion"]["verdict"]
