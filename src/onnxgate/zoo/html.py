"""``zoo.html``: the zoo's dashboard, one self-contained file rendered from ``zoo.json`` (inline CSS and SVG, a few
lines of inline script that sort the table; no network). It reuses the run report's styling and charts
(``report/html.py``, ``report/svg.py``) and links each model's own ``report.html``.
"""

from __future__ import annotations

from html import escape
from typing import Any

from ..report import svg
from ..report.html import CSS, _e, _table

_ZOO_CSS = CSS + """
th.sortable{cursor:pointer;user-select:none} th.sortable:after{content:" ⇅";color:#aaa}
.figures{display:flex;gap:24px;flex-wrap:wrap;margin:8px 0} .figure{background:#f7f7f7;border-radius:6px;padding:8px 14px}
.figure b{display:block;font-size:20px} td.reason{max-width:420px;font-size:11px;color:#444}
"""
# Click a header to sort by it (again to reverse): numbers by value, the rest as text. The only script in the file.
_SORT_JS = """
document.querySelectorAll('table.sortable').forEach(function(table){
  table.querySelectorAll('th').forEach(function(th, col){
    th.classList.add('sortable');
    th.addEventListener('click', function(){
      var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
      var dir = th.dataset.dir === 'asc' ? -1 : 1; th.dataset.dir = dir === 1 ? 'asc' : 'desc';
      rows.sort(function(a, b){
        var x = a.cells[col].dataset.v || a.cells[col].textContent, y = b.cells[col].dataset.v || b.cells[col].textContent;
        var nx = parseFloat(x), ny = parseFloat(y);
        if (!isNaN(nx) && !isNaN(ny)) return (nx - ny) * dir;
        return x.localeCompare(y) * dir;
      });
      rows.forEach(function(r){ body.appendChild(r); });
    });
  });
});
"""


def render_zoo_html(doc: dict[str, Any]) -> str:
    title = f"onnxgate zoo: {doc.get('zoo', '')}"
    head = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{escape(title)}</title>"
            f"<style>{_ZOO_CSS}</style></head><body>")
    foot = (f"<p class='muted'>onnxgate {escape(doc.get('onnxgate_version', ''))}, zoo schema "
            f"{escape(str(doc.get('schema_version', '')))}; source {escape(doc.get('source', ''))}; ledger "
            "ledger.jsonl</p>")
    parts = [head, f"<h1>onnxgate zoo — <code>{escape(doc.get('zoo', ''))}</code></h1>", _verdict(doc), _figures(doc),
             _rates(doc), _failures(doc), _mix(doc), _distributions(doc), _models(doc), foot,
             f"<script>{_SORT_JS}</script></body></html>"]
    return "".join(parts)


def _verdict(doc: dict) -> str:
    ok = doc.get("verdict") == "pass"
    head = ("PASS — every model passed" if not doc.get("failed") else "PASS — every failure is allowed by --allow-fail"
            ) if ok else f"FAIL (exit code {doc.get('exit_code')})"
    reason = f"<div>{escape(doc['reason'])}</div>" if doc.get("reason") else ""
    return (f"<div class='verdict {'pass' if ok else 'fail'}' id='verdict'><strong>{head}</strong>"
            f"<div>{escape(doc.get('summary', ''))}</div>{reason}</div>")


def _figures(doc: dict) -> str:
    rate = doc.get("pass_rate")
    items = [("pass rate", "–" if rate is None else f"{rate:.0%}"), ("models", doc.get("models_total")),
             ("passed", doc.get("passed")), ("failed", doc.get("failed")),
             ("wall time (this run)", f"{doc.get('wall_seconds', 0):.0f} s"), ("executor", f"{doc.get('executor')} × {doc.get('jobs')}"),
             ("run now / from ledger", f"{doc.get('ran')} / {doc.get('resumed')}")]
    if doc.get("shard"):
        items.append(("shard", doc["shard"]))
    stages = ", ".join(doc.get("stages") or [])
    return ("<div class='figures' id='figures'>" + "".join(
        f"<div class='figure'><b>{_e(v)}</b>{escape(k)}</div>" for k, v in items) + "</div>"
        + f"<p class='muted'>stages: {escape(stages)}</p>")


