"""The verified shape domain of real models (issue 12, Build 1): each model is exported with dynamic dims declared
wider than some of them support, and the export's full verification discovers, per dim, the interval and
granularity where ONNX Runtime agrees with PyTorch. The table shows declared vs verified, the failing sizes (and
who failed: PyTorch itself or the ONNX model), how many sizes were probed and how many seconds that took.

    .venv/bin/python benchmarks/domain_table.py [--only SUBSTRING] [--no-append]

Exports run with ``accept_domain=True`` (a narrower domain is recorded, not raised) and ``reinit_degenerate=True``
(torchvision's ViT head is zero-initialized). The table is printed and appended to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import sys
import tempfile
import time
from pathlib import Path

import onnxgate
from onnxgate.errors import OnnxgateError
from onnxgate.spec import ExportConfig, parse_dim, parse_input

IMAGE = ["x:Bx3xHxW:float32"]
CNN_DIMS = ["B=1..8", "H=96..320@224", "W=96..320@224"]
TEXT = ["input_ids:BxS:int64:0..999", "attention_mask:BxS:int64:1..1"]


def bert_encoder():
    """A BERT-family encoder: BertModel with a 512-row position table (tiny otherwise), random weights."""
    import torch
    import transformers

    cfg = transformers.BertConfig(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=128, max_position_embeddings=512)
    torch.manual_seed(0)
    model = transformers.BertModel(cfg).eval()
    ids = torch.randint(0, 1000, (2, 32), generator=torch.Generator().manual_seed(0))
    return model, {"input_ids": ids, "attention_mask": torch.ones(2, 32, dtype=torch.int64)}


def mobilevit_ref() -> str:
    import timm

    return "timm:" + next(n for n in ("mobilevit_xxs", "mobilevitv2_050") if n in timm.list_models())


MODELS = [
    ("torchvision:resnet18", IMAGE, CNN_DIMS),
    ("torchvision:mobilenet_v3_large", IMAGE, CNN_DIMS),
    ("torchvision:efficientnet_b0", IMAGE, CNN_DIMS),
    ("torchvision:vit_b_16", IMAGE, ["B=1..4", "H=160..320@224", "W=160..320@224"]),
    ("bert (BertModel, 512 positions)", TEXT, ["B=1..4", "S=4..600@32"]),
    ("mobilevit", IMAGE, ["B=1..4", "H=64..512@256", "W=64..512@256"]),
]


def measure(name: str, inputs: list[str], dims: list[str], folder: Path) -> list[dict]:
    config = ExportConfig(inputs=tuple(map(parse_input, inputs)), dims=tuple(map(parse_dim, dims)),
                          accept_domain=True, reinit_degenerate=True)
    model, example = (bert_encoder() if name.startswith("bert") else (None, None))
    ref = mobilevit_ref() if name == "mobilevit" else name
    start = time.perf_counter()
    try:
        if model is not None:
            result = onnxgate.export(model, folder / "m.onnx", config=config, example_inputs=example, force=True)
        else:
            result = onnxgate.export(ref, folder / "m.onnx", config=config, force=True)
    except OnnxgateError as exc:
        return [{"model": ref, "dim": "-", "declared": "-", "verified": f"{type(exc).__name__}: {exc.message[:160]}",
                 "fails": "", "probes": 0, "seconds": round(time.perf_counter() - start, 1)}]
    parity = result.attempts[result.winner].parity
    total = round(time.perf_counter() - start, 1)
    rows = []
    for dim, domain in parity.domains.items():
        failure = domain.telling_failure()
        rows.append({"model": ref if model is None else name, "dim": dim, "declared": domain.declared(),
                     "verified": domain.describe(), "narrower": domain.narrower,
                     "fails": "" if failure is None else f"{failure.size} ({failure.by}: {failure.error[:110]})",
                     "failing sizes": len(domain.failures), "probes": len(domain.probes),
                     "skipped": len(domain.skipped), "seconds": round(domain.seconds, 1), "export_s": total})
    return rows


def markdown(rows: list[dict], command: str, total: float) -> str:
    import onnxruntime
    import torch

    lines = ["", "# Verified shape domains (issue 12, Build 1)", "",
             f"Produced by `{command}` on {dt.date.today().isoformat()} ({total:.0f} s), {cpu_name()}, "
             f"2 shared cores; torch {torch.__version__}, onnxruntime {onnxruntime.__version__}. Each model is "
             "exported with the dims below (random weights, `--reinit-degenerate`, `--accept-domain`); the export "
             "verifies its winner on ONNX Runtime at the range ends, off-trace sizes, sizes of different "
             "divisibility (odd multiples of 8, 16, 32 and of the graph's strides and patch sizes, and a size that "
             "is none of these), seeded draws, and validation/bisection probes where something failed. `probes`: "
             "sizes run for that dim (the traced one included); `seconds`: the discovery's wall time for that dim "
             "(PyTorch and ONNX Runtime runs); `export s`: the whole export of that model (ladder, quick check, full "
             "verification of the winner).",
             "", "| model | dim | declared | verified | narrower | first telling failure (who: error) | failing sizes "
             "| probes | skipped by budget | seconds | export s |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        fails = r["fails"].replace("|", "/")
        lines.append(f"| {r['model']} | {r['dim']} | {r['declared']} | {r['verified']} | "
                     f"{'yes' if r.get('narrower') else 'no'} | {fails or '-'} | {r.get('failing sizes', '-')} | "
                     f"{r['probes']} | {r.get('skipped', '-')} | {r['seconds']} | {r.get('export_s', '-')} |")
    return "\n".join(lines) + "\n"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "CPU"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", default="")
    parser.add_argument("--no-append", action="store_true")
    args = parser.parse_args()
    start = time.perf_counter()
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, inputs, dims in MODELS:
            if args.only in name:
                print(f"... {name}", file=sys.stderr, flush=True)
                rows += measure(name, inputs, dims, Path(tmp))
                print(rows[-1], file=sys.stderr, flush=True)
    command = ".venv/bin/python benchmarks/domain_table.py" + (f" --only {args.only}" if args.only else "")
    text = markdown(rows, command, time.perf_counter() - start)
    print(text)
    if not args.no_append:
        with open(Path(__file__).with_name("RESULTS.md"), "a", encoding="utf-8") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
