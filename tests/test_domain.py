"""Shape-domain discovery (issue 12, Build 1) and degenerate references (Build 7): every dynamic dim is verified
at sizes of different divisibility and at both range ends; a model that only works at multiples of its patch size,
or only up to its position table, gets a verified domain narrower than the declaration — named, failing with the
parity code unless accepted, and then claimed by the metadata and the bundle. A comparison that cannot fail is
"not verifiable with these weights", never a pass."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from torch import nn

import onnxgate
from onnxgate.cli.main import main
from onnxgate.errors import ExitCode, ParityError
from onnxgate.outcome import judge
from onnxgate.spec import Dim, ExportConfig, parse_dim, parse_input
from onnxgate.verify.compare import Tolerance, agreement, compare_outputs
from onnxgate.verify.domain import (
    DomainBudget,
    ProbeOutcome,
    discover,
    extra_sizes,
    graph_granularities,
)
from onnxgate.verify.parity import degenerate_outputs
from onnxgate.verify.shapes import probe_sizes


def synthetic(works, by="onnxruntime"):
    """A probe function over sizes, and the sizes it was asked for."""
    asked: list[int] = []

    def run(size):
        asked.append(size)
        return ProbeOutcome(True) if works(size) else ProbeOutcome(False, by, f"fails at {size}")
    return run, asked


def found(text, works, by="onnxruntime", granularities=(2, 4, 8, 16, 32), **kw):
    dim = parse_dim(text)
    run, asked = synthetic(works, by)
    domain = discover(dim, run, required=probe_sizes(dim)[1:], granularities=granularities, **kw)
    assert len(asked) == len(set(asked)), "a size ran twice"
    return domain, asked


# ---------------------------------------------------------------------------------------- discovery, synthetic

def test_multiples_of_64_are_found_and_the_telling_failure_named():
    domain, _ = found("H=64..1024@256", lambda s: s % 64 == 0)
    assert (domain.verified_min, domain.verified_max, domain.multiple_of) == (64, 1024, 64)
    assert domain.narrower and domain.describe() == "multiples of 64 in 64..1024"
    assert domain.telling_failure().size % 32 == 0  # a multiple of 32 that fails: why 64, not 32
    assert "H: multiples of 64 in 64..1024 (declared 64..1024); fails at" in domain.summary()
    assert all(f.by == "onnxruntime" for f in domain.failures)


def test_a_range_end_pytorch_rejects_is_found_by_bisection():
    domain, asked = found("S=4..600@32", lambda s: s <= 512, by="pytorch")
    assert (domain.verified_min, domain.verified_max, domain.multiple_of) == (4, 512, 1)
    assert {512, 513} <= set(asked) and 600 in asked
    assert "last working size 512" in domain.summary() and "fails at 513 (pytorch" in domain.summary()
    assert domain.as_dim() == Dim("S", 4, 512, 32)


def test_a_domain_that_holds_is_not_narrower_and_probes_other_divisibilities():
    domain, asked = found("H=160..288@224", lambda s: True)
    assert not domain.narrower and not domain.failures and domain.describe() == "160..288"
    assert {160, 224, 288} <= set(domain.probes) and 224 not in asked  # the traced size was checked already
    assert any(s % 2 for s in asked), "no size that is a multiple of none of the granularities"
    for g in (8, 16, 32):
        assert any(s % (2 * g) == g for s in asked), f"no odd multiple of {g}"
    assert len(asked) <= len(probe_sizes(parse_dim("H=160..288@224"))) - 1 + DomainBudget().extra_probes


def test_a_dim_that_works_only_at_its_traced_size_stops_early():
    domain, asked = found("B=1..16@2", lambda s: s == 2)
    assert domain.only_traced and domain.describe() == "only 2"
    assert sorted(asked) == [1, 3, 7, 16]  # the fixed probes, nothing more


def test_a_declared_granularity_is_respected_and_not_narrower():
    domain, asked = found("H=64..512@256%64", lambda s: s % 64 == 0)
    assert all(s % 64 == 0 for s in asked) and not domain.narrower and domain.multiple_of == 64


def test_extras_are_bounded_and_cheapest_first():
    dim = parse_dim("H=32..4096@256")
    sizes = extra_sizes(dim, probe_sizes(dim), [2, 4, 8, 16, 32, 64, 128], budget=DomainBudget())
    assert sizes == sorted(sizes) and len(sizes) <= DomainBudget().extra_probes


def test_the_probe_budget_skips_and_names_what_it_skipped():
    """Refinement is bounded by a count of probes: a size it leaves out is named, never run."""
    domain, asked = found("H=64..1024@256", lambda s: s % 64 == 0, budget=DomainBudget(refine_steps=1))
    assert domain.skipped and not set(domain.skipped) & set(asked)


def test_the_claim_does_not_depend_on_how_fast_the_machine_is(monkeypatch):
    """Issue 25: a budget in seconds gave near-identical models different claims on a busy machine. With a clock
    that runs 1000x faster than the probes (every probe "takes" minutes), discovery runs the same sizes and claims
    the same domain as on an idle machine."""
    import types

    from onnxgate.verify import domain as module

    cases = [("H=64..1024@256", lambda s: s % 64 == 0), ("W=64..512@224", lambda s: s <= 400),
             ("H=32..@224", lambda s: s % 32 == 0)]
    idle = [found(text, works) for text, works in cases]
    ticks = iter(range(0, 10**9, 300))  # every reading of the clock: 300 s later
    monkeypatch.setattr(module, "time", types.SimpleNamespace(perf_counter=lambda: float(next(ticks))))
    busy = [found(text, works) for text, works in cases]
    for (a, asked_a), (b, asked_b) in zip(idle, busy):
        assert asked_a == asked_b and b.seconds > 0
        assert {**a.to_dict(), "seconds": 0} == {**b.to_dict(), "seconds": 0}


def test_the_default_budget_finds_a_range_wrong_only_above_400():
    """The old full sweep's finding, kept: declared 64..512, wrong above 400 (an edge that is no range end, no
    multiple of anything): bisection names 400 as the last working size and 401 as failing."""
    domain, asked = found("H=64..512@224", lambda s: s <= 400)
    assert (domain.verified_min, domain.verified_max, domain.multiple_of) == (64, 400, 1)
    assert {400, 401} <= set(asked) and "last working size 400" in domain.summary()


def test_the_default_budget_finds_a_model_wrong_off_multiples_of_32():
    domain, _ = found("H=32..1024@224", lambda s: s % 32 == 0, granularities=(2, 4, 8, 16, 32))
    assert (domain.verified_min, domain.verified_max, domain.multiple_of) == (32, 1024, 32)
    assert domain.telling_failure().size % 16 == 0  # a multiple of 16 that fails: why 32, not 16


def test_strides_and_patch_sizes_are_read_from_the_graph(tmp_path):
    from onnx import helper

    from onnxgate.verify.domain import _strides

    nodes = [helper.make_node("Conv", ["x", "w"], ["a"], strides=[2, 2], kernel_shape=[3, 3]),
             helper.make_node("Conv", ["a", "w2"], ["b"], strides=[16, 16], kernel_shape=[16, 16]),
             helper.make_node("Relu", ["b"], ["c"])]
    graph = helper.make_graph(nodes, "g", [], [])
    assert _strides(graph, 256) == [2, 16, 32]  # cumulative 2, 32, and the 16x16 patch embedding
    assert graph_granularities(tmp_path / "missing.onnx") == []


# ------------------------------------------------------------------------------------------- real exports

class PatchNet(nn.Module):
    """A CNN that cuts its feature map into 32x32 patches with a reshape: only multiples of 32 work."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4 * 32 * 32, 5)

    def forward(self, x):
        x = self.stem(x)
        b, c, h, w = x.shape
        patches = x.reshape(b, c, h // 32, 32, w // 32, 32).permute(0, 2, 4, 1, 3, 5).reshape(b, -1, c * 32 * 32)
        return self.head(patches).mean(1)


PATCH_CONFIG = {"inputs": (parse_input("x:Bx3xHxW:float32"),),
                "dims": (parse_dim("B=1..3"), parse_dim("H=64..256@128"), parse_dim("W=64..256@128"))}


def test_stride_32_patches_fail_export_naming_the_granularity(tmp_path):
    with pytest.raises(ParityError) as info:
        onnxgate.export(PatchNet().eval(), tmp_path / "p.onnx", config=ExportConfig(**PATCH_CONFIG))
    assert info.value.exit_code == ExitCode.PARITY_FAILED
    message = info.value.message
    assert "H: multiples of 32 in 64..256 (declared 64..256)" in message and "W: multiples of 32" in message
    assert "fails at" in message and "--accept-domain" in info.value.hint
    assert not (tmp_path / "p.onnx").exists()
    domain = info.value.result.attempts[info.value.result.winner].parity.domains["H"]
    assert domain.multiple_of == 32 and any(f.by == "pytorch" for f in domain.failures)


def test_accepted_domain_is_what_the_metadata_claims_and_verify_reads(tmp_path):
    path = tmp_path / "p.onnx"
    result = onnxgate.export(PatchNet().eval(), path, config=ExportConfig(**PATCH_CONFIG, accept_domain=True))
    dims = json.loads({p.key: p.value for p in onnx.load(str(path)).metadata_props}["onnxgate.dims"])
    assert dims["H"] == {"name": "H", "min": 64, "max": 256, "example": 128, "multiple_of": 32}
    assert result.dims["W"]["multiple_of"] == 32 and dims["B"]["multiple_of"] is None
    verified = onnxgate.verify(path, PatchNet().eval())
    assert verified.passed, judge(verified).reason
    assert verified.domains["H"].multiple_of == 32 and not verified.domains["H"].narrower
    assert all(s % 32 == 0 for s in verified.domains["H"].probes)
    assert verified.to_dict()["domains"]["W"]["verified_max"] == 256


def test_verify_without_accept_domain_fails_on_the_declared_range(tmp_path, capsys):
    path = tmp_path / "p.onnx"
    onnxgate.export(PatchNet().eval(), path, config=ExportConfig(**PATCH_CONFIG, accept_domain=True))
    declared = ExportConfig(dims=(parse_dim("H=64..256@128"),))
    result = onnxgate.verify(path, PatchNet().eval(), config=declared, localize=False)
    assert not result.passed and judge(result).exit_code == ExitCode.PARITY_FAILED
    assert "--accept-domain" in judge(result).hint
    assert onnxgate.verify(path, PatchNet().eval(), config=declared, accept_domain=True, localize=False).passed


class PositionTable(nn.Module):
    """A learned table of 400 rows along H: every size up to 400 works, PyTorch itself fails above it."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.pos = nn.Parameter(torch.randn(1, 4, 400, 1))

    def forward(self, x):
        y = self.stem(x)
        return (y + self.pos[:, :, :y.shape[2]]).mean((2, 3))


def test_a_real_claim_is_the_same_beside_a_cpu_hog(tmp_path):
    """Issue 25: the same model and declaration give the same claim anywhere. The verified domain of a model
    wrong above H = 400 in a declared 64..512 is discovered on an idle machine and again beside busy-looping
    processes (one per core, killed at the end): the same sizes probed, the same claim."""
    import os
    import subprocess
    import sys

    path = tmp_path / "pos.onnx"
    model = PositionTable().eval()
    torch.onnx.export(model, (torch.randn(1, 3, 224, 8),), str(path), dynamo=False, input_names=["x"],
                      output_names=["output"], dynamic_axes={"x": {2: "H"}}, opset_version=17)
    declared = ExportConfig(dims=(parse_dim("H=64..512@224"),))

    def claim():
        verified = onnxgate.verify(path, PositionTable().eval(), config=declared, accept_domain=True, localize=False)
        return {k: v for k, v in verified.domains["H"].to_dict().items() if k != "seconds"}

    idle = claim()
    hog = "import time\nend = time.monotonic() + 120\nwhile time.monotonic() < end: pass\n"
    hogs = [subprocess.Popen([sys.executable, "-c", hog]) for _ in range(os.cpu_count() or 1)]
    try:
        busy = claim()
    finally:
        for p in hogs:
            p.kill()
            p.wait()
    assert busy == idle
    assert (idle["verified_min"], idle["verified_max"], idle["multiple_of"]) == (64, 400, 1)
    assert 401 in [f["size"] for f in idle["failures"]] and idle["narrower"]


BERT_512 = '''
def build():
    import torch, transformers
    cfg = transformers.BertConfig(vocab_size=1000, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=512)
    torch.manual_seed(0)
    model = transformers.BertModel(cfg).eval()
    ids = torch.randint(0, 1000, (2, 32), generator=torch.Generator().manual_seed(0))
    return model, {"input_ids": ids, "attention_mask": torch.ones(2, 32, dtype=torch.int64)}
'''
BERT_FLAGS = ["--input", "input_ids:BxS:int64:0..999", "--input", "attention_mask:BxS:int64:1..1",
              "--dim", "B=1..2", "--dim", "S=4..600@32"]


def test_bert_past_its_position_table_exits_4_naming_512(tmp_path, capsys):
    pytest.importorskip("transformers")
    (tmp_path / "bert512.py").write_text(BERT_512)
    code = main(["export", f"{tmp_path / 'bert512.py'}:build", "-o", str(tmp_path / "b.onnx"), *BERT_FLAGS])
    err = " ".join(capsys.readouterr().err.split())
    assert code == ExitCode.PARITY_FAILED
    assert "S: 4..512 (declared 4..600; last working size 512); fails at 513 (pytorch:" in err


def test_bert_with_accept_domain_bundles_4_to_512(tmp_path, capsys):
    pytest.importorskip("transformers")
    (tmp_path / "bert512.py").write_text(BERT_512)
    out = tmp_path / "out"
    code = main(["run", f"{tmp_path / 'bert512.py'}:build", "-o", str(out), *BERT_FLAGS, "--accept-domain",
                 "--bench", "none", "--no-optimize"])
    assert code == 0, capsys.readouterr().err
    manifest = json.loads((out / "bundle" / "manifest.json").read_text())
    assert {k: manifest["domain"]["S"][k] for k in ("min", "max", "multiple_of")} == {"min": 4, "max": 512,
                                                                                     "multiple_of": None}
    assert manifest["domain"]["S"]["verified"]["declared_max"] == 600
    report = json.loads((out / "report.json").read_text())
    assert report["stages"]["verify"]["domains"]["S"]["verified_max"] == 512


@pytest.mark.slow
def test_timm_mobilevit_works_only_at_multiples_of_64(tmp_path):
    timm = pytest.importorskip("timm")
    name = next((n for n in ("mobilevit_xxs", "mobilevitv2_050") if n in timm.list_models()), None)
    if name is None:
        pytest.skip("this timm has no MobileViT")
    config = ExportConfig(inputs=(parse_input("x:1x3xHxW:float32"),),
                          dims=(parse_dim("H=64..512@256"), parse_dim("W=64..512@256")))
    with pytest.raises(ParityError) as info:
        onnxgate.export(f"timm:{name}", tmp_path / "m.onnx", config=config)
    assert info.value.exit_code == ExitCode.PARITY_FAILED
    domain = info.value.result.attempts[info.value.result.winner].parity.domains["W"]
    assert domain.multiple_of == 64 and domain.narrower, domain.summary()
    assert "multiples of 64" in info.value.message and "fails at" in info.value.message
    assert any(f.size % 32 == 0 and f.size % 64 for f in domain.failures)  # e.g. 160: a multiple of 32 fails


# ------------------------------------------------------------------------------------ degenerate references

class ZeroHead(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Linear(8, 8)
        self.head = nn.Linear(8, 3)
        nn.init.zeros_(self.head.weight)  # a fresh head: every input gives the bias

    def forward(self, x):
        return self.head(torch.relu(self.body(x)))


def test_a_constant_reference_is_not_verifiable_not_a_pass(tmp_path, capsys):
    cfg = ExportConfig(inputs=(parse_input("x:Bx8:float32"),), dims=(parse_dim("B=1..4"),))
    with pytest.raises(ParityError) as info:
        onnxgate.export(ZeroHead().eval(), tmp_path / "z.onnx", config=cfg)
    assert "not verifiable with these weights" in info.value.message
    assert "does not depend on the input" in info.value.message
    assert "--reinit-degenerate" in info.value.hint and "real data" in info.value.hint
    result = onnxgate.export(ZeroHead().eval(), tmp_path / "z.onnx", config=ExportConfig(
        inputs=cfg.inputs, dims=cfg.dims, reinit_degenerate=True))
    assert result.ok


class ConstantOut(nn.Module):
    """Constant outputs with no all-zero weight: --reinit-degenerate changes nothing."""
    def __init__(self):
        super().__init__()
        self.bias = nn.Parameter(torch.ones(3))

    def forward(self, x):
        return x[:, :3] * 0 + self.bias


def test_a_reference_still_degenerate_after_reinit_is_not_told_to_reinit(tmp_path):
    """Issue 27 item 7: the zoo's ShuffleNet sets --reinit-degenerate and was told to pass it."""
    cfg = ExportConfig(inputs=(parse_input("x:Bx8:float32"),), dims=(parse_dim("B=1..4"),), reinit_degenerate=True)
    with pytest.raises(ParityError) as info:
        onnxgate.export(ConstantOut().eval(), tmp_path / "c.onnx", config=cfg)
    assert "not verifiable with these weights" in info.value.message
    assert info.value.hint.startswith("--reinit-degenerate is already on") and "--weights" in info.value.hint


def test_verify_of_a_degenerate_reference_fails_with_the_way_out(tmp_path):
    model = ZeroHead().eval()
    path = tmp_path / "z.onnx"
    torch.onnx.export(model, (torch.randn(2, 8),), str(path), dynamo=False, input_names=["x"],
                      output_names=["output"], dynamic_axes={"x": {0: "B"}}, opset_version=17)
    result = onnxgate.verify(path, model)
    outcome = judge(result)
    assert not result.passed and outcome.exit_code == ExitCode.PARITY_FAILED
    assert "not verifiable with these weights" in outcome.reason and "--reinit-degenerate" in outcome.hint
    assert "real data" in outcome.hint and result.localization is None  # nothing diverged: nothing to localize


def test_tied_detection_scores_cannot_be_compared():
    rng = np.random.default_rng(0)

    def detections():  # random boxes, every score 0.011: which ones survive NMS is arbitrary
        xy = rng.uniform(0, 200, (50, 2))
        return {"boxes": np.concatenate([xy, xy + 20], 1).astype(np.float32),
                "scores": np.full(50, 0.011, np.float32), "labels": np.ones(50, np.int64)}
    found = degenerate_outputs([detections(), detections()], [], None, None)
    assert set(found) >= {"boxes", "scores"} and "tie" in found["boxes"]
    real = {"boxes": detections()["boxes"], "scores": rng.uniform(0.1, 1, 50).astype(np.float32),
            "labels": rng.integers(0, 5, 50)}
    other = {k: v.copy() for k, v in real.items()}
    other["scores"] = rng.uniform(0.1, 1, 50).astype(np.float32)
    assert "scores" not in degenerate_outputs([real, other], [], None, None)


def test_real_data_that_discriminates_is_a_way_out():
    flat = {"y": np.full((2, 3), 0.5, np.float32)}
    assert degenerate_outputs([flat, flat], [], None, None)
    varied = [{"y": np.full((2, 3), v, np.float32)} for v in (0.1, 0.9)]
    assert degenerate_outputs([flat, flat], varied, None, None) == {}


def test_a_success_message_never_quotes_an_error_above_its_tolerance():
    ref = np.zeros(64, np.float32)
    ref[::8] = np.linspace(-4.8e8, 4.8e8, 8)  # a random-weight net's huge activations, zero elsewhere
    got = ref + np.float32(294.0)  # far above atol, but tiny against the output's scale
    (comp,) = compare_outputs({"y": ref}, {"y": got})
    assert comp.passed and comp.scale_relative and comp.max_abs_err > comp.tolerance.atol
    text = agreement([comp])
    assert "of its tolerance" in text and "2.9e2" not in text and "294" not in text
    (small,) = compare_outputs({"y": np.ones(4, np.float32)}, {"y": np.ones(4, np.float32) + 1e-6},
                               default=Tolerance(1e-3, 1e-4))
    assert "max abs err 9.5e-7" in agreement([small])  # within atol: quoted


def test_a_mobilevit_like_ceil_chain_is_claimed_at_its_safe_granularity():
    """MobileViT works where ceil(W/8), ceil(W/16) and ceil(W/32) are all even: 250 works, 160 does not. A lucky
    draw must not make the domain "even sizes": every granularity is validated across its interval."""
    import math

    domain, _ = found("W=64..512@256", lambda s: all(math.ceil(s / k) % 2 == 0 for k in (8, 16, 32)))
    assert (domain.multiple_of, domain.verified_min, domain.verified_max) == (64, 64, 512)
    assert domain.telling_failure().size == 160


def test_reference_outputs_run_once_per_feed_while_their_owner_keeps_them(tmp_path):
    """No global cache (issue 24): a ``ReferenceRuns`` its caller owns runs each feed once (a failure is a result
    too), a new one runs it again; ``verify`` over two runtimes runs each PyTorch feed once for both."""
    from onnxgate.runtimes.torch_runner import TorchRunner
    from onnxgate.verify.parity import ReferenceRuns

    model = nn.Linear(4, 2).eval()
    calls = []
    model.register_forward_pre_hook(lambda *_: calls.append(1))
    feed = {"x": np.ones((3, 4), np.float32)}
    runs = ReferenceRuns(TorchRunner(model, input_names=["x"]))
    first = runs.run(feed)
    again = runs.run({"x": feed["x"].copy()})  # the same feed in other arrays
    assert len(calls) == 1 and runs.runs == 1 and np.array_equal(first["output"], again["output"])
    again["output"][:] = 0  # the caller's copy, not the kept one
    assert np.array_equal(runs.run(feed)["output"], first["output"])
    wrong = {"x": np.ones((3, 5), np.float32)}
    for _ in range(2):  # the reference's failure is a result too: kept, raised again
        with pytest.raises(Exception, match="shapes cannot be multiplied"):
            runs.run(wrong)
    assert len(calls) == 2
    ReferenceRuns(TorchRunner(model, input_names=["x"])).run(feed)  # another owner: nothing shared
    assert len(calls) == 3
    path = tmp_path / "m.onnx"
    torch.onnx.export(model, (torch.randn(2, 4),), str(path), dynamo=False, input_names=["x"],
                      output_names=["output"], dynamic_axes={"x": {0: "B"}}, opset_version=17)
    pytest.importorskip("openvino")
    calls.clear()
    result = onnxgate.verify(path, model, runtimes=("onnxruntime", "openvino"), rtol=1e-3, atol=1e-4)  # no noise runs
    (ort, ov) = result.parities
    assert result.passed and len(ort.cases) == len(ov.cases) > 2 and len(calls) == len(ort.cases)
