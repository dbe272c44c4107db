"""Deploy targets: one artifact per target (OpenVINO IR, ONNX Runtime Mobile, LiteRT/TFLite, TensorRT, Core ML)
from the verified ONNX file, each verified through the same parity code as the ONNX file. Names load on first use:
importing this package imports no converter."""

from .._lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    "TARGETS": ".model", "DeployReport": ".model", "DeployedArtifact": ".model", "parse_targets": ".model",
    "deploy_bundle": ".api", "deploy_verified": ".api",
})
__all__ = ["TARGETS", "DeployReport", "DeployedArtifact", "parse_targets", "deploy_bundle", "deploy_verified"]
