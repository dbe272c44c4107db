"""`onnxgate verify MODEL.onnx --against REF` (parity at every claimed shape) and `onnxgate verify BUNDLE_DIR`
(re-run a bundle's golden inputs, torch-free)."""

from __future__ import annotations

from pathlib import Path

import typer

from .common import TRUST_CODE_HELP, console, finish, progress
from .export_cmd import ACCEPT_DOMAIN_HELP, DIM_HELP, INPUT_HELP, TARGET_HELP


def verify(
    target: Path = typer.Argument(..., help="An .onnx file, or a bundle folder written by `onnxgate bundle`."),
    against: str = typer.Option(None, help="The PyTorch model to compare with (default: the source recorded in the model, when it is a torchvision:/timm: name)."),
    trust_source: bool = typer.Option(False, "--trust-source", help="Use the source model the file's metadata records even when it is code (a .py file, a module, a model file): imports and runs it. Only for files you trust."),
    inputs: list[str] = typer.Option([], "--input", "-i", help=INPUT_HELP),
    dims: list[str] = typer.Option([], "--dim", help=DIM_HELP),
    data: list[str] = typer.Option([], "--data", help="Real inputs, repeatable: an .npz/.npy file (arrays named after the inputs), an image folder (photos flat or in class sub-folders, for a single image input; preprocessed as the model's metadata records, e.g. from `export --meta preprocess=...`) or file.py:fn yielding feeds."),
    runtime: list[str] = typer.Option([], "--runtime", help="onnxruntime or openvino for a model (repeatable); "
                                      "for a bundle, onnxruntime==X.Y.Z runs it in an isolated environment."),
    rtol: float = typer.Option(None, help="Relative tolerance for every output (default per dtype)."),
    atol: float = typer.Option(None, help="Absolute tolerance for every output (default per dtype)."),
    localize: bool = typer.Option(True, "--localize/--no-localize", help="Name the first diverging layer when parity fails."),
    reinit_degenerate: bool = typer.Option(False, "--reinit-degenerate", help="Re-initialize the reference's all-zero weights with seeded noise, as `export --reinit-degenerate` did (automatic when the model records it)."),
    allow_static: list[str] = typer.Option([], "--allow-static", help="Accept this dim being frozen. Repeatable."),
    accept_domain: bool = typer.Option(False, "--accept-domain", help=ACCEPT_DOMAIN_HELP),
    targets: list[str] = typer.Option([], "--target", help=TARGET_HELP),
    weights: str = typer.Option(None, help="State-dict file for the --against model."),
    arch: str = typer.Option(None, help="Architecture ref when --against is a state-dict file."),
    trust_pickle: bool = typer.Option(False, "--trust-code", "--trust-pickle", help=TRUST_CODE_HELP),
    trust: Path = typer.Option(None, "--trust", help="For a bundle: the public key (KEY.pub) it must be signed with "
                               "(`onnxgate sign`); checks the signature, the signed claim and every signed digest "
                               "first (exit 9 naming which), and refuses an unsigned bundle."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
) -> None:
    """Prove an ONNX model computes what its PyTorch model computes, at every shape it claims."""
    if target.is_dir() or target.name.endswith((".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")):
        return _verify_bundle(target, runtime, json_out, trust)
    if trust is not None:
        from ..errors import BadInputError

        raise BadInputError(f"--trust checks a signed bundle; '{target}' is a model file, not a bundle folder.",
                            hint="Pass the bundle folder (or .tar.gz) written by `onnxgate bundle` and signed by "
                                 "`onnxgate sign`.")
    from ..spec import ExportConfig, VerifyConfig, parse_dim, parse_input
    from ..verify.api import verify as do_verify

    config = ExportConfig(inputs=tuple(parse_input(s) for s in inputs), dims=tuple(parse_dim(s) for s in dims),
                          allow_static=tuple(allow_static))
    settings = VerifyConfig(runtimes=tuple(runtime) or ("onnxruntime",), targets=tuple(targets), data=tuple(data),
                            rtol=rtol, atol=atol, localize=localize, reinit_degenerate=reinit_degenerate,
                            trust_source=trust_source, weights=weights, arch=arch, trust_pickle=trust_pickle,
                            accept_domain=accept_domain)
    with progress("verifying"):
        result = do_verify(target, against, config=config, settings=settings)
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
