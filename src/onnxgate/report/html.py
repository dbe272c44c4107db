"""The HTML report: one self-contained file (inline CSS and SVG, no scripts, no network), verdict first.

Rendered from the JSON report (``report.json``), so what a person reads and what a machine reads are the same
facts. Sections appear only for the stages that ran.
"""

from __future__ import annotations

from html import escape
from typing import Any

from .. import claim as cl
from ..errors import BadInputError
from ..verify.compare import ERR_DECADES
from . import svg

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1100px;color:#222}
h1{font-size:22px} h2{font-size:18px;border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:28px}
table{border-collapse:collapse;font-size:12px;margin:8px 0} th,td{border:1px solid #ddd;padding:3px 6px;text-align:left}
th{background:#f4f4f4} .pass{color:#0a7a2f;font-weight:bold} .fail{color:#c62828;font-weight:bold}
.verdict{padding:12px 16px;border-radius:6px;font-size:16px;margin:12px 0}
.verdict.pass{background:#e6f4ea} .verdict.fail{background:#fdecea} .muted{color:#777;font-size:12px}
.plots{display:flex;flex-wrap:wrap;gap:16px} code{background:#f4f4f4;padding:1px 4px}
"""


def _e(x: Any) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.2e}" if (x != 0 and (abs(x) < 1e-2 or abs(x) >= 1e4)) else f"{x:.4g}"
    return escape(str(x))


def _table(headers: list[str], rows: list[list[Any]], raw: set[int] | None = None) -> str:
    raw = raw or set()
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c if i in raw else _e(c)}</td>" for i, c in enumerate(r)) + "</tr>"
                   for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _ok(passed: bool) -> str:
    return '<span class="pass">pass</span>' if passed else '<span class="fail">FAIL</span>'


def render_html(report: dict) -> str:
    stages = report.get("stages", {})
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>onnxgate report: "
             f"{escape(report.get('ref', ''))}</title><style>{CSS}</style></head><body>",
             f"<h1>onnxgate report — <code>{escape(report.get('ref', ''))}</code></h1>", _verdict(report)]
    for section in (_export, _claim, _parity, _hunt, _preprocessing, _localization, _accuracy, _transforms, _bench,
                    _deploy, _graph, _targets, _environment):
        html = section(stages)
        if html:
            parts.append(html)
    parts.append(f"<p class='muted'>onnxgate {escape(report.get('onnxgate_version', ''))}, report schema "
                 f"{escape(str(report.get('schema_version', '')))}</p></body></html>")
    return "".join(parts)


def _verdict(report: dict) -> str:
    cls = "pass" if report.get("verdict") == "pass" else "fail"
    text = "PASS — every gate held" if cls == "pass" else f"FAIL (exit code {report.get('exit_code')})"
    reason = f"<div>{escape(report['reason'])}</div>" if report.get("reason") else ""
    return f"<div class='verdict {cls}' id='verdict'><strong>{text}</strong>{reason}</div>"


def _export(stages: dict) -> str:
    export = stages.get("export")
    if not export:
        return ""
    rows = []
    for i, a in enumerate(export["attempts"]):
        outcome = a["outcome"] if i != export.get("winner") else f"{a['outcome']} (winner)"
        rows.append([i + 1, a["strategy"], a["opset"], a.get("opset_emitted"), a["seconds"], a["peak_mb"], outcome,
                     (a.get("error") or "")[:200]])
    diag = export.get("diagnosis")
    extra = f"<p><strong>Diagnosis:</strong> {escape(diag['cause'])} <em>Fix:</em> {escape(diag['fix'])}</p>" if diag else ""
    warnings = "".join(f"<p class='muted'>warning: {escape(w)}</p>" for w in export.get("warnings", []))
    return ("<h2 id='export'>Export attempts</h2>" + _table(
        ["#", "strategy", "opset asked", "opset emitted", "seconds", "peak RSS MB", "outcome", "detail"], rows)
        + extra + warnings)


def _claim(stages: dict) -> str:
    """What the verification proved, read through the claim codec: each dim's domain and why its edges are where
    they are, each output's tolerance and largest error, the runtime settings it holds under, the reference."""
    raw = (stages.get("verify") or {}).get("claim")
    if not raw:
        return ""
    try:
        claim = cl.from_report(raw)
    except BadInputError as exc:
        return f"<h2 id='claim'>What was proven</h2><p class='fail'>{escape(exc.message)}</p>"
    parts = ["<h2 id='claim'>What was proven</h2>"]
    if claim.dims:
        parts.append(_table(["dim", "claimed", "declared", "why the edges are there", "sizes probed"], [
            [d.name, d.describe(), "no range" if d.unranged else
             (f"{d.declared_min}..{'' if d.declared_max is None else d.declared_max}"
              if d.declared_min is not None else "–"),
             "; ".join(f"{e.end} {e.edge}: {e.by} fails at {e.size} ({e.error})" for e in d.edges) or "–",
             ", ".join(map(str, d.probes)) or "–"] for d in claim.dims]))
    parts.append(_table(["output", "rtol", "atol", "policy", "max abs err"],
                        [[o.name, o.rtol, o.atol, o.policy, o.max_abs_err] for o in claim.outputs]))
    held = "; ".join(c.describe() for c in claim.conditions) or "–"
    parts.append(f"<p>Holds under: {escape(held)}. Reference: <code>{escape(str(claim.reference.source))}</code>"
                 + (f", weights sha256 {escape(claim.reference.weights_sha256[:16])}…"
                    if claim.reference.weights_sha256 else "") +
                 f". Evidence: {claim.evidence.cases} feeds (random seeds {', '.join(map(str, claim.evidence.seeds))}; "
                 f"{claim.evidence.data} real-data feed(s)).</p>")
    return "".join(parts)


def _parity(stages: dict) -> str:
    verify = stages.get("verify")
    if not verify:
        return ""
    parts = ["<h2 id='parity'>Parity against PyTorch, per shape and output</h2>"]
    labels = [f"≤1e{ERR_DECADES[0]}"] + [f"1e{d}" for d in range(ERR_DECADES[0] + 1, ERR_DECADES[1])] + [f">1e{ERR_DECADES[1] - 1}"]
    for p in verify.get("parity", []):
        parts.append(f"<h3>{escape(p['candidate'])} vs {escape(p['reference'])}: {_ok(p['passed'])} — "
                     f"{escape(p['summary'])}</h3>")
        rows, bar_labels, bar_values, failing, hist = [], [], [], set(), {}
        for case in p["cases"]:
            sizes = ", ".join(f"{k}={v}" for k, v in case["sizes"].items())
            if case.get("error"):
                rows.append([case["label"], sizes, "–", "–", None, None, None, None, None, _ok(False) + " " + escape(case["error"])])
                continue
            for o in case["outputs"]:
                rows.append([case["label"], sizes, o["name"], "x".join(map(str, o.get("shape_ref") or [])),
                             o["max_abs_err"], o["max_rel_err"], o["mismatch_fraction"], o["cosine"],
                             o["top1_agreement"], _ok(o["passed"]) + (" " + escape(o["reason"]) if o.get("reason") else "")])
                if not o["passed"]:
                    failing.add(len(bar_labels))
                bar_labels.append(f"{case['label']} · {o['name']}")
                bar_values.append(o["max_abs_err"])
                if o.get("error_histogram"):
                    acc = hist.setdefault(o["name"], [0] * len(o["error_histogram"]))
                    hist[o["name"]] = [x + y for x, y in zip(acc, o["error_histogram"])]
        parts.append(_table(["feed", "sizes", "output", "shape", "max abs", "max rel", "outside tol", "cosine",
                             "top-1", "verdict"], rows, raw={9}))
        if p.get("frozen"):
            parts.append("<p class='fail'>" + "<br>".join(f"dim {escape(d)} is frozen: {escape(w)}"
                                                          for d, w in p["frozen"].items()) + "</p>")
        parts.append("<div class='plots'>" + svg.bar_chart(
            f"max-abs-error-{p['candidate']}", f"max |error| per feed and output ({p['candidate']})", bar_labels,
            bar_values, log=True, highlight=failing) + svg.histogram(
            f"error-distribution-{p['candidate']}", f"error distribution per output ({p['candidate']})", hist, labels)
            + "</div>")
    for w in verify.get("warnings", []):
        parts.append(f"<p class='muted'>warning: {escape(w)}</p>")
    return "".join(parts)


def _hunt(stages: dict) -> str:
    """The divergence hunt (``pipeline._hunt_stage``): the share of the tolerance random feeds and hunted feeds
    used (median, 90th percentile, max; > 1 fails), the worst feed's verdict and what joined the golden set."""
    hunt = stages.get("hunt")
    if not hunt:
        return ""
    dist = hunt.get("distribution") or {}

    def share(x: Any) -> str:
        return "∞ (could not run)" if x is None else _e(x)

    rows = [[label, d.get("count"), share(d.get("median")), share(d.get("p90")), share(d.get("max"))]
            for label, d in (("random feeds", dist.get("random") or {}), ("hunted feeds", dist.get("hunted") or {}))]
    golden = hunt.get("golden") or {}
    joined = ("" if not golden else
              f"<p>{escape(str(golden.get('what', '')).capitalize())} "
              + (f"joins the bundle's golden set ({escape(str(golden.get('dim')))}="
                 f"{escape(str(golden.get('golden_size')))})" if golden.get("mode") == "appended"
                 else f"replaces {escape(str(golden.get('replaces', 'the random feed')))} of the bundle's golden "
                      f"set ({escape(str(golden.get('why', '')))})")
              + ": every re-verification of the bundle checks it again.</p>")
    if hunt.get("feed"):
        joined += (f"<p>The failing feed, to reproduce it with (<code>--data</code> reads it): "
                   f"<code>{escape(str(hunt['feed']))}</code></p>")
    verdict = (f"{_ok(bool(hunt.get('passed')))} — "
               + escape("no feed found outside the tolerance" if hunt.get("passed") else str(hunt.get("reason"))))
    capped = (f" (the {escape(str(hunt.get('requested')))} asked for, shrunk to fit "
              f"{escape(str(hunt.get('seconds_cap')))} s)" if hunt.get("capped") else "")
    return ("<h2 id='hunt'>Divergence hunt: random vs hunted inputs</h2>"
            f"<p>{verdict}</p><p class='muted'>{escape(str(hunt.get('evaluations')))} evaluations of "
            f"{escape(str(hunt.get('budget')))}{capped} (seed {escape(str(hunt.get('seed')))}; worst found by "
            f"{escape(str(hunt.get('found_by')))}) on {escape(str(hunt.get('runtime', 'onnxruntime')))} against "
            "PyTorch, at the claim's tolerances. Each figure is the share of the tolerance used (1 = at the "
            "tolerance, above 1 fails).</p>"
            + _table(["feeds", "count", "median", "p90", "max"], rows) + joined)


def _localization(stages: dict) -> str:
    loc = (stages.get("verify") or {}).get("localization")
    if not loc:
        return ""
    layers = loc.get("layers", [])
    rows = [[l["module"], l["module_type"], l["max_abs_err"], _ok(l["passed"]), ", ".join(l["onnx_nodes"][:4])]
            for l in layers[:60]]
    chart = svg.line_chart("layer-error", "max |error| per layer (PyTorch module vs its ONNX nodes)",
                           [l["module"] for l in layers], [l["max_abs_err"] for l in layers])
    return (f"<h2 id='localization'>Layer-wise localization</h2><p><strong>{escape(loc.get('summary', ''))}</strong>"
            f" (feed: {escape(str(loc.get('feed', '')))}, mapping: {escape(loc.get('strategy', ''))})</p>"
            + chart + _table(["module", "type", "max abs err", "verdict", "ONNX nodes"], rows, raw={3}))


def _preprocessing(stages: dict) -> str:
    """Image bytes to label: the server's preprocessing + onnxruntime against torchvision + PyTorch eager on the
    run's photos (``pipeline._prove_preprocessing``), or why the proof was skipped."""
    pre = stages.get("preprocessing")
    if not pre:
        return ""
    head = "<h2 id='preprocessing'>Preprocessing, image bytes to label</h2>"
    if pre.get("skipped"):
        return head + f"<p>{escape(pre['spec'])}: not proven ({escape(pre['skipped'])}).</p>"
    expected = pre.get("reference_spec")
    note = "" if not expected or expected == pre["spec"] else \
        f"<p>The reference ran <code>{escape(expected)}</code> (given), the server runs the recorded spec.</p>"
    rows = [[pre["spec"], pre.get("sampled") or pre["images"], pre["max_pixel_error"], pre["pixel_bound"],
             f"{pre['top1_agree']}/{pre['images']}", f"{pre['top5_agree']}/{pre['images']}",
             pre["max_top1_disagreements"], _ok(pre["passed"])]]
    differs = "".join(f"<li>{escape(str(d.get('image')))}: server {escape(str(d.get('server')))}, PyTorch "
                      f"{escape(str(d.get('pytorch')))}</li>" for d in pre.get("top1_differs", [])[:20])
    return (head + f"<p class='muted'>{escape(pre.get('server', 'server'))} against "
            f"{escape(pre.get('reference', 'torchvision + PyTorch'))}, from the same image bytes.</p>" + note
            + _table(["spec (served)", "photos", "max pixel error", "bound", "top-1 agree", "top-5 sets agree",
                      "top-1 may differ", "verdict"], rows, raw={7})
            + (f"<p>Top-1 differs on:</p><ul>{differs}</ul>" if differs else ""))


def _accuracy(stages: dict) -> str:
    acc = stages.get("accuracy")
    if not acc:
        return ""
    rows = [[runtime, m.get("top1"), m.get("samples")] for runtime, m in acc.items()]
    return "<h2 id='accuracy'>Accuracy on real data</h2>" + _table(["runtime", "top-1", "samples"], rows)


def _transforms(stages: dict) -> str:
    """Every transform, re-verified: applied, unchanged, rolled back (with why) or failed."""
    records = list((stages.get("optimize") or {}).get("transforms", []))
    quant = stages.get("quantize")
    if quant and quant.get("record"):
        records.append(quant["record"])
    if not records:
        return ""
    rows = [[r["name"], r["status"], r["nodes_before"], r["nodes_after"], r["size_before"], r["size_after"],
             r.get("error_vs_float"), r.get("message") or ""] for r in records]
    extra = ""
    if quant:
        kept = ", ".join(n.get("name", str(n)) if isinstance(n, dict) else str(n) for n in quant.get("float_nodes", []))
        extra = (f"<p>{_ok(quant['passed'])} INT8: {escape(quant['summary'])}</p>"
                 + (f"<p>nodes kept in float: {escape(kept)}</p>" if kept else ""))
    return ("<h2 id='transforms'>Optimize and quantize (each step re-verified)</h2>" + extra
            + _table(["transform", "status", "nodes before", "nodes after", "bytes before", "bytes after",
                      "max abs err vs float", "message"], rows))


def _bench(stages: dict) -> str:
    bench = stages.get("bench")
    if not bench:
        return ""
    measured = [c for c in bench.get("configs", []) if c.get("latency")]
    rows = [[c["id"], c.get("threads"), c["latency"]["p50_ms"], c["latency"]["p90_ms"], c["latency"]["p99_ms"],
             c["latency"].get("std_ms"), c.get("speedup"), c.get("peak_fraction")] for c in measured]
    rows += [[c["id"], c.get("threads"), None, None, None, None, None, c.get("error")]
             for c in bench.get("configs", []) if not c.get("latency")]
    ids = [c["id"] for c in measured]
    latency = svg.bar_chart("latency", "median latency, ms (lower is better)", ids,
                            [c["latency"]["p50_ms"] for c in measured], unit=" ms")
    speed = svg.bar_chart("speedup", "speed-up over PyTorch eager's best configuration", ids,
                          [c.get("speedup") for c in measured], unit="×")
    spread = svg.box_plot("latency-distribution", "latency distribution per configuration, ms", ids,
                          [c["latency"].get("samples_ms", []) for c in measured])
    sides = bench.get("sides", [])
    side_rows = [[s.get("side"), s.get("best_config"), s.get("p50_ms"), s.get("speedup"), s.get("startup_s"),
                  s.get("peak_rss_mb"), s.get("size_bytes")] for s in sides]
    rec = bench.get("recommendation")
    rec_html = (f"<p><strong>Recommended:</strong> {escape(rec['config_id'])} ({_e(rec.get('speedup'))}× PyTorch "
                f"eager, p50 {_e(rec.get('p50_ms'))} ms)</p>") if rec else ""
    warnings = "".join(f"<p class='muted'>warning: {escape(w)}</p>" for w in bench.get("warnings", []))
    return ("<h2 id='bench'>Benchmark</h2>" + rec_html + f"<div class='plots'>{latency}{speed}{spread}</div>"
            + _table(["configuration", "threads", "p50 ms", "p90 ms", "p99 ms", "std ms", "speed-up", "of GEMM peak"], rows)
            + _table(["side", "best configuration", "p50 ms", "speed-up", "start-up s", "peak RSS MB", "size bytes"],
                     side_rows) + warnings)


def _deploy(stages: dict) -> str:
    """The per-target table: every deployed artifact, how it was verified, and why a target did not pass."""
    from ..deploy.model import PASSED, TABLE_COLUMNS, reasons, table_rows

    deploy = stages.get("deploy")
    if not deploy:
        return ""
    artifacts = deploy.get("artifacts", [])
    rows = table_rows(artifacts)
    for row, a in zip(rows, artifacts):
        css = "pass" if a.get("status") == PASSED else "fail" if a.get("status") in ("failed", "not converted") else "muted"
        row[-1] = f'<span class="{css}">{escape(row[-1])}</span>'
    how = "".join(f"<li>{escape(a['target'])} {escape(a.get('variant') or '')}: {escape(a['runtime'])}"
                  + (f"; layout: {escape(a['layout'])}" if a.get("layout") else "") + "</li>"
                  for a in artifacts if a.get("runtime"))
    why = "".join(f"<li>{escape(line)}</li>" for line in reasons(artifacts))
    notes = "".join(f"<p class='muted'>{escape(n)}</p>" for n in deploy.get("notes", []))
    return (f"<h2>Deploy targets</h2><p>Each artifact verified against {escape(deploy.get('reference', ''))} "
            f"through the same parity checks as the ONNX file; written to <code>{escape(deploy.get('out_dir', ''))}"
            f"</code>.</p>" + _table(list(TABLE_COLUMNS), rows, raw={len(TABLE_COLUMNS) - 1})
            + (f"<ul class='muted'>{how}</ul>" if how else "") + (f"<ul>{why}</ul>" if why else "") + notes)


def _graph(stages: dict) -> str:
    structure = (stages.get("verify") or {}).get("structure") or (stages.get("export") or {}).get("structure")
    if not structure:
        return ""
    io_rows = [[kind, t["name"], t["dtype"], "x".join("?" if d is None else str(d) for d in t["shape"])]
               for kind, key in (("input", "inputs"), ("output", "outputs")) for t in structure[key]]
    ops = list(structure["op_histogram"].items())[:30]
    chart = svg.bar_chart("operators", "operator histogram", [o for o, _ in ops], [float(n) for _, n in ops])
    facts = [["opset / IR", f"{structure['opset']} / {structure['ir_version']}"],
             ["size", f"{structure['size_bytes'] / 2**20:.2f} MB"],
             ["parameters", f"{structure['parameter_count']:,}"], ["nodes", structure["node_count"]],
             ["onnx.checker", "ok" if structure["checker_ok"] else structure["checker_error"]],
             ["onnxruntime loads", structure.get("ort_loads")]]
    return ("<h2 id='graph'>Graph</h2>" + _table(["", ""], facts) + _table(["kind", "name", "dtype", "shape"], io_rows)
            + chart)


def _targets(stages: dict) -> str:
    targets = stages.get("targets")
    if not targets:
        return ""
    rows = [[t["target"], _ok(t["supported"]), "; ".join(t.get("reasons", []))] for t in targets]
    return "<h2 id='targets'>Target compatibility</h2>" + _table(["target", "verdict", "reasons"], rows, raw={1})


def _environment(stages: dict) -> str:
    env = stages.get("environment")
    if not env:
        return ""
    rows = [[k, v] for k, v in _flatten(env)]
    return "<h2 id='environment'>Environment</h2>" + _table(["key", "value"], rows)


def _flatten(data: dict, prefix: str = ""):
    for k, v in data.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            yield from _flatten(v, key + ".")
        elif isinstance(v, list):
            yield key, ", ".join(map(str, v[:20])) + (" …" if len(v) > 20 else "")
        else:
            yield key, v
