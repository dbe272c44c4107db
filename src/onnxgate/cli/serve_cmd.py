"""`onnxgate serve BUNDLE`: serve a proven bundle over HTTP (Open Inference Protocol v2, /classify, /metrics) and,
with --grpc-port, the KServe/Triton gRPC protocol; or write its Triton / KServe configuration with
`--export-config triton|kserve DIR`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from .common import console, finish, progress


def serve(
    bundle: Path = typer.Argument(..., help="A bundle folder or .tar.gz written by `onnxgate bundle` / `run`."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0: every interface)."),
    port: int = typer.Option(8000, "--port", help="Port to listen on; 0 picks a free one (printed)."),
    workers: int = typer.Option(1, "--workers", help="Worker processes, each with its own session."),
    threads: int = typer.Option(None, "--threads", help="onnxruntime intra-op threads per worker (default: the "
                                "bundle's benchmark recommendation, else onnxruntime's default)."),
    opt_level: str = typer.Option("all", "--opt-level", help="onnxruntime graph optimization level: disable, basic, "
                                  "extended, layout or all (the golden outputs are re-checked at it)."),
    max_batch: int = typer.Option(None, "--max-batch", help="Dynamic batching: merge concurrent requests into runs "
                                  "of at most this many rows (within the verified batch domain)."),
    batch_timeout_ms: float = typer.Option(2.0, "--batch-timeout-ms", help="How long the oldest queued request "
                                           "waits for others to merge with (with --max-batch)."),
    max_body_mb: float = typer.Option(64.0, "--max-body-mb", help="Largest request body accepted (413 beyond)."),
    model_name: str = typer.Option(None, "--model-name", help="The model's name in URLs (default: from the "
                                   "bundle's source reference)."),
    grace_s: int = typer.Option(30, "--grace-s", help="On SIGTERM/SIGINT, how long in-flight requests may finish."),
    header_timeout_s: float = typer.Option(10.0, "--header-timeout-s", help="Close a connection whose request "
                                           "head has not arrived this many seconds after it started (408)."),
    body_timeout_s: float = typer.Option(60.0, "--body-timeout-s", help="Close a connection whose request body "
                                         "has not arrived this many seconds after its head (408)."),
    max_queue: int = typer.Option(None, "--max-queue", help="Admission limit: inference requests a worker holds at "
                                  "once (HTTP and gRPC); beyond it a 503 with Retry-After (default: no limit)."),
    auth_token_file: Path = typer.Option(None, "--auth-token-file", help="Require 'Authorization: Bearer TOKEN' "
                                         "(the file's content) on every route but /v2/health/*; default: "
                                         "$ONNXGATE_SERVE_TOKEN when set, else no auth."),
    grpc_port: int = typer.Option(None, "--grpc-port", help="Also serve the KServe/Triton gRPC protocol on this "
                                  "port (0: a free one; Triton uses 8001). Off by default."),
    runtime: str = typer.Option("auto", "--runtime", help="auto: what the bundle's benchmark recommends (OpenVINO "
                                "at the precision it was verified at, when installed), else onnxruntime; or "
                                "onnxruntime / openvino."),
    trust: Path = typer.Option(None, "--trust", help="Serve only a bundle signed with this public key (`onnxgate "
                               "sign`): an unsigned or mis-signed bundle is refused (exit 9) before the port is bound "
                               "(with --export-config: before anything is written)."),
    export_config: tuple[str, Path] | None = typer.Option(None, "--export-config", metavar="FORMAT DIR",
                                                   help="Instead of serving, write a Triton model repository "
                                                   "(triton) or a KServe InferenceService with one (kserve) to DIR."),
    storage_uri: str = typer.Option(None, "--storage-uri", help="With --export-config kserve: where the model "
                                    "repository will be uploaded (s3://, gs://, pvc://...)."),
    force: bool = typer.Option(False, "--force", help="With --export-config: replace an existing DIR."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout (after shutdown)."),
) -> None:
    """Serve the bundle's verified model; every request is held to the shapes the bundle proves."""
    if export_config is not None:
        fmt, out_dir = export_config
        if trust is not None:  # the configuration is written only for a bundle signed with that key
            from ..bundle.verify import opened_bundle
            from ..serve.server import prove

            with opened_bundle(bundle) as folder:
                prove(folder, str(trust))
        return _export(bundle, fmt, out_dir, model_name, max_batch, batch_timeout_ms, storage_uri, force, json_out)
    from ..errors import require

    for module in ("fastapi", "uvicorn", "prometheus_client", "multipart", "PIL"):
        require(module, "serve", "`onnxgate serve`")
    from ..serve.server import ServeSettings
    from ..serve.server import serve as run_server

    settings = ServeSettings(host=host, port=port, workers=workers, threads=threads, opt_level=opt_level,
                             max_batch=max_batch, batch_timeout_ms=batch_timeout_ms, max_body_mb=max_body_mb,
                             model_name=model_name, grace_s=grace_s, header_timeout_s=header_timeout_s,
                             body_timeout_s=body_timeout_s, max_queue=max_queue, grpc_port=grpc_port, runtime=runtime,
                             auth_token_file=str(auth_token_file) if auth_token_file is not None else None,
                             trust=str(trust) if trust is not None else None)
    with progress("starting the server") as status:
        result = run_server(bundle, settings, announce=status.update)
    if not json_out:
        console.print(f"stopped serving '{escape(result.model)}' at {escape(result.url)} after {result.seconds:.1f} s")
    finish(result, json_out=json_out)


def _export(bundle: Path, fmt: str, out_dir: Path, model_name: str | None, max_batch: int | None,
            batch_timeout_ms: float, storage_uri: str | None, force: bool, json_out: bool) -> None:
    from ..serve.export import export_config

    with progress(f"writing the {fmt} configuration") as status:
        status.update("verifying the bundle (checksums, golden outputs)")
        result = export_config(bundle, fmt.lower(), out_dir, name=model_name, max_batch=max_batch,
                               batch_timeout_ms=batch_timeout_ms, storage_uri=storage_uri, force=force)
    if not json_out:
        console.print(f"{fmt} configuration for '{escape(result.model)}' written to {escape(str(out_dir))}: "
                      f"{', '.join(escape(f) for f in result.files)}")
        if result.resource_name:
            console.print(f"model name '{escape(result.model)}' (the same in /v2/models/NAME locally, in Triton and "
                          f"KServe); Kubernetes resource name '{escape(result.resource_name)}'")
        console.print(f"max_batch_size {result.max_batch_size} (from the verified batch domain)")
        if result.dynamic_batching:
            console.print(f"dynamic_batching on: {result.dynamic_batching}")
        for line in result.unenforced:
            console.print(f"[yellow]not enforced by {fmt}[/]: {escape(line)}")
        for line in result.notes:
            console.print(f"[yellow]note[/]: {escape(line)}")
    finish(result, json_out=json_out)


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
