"""The export corpus (examples/corpus.py): torchvision classifiers of ten families, a detector, a segmenter, timm
models and tiny transformers (encoder, decoder-only LM, encoder-decoder) all export through the ladder and are
proven at their dynamic dims. The per-model table lands in test-artifacts/export_corpus.json."""

import json
from pathlib import Path

import pytest

import onnxgate
from onnxgate.examples.corpus import CORPUS
from onnxgate.spec import ExportConfig, parse_dim, parse_input

pytestmark = pytest.mark.slow
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
ROWS: list[dict] = []


@pytest.fixture(scope="module", autouse=True)
def table():
    yield
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "export_corpus.json").write_text(json.dumps(ROWS, indent=2))


@pytest.mark.parametrize("ref, inputs, dims", CORPUS, ids=[c[0] for c in CORPUS])
def test_corpus_model_exports_and_is_proven(ref, inputs, dims, tmp_path):
    config = ExportConfig(inputs=tuple(map(parse_input, inputs)), dims=tuple(map(parse_dim, dims)))
    result = onnxgate.export(ref, tmp_path / "m.onnx", config=config)
    won = result.attempts[result.winner]
    ROWS.append({"model": ref, "strategy": won.strategy, "opset": won.opset_emitted, "seconds": won.seconds,
                 "peak_mb": won.peak_mb, "fallbacks": result.fallbacks, "max_abs_err": won.max_abs_err,
                 "failed_first": [f"{a.strategy}@{a.opset}: {a.outcome}" for a in result.attempts[:result.winner]]})
    assert result.ok and won.outcome == "ok"
    declared = {d.name for d in config.dims}
    graph_dims = {d for t in result.structure.inputs for d in t.shape if isinstance(d, str)}
    assert declared <= graph_dims, f"declared dynamic dims {declared - graph_dims} are static in the graph"
    assert not won.frozen_dims
