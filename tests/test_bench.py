"""The benchmark: statistics proven on a simulated clock and on sleeping runners, FLOPs on hand-built graphs,
the recommendation and ratio rules on synthetic results, and a tiny model end to end (library and CLI) checked
against the JSON schema."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper

from onnxgate.bench import BenchSettings, Variant, bench
from onnxgate.bench.flops import count_flops, gemm_peak_gflops
from onnxgate.bench.harness import LatencyStats, downsample, measure
from onnxgate.bench.machine import LoadMonitor, MachineLoad
from onnxgate.bench.report import BenchReport, ConfigResult, VariantInfo
from onnxgate.bench.runners import Config
from onnxgate.bench.startup import measure_startup, save_feed
from onnxgate.bench.verification import Verification
from onnxgate.cli.main import main

jsonschema = pytest.importorskip("jsonschema")

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = json.loads((ROOT / "docs/schemas/bench.schema.json").read_text())
# Tiny budgets: the tests prove the plumbing and the statistics, not the speed of anything.
TINY = BenchSettings.quick(seconds=0.15, warmup_runs=1, runs=20, max_batch=2, throughput_seconds=0.05,
                           peak_seconds=0.05)

TINY_MODEL = '''
import torch


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.head = torch.nn.Linear(8, 10)

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)).mean(dim=(2, 3)))


def build():
    torch.manual_seed(0)
    return Tiny(), torch.randn(2, 3, 16, 16)
'''


def validate(data: dict) -> None:
    jsonschema.validate(data, SCHEMA)


class FakeClock:
    """A clock that only moves when the simulated runner 'runs': statistics become exact."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


# ---- the timing harness -------------------------------------------------------------------------------------------

def test_statistics_are_exact_on_a_simulated_clock():
    clock, calls = FakeClock(), []

    def run():  # the k-th timed run takes k milliseconds (after 2 warm-up calls)
        calls.append(1)
        clock.now += max(len(calls) - 2, 0) * 1e-3

    stats = measure(run, warmup_runs=2, runs=50, seconds=1e9, repeats=2, clock=clock)
    d = stats.to_dict(max_samples=1000)
    assert len(calls) == 102 and d["runs"] == 100
    assert d["samples_ms"] == pytest.approx(list(range(1, 101)))
    assert d["mean_ms"] == pytest.approx(50.5)
    assert d["p50_ms"] == pytest.approx(50.5)
    assert d["p90_ms"] == pytest.approx(90.1)  # linear interpolation: rank 0.9 * 99 = 89.1
    assert d["p99_ms"] == pytest.approx(99.01)
    assert d["std_ms"] == pytest.approx(np.std(np.arange(1, 101), ddof=1))
    assert d["repeats"]["medians_ms"] == pytest.approx([25.5, 75.5])
    assert d["repeats"]["spread"] == pytest.approx(50 / 50.5)


def test_runs_stop_at_the_time_budget_but_never_before_the_minimum():
    clock = FakeClock()

    def run():
        clock.now += 0.25  # exact in binary floating point, so the budget arithmetic is exact too

    assert measure(run, warmup_runs=0, runs=1000, seconds=1.0, repeats=1, clock=clock).runs == 4
    assert measure(run, warmup_runs=0, runs=1000, seconds=2.0, repeats=2, clock=clock).runs == 8
    assert measure(run, warmup_runs=0, runs=1000, seconds=0.0, repeats=3, min_runs=3, clock=clock).runs == 9
    assert measure(run, warmup_runs=0, runs=2, seconds=100.0, repeats=1, clock=clock).runs == 2


def test_percentiles_of_a_sleeping_runner_within_tolerance():
    """Four runs in five sleep 5 ms, one sleeps 25 ms, so p50 lies inside the short runs and p90 and p99 inside
    the long ones (not on the step between them, where any overshoot would move them). Sleeps never end early and
    may end late on a busy machine, so each figure must lie at or a little above its exact value."""
    count = []

    def run():
        count.append(1)
        time.sleep(0.025 if len(count) % 5 == 0 else 0.005)

    d = measure(run, warmup_runs=0, runs=50, seconds=60, repeats=2).to_dict(max_samples=1000)
    assert d["runs"] == 100
    assert 5.0 <= d["p50_ms"] < 8.0
    assert 25.0 <= d["p90_ms"] < 30.0
    assert 25.0 <= d["p99_ms"] < 40.0
    assert 9.0 <= d["mean_ms"] < 12.0  # exactly 0.8 * 5 + 0.2 * 25
    assert all(5.0 <= m < 8.0 for m in d["repeats"]["medians_ms"])