def _rates(doc: dict) -> str:
    parts = ["<h2 id='pass-rate'>Pass rate by family and by tag</h2><div class='plots'>"]
    for key, name, title in (("by_family", "pass-rate-family", "pass rate by family (%)"),
                             ("by_tag", "pass-rate-tag", "pass rate by tag (%)")):
        groups = doc.get(key) or {}
        labels = [f"{g} ({v['passed']}/{v['models']})" for g, v in groups.items()]
        values = [100.0 * (v["pass_rate"] or 0.0) for v in groups.values()]
        low = {i for i, v in enumerate(groups.values()) if v["passed"] < v["models"]}
        parts.append(svg.bar_chart(name, title, labels, values, unit="%", highlight=low, width=520))
    return "".join(parts) + "</div>"


def _failures(doc: dict) -> str:
    classes = doc.get("failure_classes") or {}
    if not classes:
        return "<h2 id='failures'>Failure classes</h2><p>No model failed.</p>"
    rows = [[escape(name), c["count"], "<br>".join(f"<code>{escape(x['model'])}</code>: {escape(x['reason'][:200])}"
                                                    for x in c["examples"])] for name, c in classes.items()]
    return ("<h2 id='failures'>Failure classes</h2>" + _table(["class", "models", "examples"], rows, raw={0, 2})
            + "<div class='plots'>" + svg.bar_chart("failure-classes", "failed models per class", list(classes),
                                                    [float(c["count"]) for c in classes.values()],
                                                    highlight=set(range(len(classes)))) + "</div>")


def _mix(doc: dict) -> str:
    mix = doc.get("strategy_mix") or {}
    return ("<h2 id='strategies'>How the exports were won (exporter, opset, repair)</h2><div class='plots'>"
            + svg.bar_chart("strategy-mix", "models per winning export", list(mix), [float(v) for v in mix.values()])
            + "</div>")


def _distributions(doc: dict) -> str:
    seconds, memory = doc.get("seconds_distribution") or {}, doc.get("peak_mb_distribution") or {}
    return ("<h2 id='distributions'>Time and memory per model</h2><div class='plots'>"
            + svg.bar_chart("seconds-distribution", "models per wall time (s, the worker's)", list(seconds),
                            [float(v) for v in seconds.values()], width=520)
            + svg.bar_chart("memory-distribution", "models per peak memory (MB: the worker or its export attempts)", list(memory),
                            [float(v) for v in memory.values()], width=520) + "</div>")


def _models(doc: dict) -> str:
    allowed = set(doc.get("allowed_failures", []))
    rows = []
    for m in doc["models"]:
        link = (f"<a href='{escape(m['report'])}'>{escape(m['model'])}</a>" if m.get("report")
                else escape(m["model"]))
        verdict = ("<span class='pass'>pass</span>" if m.get("verdict") == "pass" else
                   "<span class='fail'>FAIL</span>" + (" (allowed)" if m["model"] in allowed else ""))
        domain = "; ".join(f"{v}" for v in (m.get("domain") or {}).values())
        won = f"{m['strategy']} @{m.get('opset')}" if m.get("strategy") else ""
        rows.append([link, escape(m.get("family") or ""), escape(", ".join(m.get("tags") or [])), verdict,
                     m.get("exit_code"), escape(m.get("stage") or ""), escape(m.get("failure_class") or ""),
                     escape(won + (f" + {m['repair']}" if m.get("repair") else "")), m.get("seconds"),
                     max(m.get("peak_mb") or 0.0, m.get("attempt_peak_mb") or 0.0),
                     escape(domain[:160]), escape((m.get("reason") or "")[:240])])
    head = "".join(f"<th>{escape(h)}</th>" for h in ("model", "family", "tags", "verdict", "exit", "stage reached",
                                                      "failure class", "export won by", "seconds", "peak MB",
                                                      "verified domain", "reason"))
    body = "".join("<tr>" + "".join(_cell(i, c) for i, c in enumerate(r)) + "</tr>" for r in rows)
    return (f"<h2 id='models'>Models</h2><p class='muted'>Click a column to sort. The model's name links its own "
            f"report.</p><table class='sortable' id='model-table'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")


def _cell(i: int, value: Any) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"<td data-v='{value}'>{_e(value)}</td>"
    if value is None:
        return "<td data-v=''>–</td>"
    return f"<td class='reason'>{value}</td>" if i == 11 else f"<td>{value}</td>"
