"""`onnxgate serve BUNDLE --export-config triton|kserve DIR`: the same proven model, for an existing serving cluster.

``triton`` writes a Triton model repository::

    DIR/NAME/config.pbtxt          platform onnxruntime_onnx; dims and max_batch_size from the verified domain
    DIR/NAME/1/model.onnx          the bundle's model (and its external-data files)
    DIR/NAME/onnxgate_manifest.json the bundle's manifest: checksums, tolerances, verified domain

``kserve`` writes ``DIR/inferenceservice.yaml`` (a KServe ``InferenceService`` on the Triton runtime, Open
Inference Protocol v2) and the Triton repository it points at under ``DIR/model_repository/``; upload that folder
to ``--storage-uri``. The model keeps one name everywhere (``onnxgate serve``'s ``/v2/models/NAME``, Triton's
repository and config, KServe's ``/v2/models/NAME``); only the InferenceService's own Kubernetes object name, which
must be an RFC 1035 label, is derived from it (``mobilenet_v2`` -> ``mobilenet-v2``) and reported separately.

With ``--max-batch N`` (after the same row-independence probe ``serve --max-batch`` runs) the config turns on
Triton's ``dynamic_batching`` with ``--batch-timeout-ms`` as its queue delay; without it batching stays off and the
result says so. ``service.triton_config`` is the same configuration as the JSON of Triton's
``/v2/models/NAME/config``, which ``onnxgate serve`` answers (and its gRPC ``ModelConfig`` carries).

Triton's config says less than the verified domain can: a batch dim is ``1..max_batch_size`` and any other
dynamic dim is ``-1`` (any size). Whatever the config cannot hold (a batch minimum above 1, a granularity, an
interval of an image side) is written as a comment in config.pbtxt, recorded under the ``onnxgate_verified_domain``
parameter, and listed in the result's ``unenforced``: on that cluster, the client must keep to it.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import BadInputError
from .service import TRITON_TYPES, _dynamic_batching, _max_batch_size, _unenforced

FORMATS = ("triton", "kserve")


@dataclass
class ConfigExport:
    """What `serve --export-config` wrote, and which verified limits the target cannot enforce."""

    format: str
    bundle: str
    model: str
    files: list[str]
    max_batch_size: int
    unenforced: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    dynamic_batching: dict[str, Any] | None = None  # None: off
    resource_name: str | None = None  # kserve: the InferenceService's Kubernetes name (the model's name is `model`)

    @property
    def passed(self) -> bool:
        return True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def export_config(bundle: str | Path, fmt: str, out_dir: str | Path, *, name: str | None = None,
                  max_batch: int | None = None, batch_timeout_ms: float = 2.0, storage_uri: str | None = None,
                  force: bool = False) -> ConfigExport:
    """Write the Triton repository (and, for ``kserve``, the InferenceService) for the proven bundle."""
    from ..bundle.verify import opened_bundle
    from ..fsutil import atomic_dir
    from .contract import load_served_model
    from .server import ServeSettings, check_batching, check_settings, prove

    if fmt not in FORMATS:
        raise BadInputError(f"--export-config '{fmt}' is not a known format.", hint=f"Use one of: {', '.join(FORMATS)}.")
    check_settings(ServeSettings(max_batch=max_batch, batch_timeout_ms=batch_timeout_ms))
    with opened_bundle(Path(bundle)) as folder:
        prove(folder)  # tampered (9), wrong numbers (4): nothing is exported for a bundle that does not verify
        model = load_served_model(folder, name=name, runtime="onnxruntime")  # what Triton's config names
        max_batch = check_batching(model, ServeSettings(max_batch=max_batch))  # rows proven independent first
        with atomic_dir(Path(out_dir), force=force) as tmp:
            repo = tmp / "model_repository" if fmt == "kserve" else tmp
            result = write_triton(model, folder, repo, max_batch=max_batch, batch_timeout_ms=batch_timeout_ms)
            if fmt == "kserve":
                result.resource_name = _dns_name(model.name)
                (tmp / "inferenceservice.yaml").write_text(inference_service(model, storage_uri, result),
                                                          encoding="utf-8")
            files = sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file())
    result.format, result.bundle, result.files = fmt, str(bundle), files
    if result.dynamic_batching is None:
        result.notes.append("dynamic_batching is off: pass --max-batch N to let Triton merge concurrent requests "
                            "(after the same row-independence check `onnxgate serve --max-batch` runs)"
                            if result.max_batch_size else "dynamic_batching is off: the model has no verified "
                            "batch dim to merge requests along")
    if fmt == "kserve" and not storage_uri:
        result.notes.append("storageUri is a placeholder (s3://CHANGE-ME/...): pass --storage-uri, or edit "
                            "inferenceservice.yaml before applying it")
    return result


def write_triton(model, folder: Path, repo: Path, *, max_batch: int | None, batch_timeout_ms: float) -> ConfigExport:
    from ..bundle import manifest as mf

    target = repo / model.name
    (target / "1").mkdir(parents=True)
    shutil.copyfile(folder / mf.MODEL, target / "1" / mf.MODEL)
    for rel in model.manifest.get("model", {}).get("external_data") or []:
        (target / "1" / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(folder / rel, target / "1" / rel)
    shutil.copyfile(folder / mf.MANIFEST, target / "onnxgate_manifest.json")
    text, max_batch_size, unenforced = config_pbtxt(model, max_batch=max_batch, batch_timeout_ms=batch_timeout_ms)
    (target / "config.pbtxt").write_text(text, encoding="utf-8")
    return ConfigExport("triton", "", model.name, [], max_batch_size, unenforced,
                        dynamic_batching=_dynamic_batching(max_batch, max_batch_size, batch_timeout_ms))


def config_pbtxt(model, *, max_batch: int | None = None, batch_timeout_ms: float = 2.0) -> tuple[str, int, list[str]]:
    """Triton's model configuration (protobuf text format) for the served model; the max_batch_size it declares and
    the verified limits Triton will not enforce."""
    max_batch_size = _max_batch_size(model)
    unenforced = _unenforced(model, max_batch_size)
    lines = [f"# Written by onnxgate from the bundle of '{model.manifest.get('source_ref')}'.",
             "# Verified limits Triton does not enforce (clients must keep to them):" if unenforced else
             "# Every verified limit of the inputs is expressed below."]
    lines += [f"#   {line}" for line in unenforced]
    lines += [f"name: {_q(model.name)}", 'platform: "onnxruntime_onnx"', f"max_batch_size: {max_batch_size}"]
    lines += _tensors("input", model.inputs, max_batch_size) + _tensors("output", model.outputs, max_batch_size)
    dynamic = _dynamic_batching(max_batch, max_batch_size, batch_timeout_ms)
    if dynamic is not None:
        lines.append(f"dynamic_batching {{ preferred_batch_size: [ {max_batch} ] "
                     f"max_queue_delay_microseconds: {dynamic['max_queue_delay_microseconds']} }}")
    lines.append("instance_group [ { count: 1 kind: KIND_CPU } ]")
    domain = {t.name: [d.to_dict() for d in t.dims] for t in model.inputs}
    lines.append(f"parameters {{ key: \"onnxgate_verified_domain\" value {{ string_value: {_q(json.dumps(domain))} }} }}")
    return "\n".join(lines) + "\n", max_batch_size, unenforced


def _tensors(kind: str, tensors, max_batch_size: int) -> list[str]:
    lines = [f"{kind} ["]
    for index, tensor in enumerate(tensors):
        if tensor.dtype not in TRITON_TYPES:
            raise BadInputError(f"The {kind} '{tensor.name}' has dtype {tensor.dtype}, which Triton's config cannot name.",
                                hint="Serve this bundle with `onnxgate serve` instead.")
        dims = [d.oip for d in tensor.dims[1 if max_batch_size else 0:]]
        comma = "," if index < len(tensors) - 1 else ""
        lines.append(f"  {{ name: {_q(tensor.name)} data_type: {TRITON_TYPES[tensor.dtype]} "
                     f"dims: [ {', '.join(map(str, dims))} ] }}{comma}")
    return lines + ["]"]


def _q(text: str) -> str:
    """A protobuf text-format (and YAML) double-quoted string: JSON's escaping is valid in both."""
    return json.dumps(text, ensure_ascii=True)


