"""`onnxgate bench REF_OR_MODEL`: PyTorch eager against ONNX Runtime and OpenVINO, every variant, one run."""

from __future__ import annotations

import typer
from rich.markup import escape
from rich.table import Table

from .common import console, finish, progress
from .params import options_of


@options_of("bench")
def bench(
    model: str = typer.Argument(None, help="An .onnx file, or a model reference (torchvision:resnet18, file.py:Net, "
                                           "...) to export first. Optional with --config (its ref)."),
    *, given: dict,
) -> None:
    """Latency, throughput, start-up, memory, size and GFLOP/s of every runtime and variant, against PyTorch."""
    from ..bench import BenchSettings, Variant, bench as do_bench
    from ..configure import command_config
    from ..errors import BadInputError

    job, v = command_config("bench", given)
    model = model or job.ref
    if not model:
        raise BadInputError("No model given.", hint="Pass an .onnx file or a model reference, e.g. onnxgate bench "
                                                    "torchvision:resnet18 (or ref = ... in the --config file).")
    against = v.get("against") or (job.ref if model != job.ref else None)
    pairs = [_name_and_path(text) for text in v.get("variant", [])]
    verified = v.get("verified", [])
    unknown = sorted(set(verified) - {name for name, _ in pairs} - {"base"})
    if unknown:
        raise BadInputError(f"--verified names {', '.join(unknown)}, which no --variant defines.",
                            hint="Name the base model 'base' or a variant given with --variant NAME=PATH.")
    overrides = {key: v[key] for key in ("seconds", "runs", "repeats", "max_batch") if key in v}
    overrides.update({key: tuple(v[name]) for key, name in (("runtimes", "runtime"), ("threads", "threads"))
                      if v.get(name)})
    if v.get("startup") is False:
        overrides["startup_repeats"] = 0
    settings = BenchSettings.quick(**overrides) if v.get("quick") else BenchSettings(**overrides)
    with progress("benchmarking") as status:
        report = do_bench(model, against=against, variants=[Variant(n, p, n in verified) for n, p in pairs],
                          config=job.export, settings=settings, base_verified=True if "base" in verified else None,
                          weights=job.weights, arch=job.arch, trust_pickle=job.trust_pickle, progress=status.update)
    _print(report, bool(v.get("json")))


def _print(report, json_out: bool) -> None:
    if json_out:
        return finish(report, json_out=True)
    for table in (latency_table(report), sides_table(report), throughput_table(report)):
        if table.row_count:
            console.print(table)
    peaks = ", ".join(f"{g:.0f} GFLOP/s at {t} thread{'s' if t > 1 else ''}"
                      for t, g in sorted(report.peak_gflops.items()))
    console.print(f"GEMM peak measured: {peaks}; benchmark took {report.seconds:.0f} s")
    for warning in report.warnings:
        console.print(f"[yellow]warning[/]: {escape(warning)}")
    console.print(recommendation_line(report.recommendation()))


def _name_and_path(text: str) -> tuple[str, str]:
    from ..errors import BadInputError

    name, sep, path = text.partition("=")
    if not sep or not name.strip() or not path.strip():
        raise BadInputError(f"--variant '{text}' does not parse.",
                            hint="Write it as NAME=PATH, e.g. int8=model.int8.onnx.")
    return name.strip(), path.strip()


def _x(ratio: float | None) -> str:
    return f"{ratio:.2f}x" if ratio else "-"


def _ms(value: float | None) -> str:
    return f"{value:.2f}" if value is not None else "-"


def latency_table(report) -> Table:
    table = Table(title=f"latency (ms) at batch {report.configs[0].batch if report.configs else 1}",
                  title_justify="left")
    for col in ("configuration", "p50", "p90", "p99", "mean ± std", "repeats (min-max of medians)", "GFLOP/s",
                "% peak", "vs PyTorch", "verified at its precision"):
        table.add_column(col, justify="left" if col == "configuration" else "right")
    for r in report.configs:
        if r.latency is None:
            table.add_row(r.config.id, f"[red]{escape(r.error or 'failed')}[/]", *[""] * 8)
            continue
        stats = r.latency.to_dict(0)
        table.add_row(r.config.id, _ms(stats["p50_ms"]), _ms(stats["p90_ms"]), _ms(stats["p99_ms"]),
                      f"{stats['mean_ms']:.2f} ± {stats['std_ms']:.2f}",
                      f"{stats['repeats']['min_ms']:.2f}-{stats['repeats']['max_ms']:.2f}",
                      f"{r.gflops:.1f}" if r.gflops else "-",
                      f"{r.peak_fraction:.0%}" if r.peak_fraction else "-", _x(report.speedup(r)),
                      _verification(r.verification))
    return table


