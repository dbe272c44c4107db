"""The export's own cost (issue 25, items 2-3): a dim the capture pins is frozen as soon as captured (no conversion,
no parity run), and a dim pinned by a Python branch on a size comparison — timm tiny_vit's
``if H == self.window_size and W == self.window_size`` — skips the capture variants that would evaluate the same
branch (Dim.AUTO, strict, draft), named in the attempts table. A size turned into a Python int another way
(``int()``) rules nothing out: strict capture may keep it symbolic."""

import os
import sys

import pytest
import torch
from torch import nn

import onnxgate
from onnxgate.errors import ParityError
from onnxgate.export.ladder import FROZEN_DIM, SKIPPED
from onnxgate.export.prepare import prepare
from onnxgate.export.strategies import SpecializedDims, _capture, _dynamic_shapes
from onnxgate.sources import LoadedModel
from onnxgate.spec import ExportConfig, parse_dim, parse_input

DIMS = ["B=1..4", "H=160..320@224", "W=160..320@224"]


def cfg(**kw):
    return ExportConfig(inputs=(parse_input("x:Bx3xHxW:float32"),), dims=tuple(map(parse_dim, DIMS)), **kw)


class Window(nn.Module):
    """tiny_vit's block in small: the window attention's shortcut taken when the feature map is one window."""

    def __init__(self):
        super().__init__()
        self.window_size = 7
        self.conv = nn.Conv2d(3, 4, 3, stride=32, padding=1)

    def forward(self, x):
        x = self.conv(x)
        B, C, H, W = x.shape
        if H == self.window_size and W == self.window_size:
            return x * 2
        return x + 1


class IntOfSize(Window):
    def forward(self, x):
        x = self.conv(x)
        h = int(x.shape[2])  # a Python int: non-strict capture pins H, strict capture keeps it symbolic
        return x.reshape(x.shape[0], x.shape[1], h, -1) + 1


def capture(module, allow_static=()):
    """The non-strict capture of ``module`` at the declared dims (raises SpecializedDims when it pins one)."""
    prepared = prepare(LoadedModel(module.eval(), "m", example_inputs={"x": torch.randn(2, 3, 224, 224)}), cfg())
    return _capture(prepared, "nonstrict", _dynamic_shapes(prepared), [], allow_static=allow_static)


def pinned(module) -> SpecializedDims:
    with pytest.raises(SpecializedDims) as info:
        capture(module)
    return info.value


def test_a_capture_that_pins_a_dim_says_which_guard_did_it_and_whether_it_was_a_size_branch():
    err = pinned(Window())
    by_dim = {d.dim: d for d in err.dims}
    assert set(by_dim) == {"H", "W"} and by_dim["H"].value == 224
    h = by_dim["H"]
    assert h.branch, h
    assert any(g.kind == "branch" and "if H == self.window_size" in (g.code or "") for g in h.guards)
    assert "a Python branch on a size comparison at" in h.why() and __file__ in h.why()
    err = pinned(IntOfSize())  # pinned too, but by int(), which strict capture may keep symbolic
    assert "H" in {d.dim for d in err.dims}
    assert not any(d.branch for d in err.dims), [d.guards for d in err.dims]
    assert any(g.kind == "conversion" for d in err.dims for g in d.guards)
    # allowed static: the capture goes on and returns the program
    program = capture(Window(), allow_static=("H", "W"))
    assert hasattr(program, "graph_signature")


def test_a_dim_frozen_by_a_size_branch_is_refused_without_the_capture_variants(tmp_path):
    """The tiny_vit-class refusal: the non-strict rung is frozen at capture (never converted), TorchScript runs and
    freezes H too, and Dim.AUTO, strict and draft capture are listed as not run, saying why."""
    notes = []
    with pytest.raises(ParityError) as info:
        onnxgate.export(Window(), tmp_path / "w.onnx", config=cfg(), progress=notes.append)
    attempts = info.value.result.attempts
    dynamo = attempts[0]
    assert (dynamo.strategy, dynamo.variant, dynamo.outcome) == ("dynamo", None, FROZEN_DIM)
    assert dynamo.path is None and "not converted" in dynamo.error
    assert {s["dim"] for s in dynamo.specialized} == {"H", "W"}
    assert "attempt 1/4: checking and running in onnxruntime" not in notes  # stopped at the capture
    ran = [(a.strategy, a.variant) for a in attempts if a.outcome != SKIPPED]
    assert ran == [("dynamo", None), ("torchscript", None)]
    variants = {a.variant: a for a in attempts if a.variant}
    assert set(variants) == {"auto-dims", "strict", "draft"}
    for a in variants.values():
        assert a.outcome == SKIPPED and a.error_class == "frozen_dim"
        assert "by a Python branch on a size comparison" in a.error and "if H == self.window_size" in a.error
    message = info.value.message
    assert "torch.export specialized H to 224 while capturing" in message
    assert "Not run, as they cannot change frozen_dim" in message and "Capture variants tried" not in message
    assert (tmp_path / "w.rejected.onnx").exists()  # TorchScript's frozen graph, kept for localization


