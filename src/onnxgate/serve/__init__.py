"""Serving a proven bundle over HTTP: the Open Inference Protocol v2, image classification, Prometheus metrics,
and configs for Triton / KServe clusters. The input contract is the bundle's verified domain (``contract.py``).

Torch-free and onnx-free; FastAPI, uvicorn, prometheus-client, python-multipart and Pillow (the ``serve`` extra)
load on first use. Names load lazily.
"""

from .._lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    "serve": ".server", "ServeSettings": ".server", "ServeResult": ".server", "create_app": ".app",
    "AppSettings": ".app", "load_served_model": ".contract", "ServedModel": ".contract",
    "export_config": ".export", "ConfigExport": ".export",
})
__all__ = ["serve", "ServeSettings", "ServeResult", "create_app", "AppSettings", "load_served_model", "ServedModel",
           "export_config", "ConfigExport"]