def _verification(v) -> str:
    """'yes fp32 2.4e-05' / 'no bf16 1.38 > 0.2' (the error against the tolerance of its precision)."""
    if v is None:
        return "reference"
    err = "-" if v.max_abs_err is None else f"{v.max_abs_err:.2g}"
    return f"[green]yes[/] {v.precision} {err}" if v.passed else f"[red]no[/] {v.precision} {err}"


def sides_table(report) -> Table:
    table = Table(title="each side at its best configuration (ratios: > 1 is better than PyTorch, memory: lower)",
                  title_justify="left")
    for col in ("side", "verified", "best configuration", "p50 ms", "speedup", "start-up s", "start-up speedup",
                "peak RSS MB", "memory ratio", "size MB"):
        table.add_column(col, justify="left" if col in ("side", "best configuration") else "right")
    for s in report.side_summaries():
        verified = "-" if s["verified"] is None else ("[green]yes[/]" if s["verified"] else "[yellow]no[/]")
        table.add_row(s["side"], verified, s["best_config"] or "-", _ms(s["p50_ms"]), _x(s["speedup"]),
                      _ms(s["startup_s"]), _x(s["startup_speedup"]),
                      f"{s['peak_rss_mb']:.0f}" if s["peak_rss_mb"] else "-",
                      f"{s['memory_ratio']:.2f}" if s["memory_ratio"] else "-",
                      f"{s['size_bytes'] / 2**20:.1f}" if s["size_bytes"] else "-")
    return table


def throughput_table(report) -> Table:
    batches = sorted({p.batch for p in report.throughput})
    table = Table(title="throughput (items/s) by batch size, each side at its best configuration",
                  title_justify="left")
    table.add_column("configuration")
    for b in batches:
        table.add_column(f"batch {b}", justify="right")
    table.add_column("GFLOP/s (% peak) at the largest batch", justify="right")
    for config_id in dict.fromkeys(p.config_id for p in report.throughput):
        points = {p.batch: p for p in report.throughput if p.config_id == config_id}
        last = points[max(points)]
        efficiency = f"{last.gflops:.1f} ({last.peak_fraction:.0%})" if last.gflops else "-"
        table.add_row(config_id, *[f"{points[b].items_per_s:.1f}" if b in points else "-" for b in batches],
                      efficiency)
    return table


def recommendation_line(rec: dict | None) -> str:
    if rec is None:
        return ("[yellow]no recommendation[/]: no measured configuration passed verification at its own precision "
                "(see the last column; mark verified variant files with --verified NAME)")
    text = f"[green]recommended[/]: {rec['config_id']} ({rec['p50_ms']:.2f} ms at p50"
    text += f", {rec['speedup']:.2f}x PyTorch eager)" if rec["speedup"] else ")"
    v = rec["verification"]
    text += escape(f", {rec['path']}; verified in {v['precision']} against {v['reference']} on {v['feeds']} feeds: "
                   f"max abs err {v['max_abs_err']:.3g} within {v['tolerance']}")
    iv = rec.get("interval")
    if iv:
        text += escape(f"; median {iv['median_ms']:.2f} ms, {iv['confidence']:.0%} interval {iv['low_ms']:.2f}-"
                       f"{iv['high_ms']:.2f} ms over {iv['rounds']} interleaved rounds")
    if rec.get("tie"):
        tie = rec["tie"]
        busy = (f" (the machine was busy: a gain under {tie['min_gain']:.0%} counts as noise)"
                if tie.get("busy") else "")
        text += escape(f"; within noise of {', '.join(tie['with'])}{busy}: tie broken by {tie['broken_by']}")
    settings = rec.get("settings") or {}
    if settings:
        text += escape("; settings " + ", ".join(f"{k}={v}" for k, v in settings.items() if v is not None))
    text += "".join(f"; {escape(n)}" for n in rec["notes"])
    return text + "".join(f"\n  passed over {escape(p)}" for p in rec.get("passed_over", []))


def register(app: typer.Typer) -> None:
    app.command("bench")(bench)
