"""`onnxgate verify MODEL.onnx --against REF` (parity at every claimed shape) and `onnxgate verify BUNDLE_DIR`
(re-run a bundle's golden inputs, torch-free)."""

from __future__ import annotations

from pathlib import Path

import typer

from .common import console, finish, progress
from .params import options_of


@options_of("verify")
def verify(
    path: Path = typer.Argument(..., metavar="MODEL_OR_BUNDLE", help="An .onnx file, or a bundle folder written by `onnxgate bundle`."),
    *, given: dict,
) -> None:
    """Prove an ONNX model computes what its PyTorch model computes, at every shape it claims."""
    from ..configure import command_config

    job, values = command_config("verify", given)
    json_out, trust = bool(values.get("json")), values.get("trust")
    if path.is_dir() or path.name.endswith((".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")):
        return _verify_bundle(path, values.get("runtime", []), json_out, Path(trust) if trust else None)
    if trust is not None:
        from ..errors import BadInputError

        raise BadInputError(f"--trust checks a signed bundle; '{path}' is a model file, not a bundle folder.",
                            hint="Pass the bundle folder (or .tar.gz) written by `onnxgate bundle` and signed by "
                                 "`onnxgate sign`.")
    from ..spec import VerifyConfig
    from ..verify.api import verify as do_verify

    settings = VerifyConfig(runtimes=tuple(values.get("runtime", ())) or ("onnxruntime",), targets=job.targets,
                            data=job.data, rtol=values.get("rtol"), atol=values.get("atol"),
                            localize=values.get("localize", True), reinit_degenerate=job.export.reinit_degenerate,
                            trust_source=bool(values.get("trust_source")), weights=job.weights, arch=job.arch,
                            trust_pickle=job.trust_pickle, accept_domain=job.export.accept_domain)
    with progress("verifying"):
        result = do_verify(path, values.get("against") or job.ref, config=job.export, settings=settings)
    _print(result, json_out)


def _print(result, json_out: bool) -> None:
    if not json_out:
        from rich.markup import escape

        from .render import parity_table

        for w in result.warnings:
            console.print(f"[yellow]warning[/]: {w}")
        for p in result.parities:
            console.print(parity_table(p))
            for case in [c for c in p.cases if not c.passed][:5]:
                reasons = case.error or "; ".join(f"{c.name}: {c.reason}" for c in case.comparisons if not c.passed)
                console.print(f"  [red]{case.label}[/] ({case.source}): {reasons}")
            for domain in p.domains.values():
                console.print(f"  dim {escape(domain.summary())} — {len(domain.probes)} sizes probed in "
                              f"{domain.seconds:.1f} s")
            colour = "green" if p.passed else "red"
            console.print(f"[{colour}]{p.candidate}: {p.summary()}[/]")
        if result.localization:
            console.print(f"[bold]localizer[/]: {result.localization['summary']}")
        if result.preprocessing:  # image bytes -> label, server's preprocessing vs torchvision's (--data folders)
            pre = result.preprocessing
            console.print(f"[{'green' if pre['passed'] else 'red'}]preprocessing {escape(pre['spec'])}: "
                          f"{pre['images']} photos, max pixel error {pre['max_pixel_error']:.3g} (bound "
                          f"{pre['pixel_bound']:g}), top-1 {pre['top1_agree']}/{pre['images']}, top-5 sets "
                          f"{pre['top5_agree']}/{pre['images']} vs torchvision + PyTorch[/]")
        if result.targets:
            from ..verify.targets import render_targets_table

            console.print(render_targets_table(result.targets))
    finish(result, json_out=json_out, quiet_failure=True)


def _verify_bundle(bundle: Path, runtimes: list[str], json_out: bool, trust: Path | None = None) -> None:
    """`onnxgate verify BUNDLE`: each runtime's result, and the tolerances the outputs were judged at with where
    they came from (the manifest's claims, held to their ceiling before anything ran); the worst exit code."""
    from rich.markup import escape

    from ..bundle import parse_runtime, verify_matrix
    from ..verify.compare import sci
    from .bundle_cmd import _finish

    for spec in runtimes:
        parse_runtime(spec)  # reject a typo before minutes of installing the others
    results = verify_matrix(bundle, list(runtimes) or [None], trust=trust)
    if not json_out:
        if results[0].signature:
            console.print(f"signature: {escape(results[0].signature)}", soft_wrap=True)
        for row in results[0].tolerances:
            ceiling = row.get("ceiling")
            held = f"; at most rtol={sci(ceiling['rtol'])} atol={sci(ceiling['atol'])} accepted" if ceiling else ""
            console.print(f"tolerance of '{escape(row['output'])}': rtol={sci(row['rtol'])} atol={sci(row['atol'])} "
                          f"(from {escape(row['source'])}{held})", soft_wrap=True)
    _finish(results, json_out)


def register(app: typer.Typer) -> None:
    app.command("verify")(verify)