def test_the_shape_audit_reads_shapes_without_copying_outputs():
    """graph_shapes._run_shapes (issue 25 item 2: the vit_b_16 export's peak was the audit's exposed activations
    copied into numpy): with an onnxruntime session the shapes come from its OrtValues and match what ``run`` returns;
    a runner without a session (FakeRunner) is read through ``run``."""
    import numpy as np

    from helpers import mlp
    from onnxgate.export.graph_shapes import _run_shapes
    from onnxgate.runtimes.fake import FakeRunner
    from onnxgate.runtimes.ort import OrtRunner

    runner = OrtRunner(mlp().SerializeToString())
    for batch in (1, 3):
        feed = {"x": np.ones((batch, 16), np.float32)}
        assert _run_shapes(runner, feed) == {k: v.shape for k, v in runner.run(feed).items()} == {"y": (batch, 10)}
    fake = FakeRunner({"y": np.zeros((2, 10), np.float32)})
    assert _run_shapes(fake, {"x": np.ones((2, 16), np.float32)}) == {"y": (2, 10)}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_freed_heap_memory_is_handed_back_between_the_ladders_phases():
    """worker.release_freed_memory (issue 25 item 2): memory freed inside the heap (below glibc's mmap threshold,
    under a chunk still in use) stays resident until trimmed; the ladder trims after each judge and the audit
    (vit_b_16: ~1 GB its quick check had freed was still resident when the audit started)."""
    from onnxgate.worker import release_freed_memory

    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    chunks = [bytearray(100_000) for _ in range(2000)]  # ~200 MB, each chunk below the mmap threshold
    for chunk in chunks:
        chunk[::4096] = b"\x01" * len(chunk[::4096])  # touched: resident
    keep = chunks[-1]  # the heap's top stays in use: free() alone cannot shrink it
    del chunks
    before = rss()
    assert release_freed_memory()
    assert before - rss() > 150 * 2**20, (before, rss())
    assert len(keep) == 100_000


def test_the_proof_judged_again_at_the_noise_reuses_every_output(tmp_path):
    """The ladder's winner judged a second time (at the model's measured float32 noise, after a numeric miss at the
    dtype default) is judged from the same PyTorch and onnxruntime outputs: no feed runs twice (issue 25: a ViT-B
    paid its whole proof twice), and the noise measurement's float32 runs are the proof's."""
    from helpers import tiny_config, tiny_loaded

    from onnxgate.verify.api import export_runs

    config = tiny_config()
    path = tmp_path / "tiny.onnx"
    onnxgate.export(tiny_loaded().module, path, config=config)
    prepared = prepare(tiny_loaded(), config)
    with export_runs(prepared, path) as runs:  # closed on leaving: no session left for a later test's fork
        _judged_twice(prepared, path, config, runs)


def _judged_twice(prepared, path, config, runs):
    from onnxgate.runtimes.torch_runner import TorchRunner
    from onnxgate.verify.api import noise_tolerances, verify_export
    from onnxgate.verify.parity import ReferenceRuns

    first = verify_export(prepared, path, config, runs=runs)
    ran = (runs[0].runs, runs[1].runs)
    assert first.passed and ran[0] >= 5 and ran[1] == ran[0]  # traced seeds, variants, every probed batch size
    tolerances = noise_tolerances(prepared.module, prepared.specs, prepared.dims, prepared.output_names,
                                  run32=runs[0].run)
    alone = ReferenceRuns(TorchRunner(prepared.module, input_names=["x"], output_names=prepared.output_names))
    noise_tolerances(prepared.module, prepared.specs, prepared.dims, prepared.output_names, run32=alone.run)
    assert 0 < runs[0].runs - ran[0] < alone.runs  # the traced feeds' float32 outputs were the proof's
    ran = (runs[0].runs, runs[1].runs)
    again = verify_export(prepared, path, config, runs=runs, tolerances=tolerances or None)
    assert (runs[0].runs, runs[1].runs) == ran  # nothing ran again
    assert [(c.label, c.passed) for c in again.cases] == [(c.label, c.passed) for c in first.cases]
    assert again.claimed_dims(prepared.dims)["B"] == first.claimed_dims(prepared.dims)["B"]



def test_no_feed_runs_twice_in_one_runtime_across_the_quick_check_the_audit_and_the_proof(tmp_path, monkeypatch):
    """Issue 25: the winner's quick check, its proof and a second judgment share their outputs — PyTorch's for the
    whole ladder (``Prepared.reference_runs``), onnxruntime's per judged file (``verify.api.ort_runs``) — so no feed
    runs twice in PyTorch, nor twice in onnxruntime on the same file (a ViT-B ran its traced-size feeds three
    times); and the proof still ran every size it claims."""
    from collections import Counter

    from helpers import tiny_config, tiny_loaded

    from onnxgate.runtimes.ort import OrtRunner
    from onnxgate.runtimes.torch_runner import TorchRunner
    from onnxgate.verify.parity import feed_digest

    torch_runs, ort_runs = Counter(), Counter()
    torch_run, ort_run = TorchRunner.run, OrtRunner.run

    def count_torch(self, feed):
        torch_runs[feed_digest(feed)] += 1
        return torch_run(self, feed)

    def count_ort(self, feed):
        ort_runs[(tuple(self.output_names), feed_digest(feed))] += 1  # the shape audit's probe has more outputs
        return ort_run(self, feed)

    monkeypatch.setattr(TorchRunner, "run", count_torch)
    monkeypatch.setattr(OrtRunner, "run", count_ort)
    result = onnxgate.export(tiny_loaded().module, tmp_path / "tiny.onnx", config=tiny_config())
    assert result.ok
    assert torch_runs and max(torch_runs.values()) == 1, torch_runs.most_common(3)
    # the quick check's session and the proof's (reopened after the audit) never run the same feed twice
    assert ort_runs and max(ort_runs.values()) == 1, ort_runs.most_common(3)
    proven = result.attempts[result.winner].parity
    assert sorted({c.sizes["B"] for c in proven.cases if c.passed}) == [1, 2, 3, 7, 8]