def test_downsample_keeps_run_order_and_both_ends():
    samples = [float(i) for i in range(1000)]
    kept = downsample(samples, 50)
    assert len(kept) == 50 and kept[0] == 0.0 and kept[-1] == 999.0 and kept == sorted(kept)
    assert downsample(samples[:10], 50) == samples[:10]


# ---- FLOPs and the GEMM peak --------------------------------------------------------------------------------------

def _heavy_ops_model(path: Path) -> None:
    """A conv, a grouped conv, a batched MatMul, a Gemm (transB) and an opset-23 Attention, batch dim symbolic."""
    f = TensorProto.FLOAT
    inits = [helper.make_tensor("w", f, [4, 3, 3, 3], np.zeros(108).tolist()),
             helper.make_tensor("wg", f, [4, 1, 3, 3], np.zeros(36).tolist()),
             helper.make_tensor("b", f, [6, 7], np.zeros(42).tolist()),
             helper.make_tensor("gw", f, [9, 7], np.zeros(63).tolist())]
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["y", "wg"], ["yg"], pads=[1, 1, 1, 1], group=4),
             helper.make_node("MatMul", ["a", "b"], ["ab"]),
             helper.make_node("Gemm", ["g", "gw"], ["gg"], transB=1),
             helper.make_node("Attention", ["q", "k", "v"], ["att"])]
    inputs = [helper.make_tensor_value_info("x", f, ["N", 3, 8, 8]),
              helper.make_tensor_value_info("a", f, ["N", 5, 6]),
              helper.make_tensor_value_info("g", f, [2, 7]),
              *[helper.make_tensor_value_info(n, f, ["N", 2, 4, 8]) for n in ("q", "k", "v")]]
    outputs = [helper.make_tensor_value_info(n, f, None) for n in ("yg", "ab", "gg", "att")]
    graph = helper.make_graph(nodes, "heavy", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])
    model.ir_version = 10
    path.write_bytes(model.SerializeToString())


def test_flops_of_heavy_operators_are_counted_exactly(tmp_path):
    path = tmp_path / "heavy.onnx"
    _heavy_ops_model(path)
    shapes = {"x": (2, 3, 8, 8), "a": (2, 5, 6), "q": (2, 2, 4, 8), "k": (2, 2, 4, 8), "v": (2, 2, 4, 8)}
    count = count_flops(path, shapes)
    conv = 2 * (2 * 4 * 8 * 8) * (3 * 3 * 3) + 2 * (2 * 4 * 8 * 8) * (1 * 3 * 3)  # grouped: C_in/group = 1
    matmul, gemm = 2 * (2 * 5 * 7) * 6, 2 * (2 * 9) * 7
    attention = 2 * 2 * 2 * 4 * 4 * (8 + 8)  # Q·Kᵀ and weights·V: batch, heads, S_q, S_kv, head sizes
    assert count.by_op == {"Conv": conv, "MatMul": matmul, "Gemm": gemm, "Attention": attention}
    assert count.total == conv + matmul + gemm + attention and count.unresolved == {}


def test_heavy_operators_of_unknown_shape_are_reported_not_guessed(tmp_path):
    path = tmp_path / "heavy.onnx"
    _heavy_ops_model(path)
    count = count_flops(path, {"x": (1, 3, 8, 8)})  # the MatMul's and Attention's batch stays unknown
    assert count.unresolved == {"MatMul": 1, "Attention": 1} and set(count.by_op) == {"Conv", "Gemm"}


def test_gemm_peak_is_measured():
    assert gemm_peak_gflops(1, sizes=(64,), seconds=0.05) > 0.1


# ---- machine load, ratios and the recommendation ------------------------------------------------------------------

def test_busy_machine_is_called_out():
    assert MachineLoad(2, [0.1, 0.1, 0.1], 0.05).warnings() == []
    # A high load average alone (it trails a minute and includes our own earlier runs) is not proof of a busy
    # machine when other processes' CPU use was measured directly; it decides only when that measurement is missing.
    assert MachineLoad(2, [1.5, 1.0, 1.0], 0.05).warnings() == []
    assert len(MachineLoad(2, [1.5, 1.0, 1.0], None).warnings()) == 1
    assert "other processes used 0.80" in MachineLoad(2, [0.1, 0.1, 0.1], 0.8).warnings()[0]
    load = LoadMonitor().stop()
    assert load.cores >= 1 and (load.other_cores is None or load.other_cores >= 0)


