"""Fit an exported file to the opset and IR version that were asked for (``--opset``, ``--target``).

The exporters do not always write what they are asked: the dynamo exporter has no implementations below opset 18,
so ``opset_version=17`` gives opset 18 (its own down-conversion fails on most models and keeps 18 with a warning),
and it stamps IR version 10 whatever the opset, which onnxruntime up to 1.17 refuses to load. This module converts
the file down with ``onnx.version_converter`` (plus the one fix-up its Reduce adapters need) and stamps the IR
version the targets read. What cannot be fitted is an error of the attempt, so the ladder moves on to the next rung
(the TorchScript exporter writes the older opsets itself); nothing is ever kept at a newer opset or IR than a
pinned opset or a target allows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .. import serde
from ..errors import first_line

_ONNX_DOMAINS = ("", "ai.onnx")
# Reduce operators whose axes became an input at opset 18. onnx's 18 -> 17 adapter moves the axes back into an
# attribute but keeps the opset-18 attribute noop_with_empty_axes, which opset 17 does not know.
_AXES_INPUT_SINCE_18 = {"ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean",
                        "ReduceMin", "ReduceProd", "ReduceSumSquare"}


@dataclass
class Fitted:
    """What fitting did to one attempt's file: ``notes`` for the attempt's warnings, ``error`` when it cannot be
    made to fit (then the file is left as the exporter wrote it), ``error_class`` naming the limit missed."""

    notes: list[str] = field(default_factory=list)
    error: str | None = None
    error_class: str | None = None


def natural_ir(opset: int) -> int:
    """The IR version of the first onnx release that knew ai.onnx ``opset`` (17 -> 8, 20 -> 9, 21 -> 10): the
    oldest IR version a model at that opset can be stamped with."""
    from onnx.helper import VERSION_TABLE

    known = [ir for _release, ir, ai_onnx, *_rest in VERSION_TABLE if ai_onnx >= opset]
    return min(known) if known else max(ir for _release, ir, *_rest in VERSION_TABLE)


def model_opset(model) -> int | None:
    return next((o.version for o in model.opset_import if o.domain in _ONNX_DOMAINS), None)


def convert_down(model, opset: int):
    """``model`` converted to ai.onnx ``opset`` with onnx.version_converter; raises when it cannot be."""
    import onnx
    from onnx import version_converter

    converted = version_converter.convert_version(model, opset)
    if opset < 18:
        for node in converted.graph.node:
            if node.op_type not in _AXES_INPUT_SINCE_18 or node.domain not in _ONNX_DOMAINS:
                continue
            noop = [a for a in node.attribute if a.name == "noop_with_empty_axes"]
            if noop and noop[0].i != 0:
                raise ValueError(f"{node.op_type} node '{node.name}' uses noop_with_empty_axes=1, which opset "
                                 f"{opset} cannot express")
            kept = [a for a in node.attribute if a.name != "noop_with_empty_axes"]
            del node.attribute[:]
            node.attribute.extend(kept)
    if serde.fits_in_bytes(converted):
        onnx.checker.check_model(converted)
    return converted


def fit_file(path: str | Path, *, strategy: str, opset: int, pinned: bool, target_opset: int | None,
             target_ir: int | None, limit_by: str) -> Fitted:
    """Make the file at ``path`` (an attempt's staging file) an opset-``opset`` model when the exporter wrote a
    newer one, and stamp the IR version the limits allow. A ``pinned`` opset must be met exactly; otherwise a failed
    conversion keeps the exporter's opset when it is at most ``target_opset`` (None: any). The IR version is capped
    at ``target_ir`` and, for a pinned or converted opset, at the one that opset came with. ``limit_by`` names what
    set the limits (``--opset 17``, ``--target onnxruntime==1.17``) for the messages."""
    fitted = Fitted()
    head = serde.load(path, load_external_data=False)  # the header decides; the weights are read only to change it
    emitted = model_opset(head)
    cap = target_ir
    if pinned or (emitted is not None and emitted > opset):
        cap = natural_ir(opset) if cap is None else min(cap, natural_ir(opset))
    if (emitted is None or emitted <= opset) and (cap is None or head.ir_version <= cap):
        return fitted
    model = serde.load(path)
    converted = False
    if emitted is not None and emitted > opset:
        try:
            model = convert_down(model, opset)
            converted = True
            fitted.notes.append(f"the {strategy} exporter wrote opset {emitted}; converted to opset {opset} with "
                                "onnx.version_converter")
        except Exception as exc:  # the converter's adapters assert and raise RuntimeError/ValidationError
            why = (f"the {strategy} exporter wrote opset {emitted} and onnx.version_converter could not convert it "
                   f"to opset {opset}: {first_line(exc, 300)}")
            hard_max = opset if pinned else target_opset
            if hard_max is not None and emitted > hard_max:
                fitted.error, fitted.error_class = f"{why} ({limit_by} allows at most opset {hard_max})", "opset"
                return fitted
            fitted.notes.append(why + f"; kept opset {emitted}")
    final_opset = model_opset(model) or opset
    cap = target_ir
    if pinned or converted:  # stamp the IR version that opset came with, so runtimes of its time read it
        cap = natural_ir(final_opset) if cap is None else min(cap, natural_ir(final_opset))
    stamped = _stamp_ir(model, cap, final_opset, limit_by, fitted)
    if fitted.error is None and (converted or stamped):
        serde.save(model, path, force=True)
    return fitted


def _stamp_ir(model, cap: int | None, opset: int, limit_by: str, fitted: Fitted) -> bool:
    """Lower ``model``'s IR version to ``cap`` when it is newer; False when nothing changed (or on error)."""
    import onnx

    if cap is None or model.ir_version <= cap:
        return False
    if natural_ir(opset) > cap:
        fitted.error, fitted.error_class = (f"opset {opset} needs IR version {natural_ir(opset)} or newer, but "
                                            f"{limit_by} reads at most IR {cap}"), "ir_version"
        return False
    before, model.ir_version = model.ir_version, cap
    try:
        if serde.fits_in_bytes(model):  # a larger one is checked from its file by the ladder's structure check
            onnx.checker.check_model(model)
    except Exception as exc:
        fitted.error, fitted.error_class = (f"the model cannot be stamped IR version {cap} (the exporter wrote "
                                            f"{before}): {first_line(exc, 300)}"), "ir_version"
        return False
    fitted.notes.append(f"IR version {before} stamped {cap} ({limit_by})")
    return True