def _dns_name(name: str) -> str:
    """A Kubernetes object name (RFC 1035 label): lowercase letters, digits and '-', starting with a letter."""
    text = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")
    text = ("m-" + text) if not text[:1].isalpha() else text
    return text[:63].rstrip("-") or "model"


def inference_service(model, storage_uri: str | None, result: ConfigExport) -> str:
    """A KServe v1beta1 InferenceService (YAML) serving the Triton repository with the Open Inference Protocol."""
    from ..bundle import manifest as mf

    uri = storage_uri or f"s3://CHANGE-ME/{_dns_name(model.name)}/model_repository"
    domain = json.dumps({t.name: [d.to_dict() for d in t.dims] for t in model.inputs})
    lines = [
        "# Written by onnxgate. Upload model_repository/ to the storageUri below (it is a placeholder unless",
        "# --storage-uri was given), then: kubectl apply -f inferenceservice.yaml",
        "apiVersion: serving.kserve.io/v1beta1",
        "kind: InferenceService",
        "metadata:",
        f"  name: {result.resource_name or _dns_name(model.name)}",
        "  annotations:",
        f"    onnxgate.io/model-name: {_q(model.name)}",
        f"    onnxgate.io/source-ref: {_q(str(model.manifest.get('source_ref')))}",
        f"    onnxgate.io/model-sha256: {_q(model.manifest['files'][mf.MODEL]['sha256'])}",
        f"    onnxgate.io/verified-domain: {_q(domain)}",
        f"    onnxgate.io/unenforced: {_q('; '.join(result.unenforced) or 'none')}",
        "spec:",
        "  predictor:",
        "    model:",
        "      modelFormat:",
        "        name: onnx",
        "      protocolVersion: v2",
        "      runtime: kserve-tritonserver",
        f"      storageUri: {_q(uri)}",
    ]
    return "\n".join(lines) + "\n"