def _record(passed=True, err=1e-5, precision="fp32") -> Verification:
    return Verification("PyTorch", precision, "rtol=1e-3 atol=1e-4", "float32 default, as verify", 2, passed, err,
                        err / 10, 0.5 if passed else 3.0, "y", None if passed else f"y on feed 0: {err} too large")


def _result(runtime, variant, threads, ms, level=None, verification=None, precision=None) -> ConfigResult:
    result = ConfigResult(Config(runtime, variant, threads, level, precision), 1, LatencyStats((ms, ms, ms), (ms,)))
    if runtime != "pytorch":
        result.verification = verification or _record()
    return result


def _synthetic_report(base_verified: bool) -> BenchReport:
    configs = [_result("pytorch", "eager", 1, 40.0), _result("pytorch", "eager", 2, 60.0),  # 2 threads: slower
               _result("onnxruntime", "base", 1, 30.0, "all"), _result("onnxruntime", "base", 2, 20.0, "all"),
               _result("onnxruntime", "int8", 2, 10.0, "all")]
    variants = [VariantInfo(Variant("base", "m.onnx", base_verified), 100, None),
                VariantInfo(Variant("int8", "m.int8.onnx", False), 30, None)]
    return BenchReport(model={}, settings={}, machine=MachineLoad(2, None), peak_gflops={1: 1.0}, variants=variants,
                       pytorch_size_bytes=100, configs=configs)


def test_ratios_use_each_sides_best_configuration_and_only_verified_variants_are_recommended():
    report = _synthetic_report(base_verified=True)
    sides = {s["side"]: s for s in report.side_summaries()}
    assert sides["pytorch:eager"]["best_config"] == "pytorch:eager/t1"  # not the handicapped 2-thread figure
    assert sides["onnxruntime:base"]["speedup"] == pytest.approx(40 / 20)
    assert sides["onnxruntime:int8"]["speedup"] == pytest.approx(4.0)
    rec = report.recommendation()
    assert rec["variant"] == "base" and rec["config_id"] == "onnxruntime:base/all/t2"  # int8 is faster, unverified
    assert _synthetic_report(base_verified=False).recommendation() is None


def test_a_configuration_that_misses_the_tolerance_of_its_precision_is_never_recommended():
    """OpenVINO's PERFORMANCE mode computing in bf16 is the fastest here, and its record says it missed its bf16
    tolerance: the recommendation is the fastest configuration that kept to its own, and it says what it passed
    over and why."""
    bf16 = _record(False, 1.38, "bf16")
    configs = [_result("pytorch", "eager", 1, 40.0), _result("onnxruntime", "base", 1, 20.0, "all"),
               _result("openvino", "base", 1, 8.0, verification=bf16),
               _result("openvino", "base", 1, 12.0, verification=_record(True, 2.4e-5), precision="f32"),
               _result("openvino", "int8", 1, 5.0, verification=_record(True, 0.3, "int8"))]
    variants = [VariantInfo(Variant("base", "m.onnx", True), 100, None),
                VariantInfo(Variant("int8", "m.int8.onnx", True), 30, None)]
    report = BenchReport(model={}, settings={}, machine=MachineLoad(2, None), peak_gflops={1: 1.0},
                         variants=variants, pytorch_size_bytes=100, configs=configs)
    assert report.recommendation()["config_id"] == "openvino:int8/t1"  # verified at its own (int8) precision
    report.shipped = ["base"]  # what a bundle ships: the int8 file is not in it
    rec = report.recommendation()
    assert rec["config_id"] == "openvino:base/f32/t1" and rec["path"] == "m.onnx"
    assert rec["verification"]["passed"] and rec["verification"]["max_abs_err"] <= 1e-4
    assert rec["restricted_to"] == ["base"]
    assert "openvino:int8/t1" in rec["passed_over"][0] and "not in the bundle" in rec["passed_over"][0]
    assert "openvino:base/t1" in rec["passed_over"][1] and "missed its tolerance" in rec["passed_over"][1]
    sides = {s["side"]: s for s in report.side_summaries()}
    assert sides["openvino:base"]["best_config"] == "openvino:base/t1"  # fastest, measured and shown...
    assert sides["openvino:base"]["best_verified_config"] == "openvino:base/f32/t1"  # ...but not the verified one


# ---- end to end ---------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    pytest.importorskip("torch")
    import onnxgate
    from onnxgate.spec import ExportConfig, parse_dim, parse_input

    folder = tmp_path_factory.mktemp("bench")
    (folder / "tiny_model.py").write_text(TINY_MODEL)
    ref = f"{folder / 'tiny_model.py'}:build"
    config = ExportConfig(inputs=(parse_input("x:Bx3x16x16:float32"),), dims=(parse_dim("B=1..64"),))
    onnxgate.export(ref, folder / "tiny.onnx", config=config)
    return ref, folder


@pytest.fixture(scope="module")
def onnx_report(tiny):
    """The exported file against its PyTorch model, with an unverified copy as a second variant."""
    ref, folder = tiny
    shutil.copy(folder / "tiny.onnx", folder / "copy.onnx")
    return bench(folder / "tiny.onnx", against=ref, variants=[Variant("copy", str(folder / "copy.onnx"))],
                 settings=TINY)


def test_bench_measures_every_side_and_validates_against_the_schema(onnx_report):
    data = onnx_report.to_dict()
    validate(data)
    sides = {s["side"]: s for s in data["sides"]}
    expected = {"pytorch:eager", "onnxruntime:base", "onnxruntime:copy"}
    if importlib.util.find_spec("openvino"):
        expected |= {"openvino:base", "openvino:copy"}
    assert set(sides) == expected
    threads = {c["threads"] for c in data["configs"] if c["side"] == "pytorch:eager"}
    assert threads == set(data["settings"]["threads"]) and 1 in threads  # PyTorch too at 1 and all cores
    assert all(c["latency"] and c["error"] is None for c in data["configs"])
    assert sides["onnxruntime:base"]["verified"] is True and sides["onnxruntime:copy"]["verified"] is False
    assert data["recommendation"]["variant"] == "base"
    # every ONNX configuration was verified by its own runner, at its own precision, with the tolerance stated
    records = {c["id"]: c["verification"] for c in data["configs"]}
    assert all(v is None for k, v in records.items() if k.startswith("pytorch"))
    assert all(v["reference"] == "PyTorch" and v["feeds"] == 2 and v["tolerance"]
               for k, v in records.items() if not k.startswith("pytorch"))
    rec = data["recommendation"]["verification"]
    assert rec["passed"] and rec["max_abs_err"] <= 1e-4 and rec["precision"] == "fp32" and rec["tolerance_used"] <= 1
    for c in data["configs"]:
        if c["inference_precision"] == "bf16":  # OpenVINO's PERFORMANCE mode on a CPU with bfloat16
            assert c["verification"]["precision"] == "bf16" and "max|ref|" in c["verification"]["tolerance"]
            assert any(o["id"] == c["id"].replace("/t", "/f32/t") for o in data["configs"])  # and pinned to f32
    assert sides["onnxruntime:base"]["speedup"] and sides["onnxruntime:base"]["memory_ratio"]
    assert {p["batch"] for p in data["throughput"]} == {1, 2} and data["model"]["batch_dim"] == "B"
    startup = {s["side"]: s for s in data["startup"]}
    assert startup["pytorch:eager"]["error"] is None and startup["pytorch:eager"]["peak_rss_mb"] > 0
    # a fresh process each: the ONNX Runtime probe never imports torch, so it must need less memory
    assert startup["onnxruntime:base"]["peak_rss_mb"] < startup["pytorch:eager"]["peak_rss_mb"]
    base = next(v for v in data["variants"] if v["name"] == "base")
    assert base["flops"]["total"] > 0 and base["size_bytes"] > 0


def test_schema_rejects_a_report_that_drifted(onnx_report):
    data = onnx_report.to_dict()
    data["configs"][0]["latency"]["p50"] = data["configs"][0]["latency"].pop("p50_ms")
    with pytest.raises(jsonschema.ValidationError):
        validate(data)


def test_cli_exports_a_reference_first_and_prints_json(tiny, capsys):
    ref, _ = tiny
    code = main(["bench", ref, "--quick", "--json", "--runtime", "pytorch", "--runtime", "onnxruntime",
                 "--seconds", "0.1", "--runs", "10", "--repeats", "2", "--max-batch", "2", "--no-startup"])
    data = json.loads(capsys.readouterr().out)["result"]
    assert code == 0
    validate(data)
    assert data["model"]["exported"] and data["model"]["inputs"] == ["x:Bx3x16x16:float32"]  # batch made dynamic
    assert data["model"]["shapes"] == {"x": [1, 3, 16, 16]} and data["startup"] == []
    assert data["recommendation"]["runtime"] == "onnxruntime"


def test_cli_prints_the_tables(tiny, capsys):
    _, folder = tiny
    code = main(["bench", str(folder / "tiny.onnx"), "--runtime", "onnxruntime", "--threads", "1", "--seconds",
                 "0.05", "--max-batch", "1", "--no-startup", "--quick"])
    err = capsys.readouterr().err
    assert code == 0
    assert "latency (ms) at batch 1" in err and "onnxruntime:base/all/t1" in err and "recommended" in err
    assert "pytorch:eager" not in err  # no --against: PyTorch is not measured


@pytest.mark.parametrize("argv, needle", [
    (["--variant", "no-equals-sign"], "does not parse"),
    (["--verified", "nosuch"], "no --variant defines"),
    (["--runtime", "tensorflow"], "Unknown runtime"),
    (["--variant", "int8=/no/such/model.onnx"], "does not exist"),
])
def test_cli_rejects_bad_flags(tiny, capsys, argv, needle):
    _, folder = tiny
    code = main(["bench", str(folder / "tiny.onnx"), *argv])
    assert code == 2 and needle in capsys.readouterr().err


def test_a_probe_that_fails_is_a_result_not_a_crash(tmp_path):
    feed_files = save_feed({"x": np.zeros((1, 3), np.float32)}, tmp_path)
    startup = measure_startup(Config("onnxruntime", "base", 1, "all"), feed_files=feed_files,
                              model_path=str(tmp_path / "missing.onnx"), source=None, repeats=1)
    assert startup.startup_s is None and startup.peak_rss_mb is None and "missing.onnx" in startup.error


@pytest.mark.parametrize("runtime, level", [("onnxruntime", "disable"), ("openvino", None)])
def test_onnx_probes_build_their_sessions_through_the_runtimes_layer(tiny, tmp_path, runtime, level):
    """The start-up probe opens the model with runtimes.ort.open_session / runtimes.openvino.OpenVinoRunner, as the
    benchmark does, and its phases still bracket the runtime's import and the session's creation."""
    if runtime == "openvino":
        pytest.importorskip("openvino")
    _, folder = tiny
    feed_files = save_feed({"x": np.zeros((1, 3, 16, 16), np.float32)}, tmp_path)
    startup = measure_startup(Config(runtime, "base", 1, level), feed_files=feed_files,
                              model_path=str(folder / "tiny.onnx"), source=None, repeats=1)
    assert startup.error is None, startup.error
    assert startup.import_s > 0 and startup.load_s > 0 and startup.first_run_s > 0
    assert startup.startup_s > startup.import_s + startup.load_s and startup.peak_rss_mb > 0


def test_results_markdown_names_the_command_and_the_targets(onnx_report):
    spec = importlib.util.spec_from_file_location("reference_set", ROOT / "benchmarks/reference_set.py")
    reference_set = importlib.util.module_from_spec(spec)
    sys.modules["reference_set"] = reference_set  # its dataclasses look their module up while it loads
    spec.loader.exec_module(reference_set)
    from onnxgate.bench.roofline import MachineLimits
    from onnxgate.transform.budget import Budget
    from onnxgate.transform.recipes import RecipeSearch

    model = reference_set.MODELS["resnet18"]
    search = RecipeSearch("tiny.onnx", "static", Budget(min_cosine=0.99), decision="no INT8 recipe holds the budget")
    results = {"resnet18": reference_set.Result("resnet18", model, bench=onnx_report, search=search),
               "broken": reference_set.Result("broken", model, error="ExportError: no")}
    text = reference_set.render_results(results, command="python benchmarks/reference_set.py --quick", quick=True,
                                        limits={1: MachineLimits(1, 100.0, 10.0, 400.0)},
                                        load={"start": "0.1", "end": "0.2"}, seconds=60)
    assert "`python benchmarks/reference_set.py --quick`" in text and "load average at the start 0.1" in text
    assert "| resnet18 |" in text and "| broken | random | failed: ExportError: no |" in text
    for target in ("shipped FP32 ≥ 2×", "no model below 1.5×", "resnet18: INT8 ≥ 3×", "start-up ≥ 2×",
                   "peak memory ≤ 0.5"):
        assert target in text
