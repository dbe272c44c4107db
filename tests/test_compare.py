"""The comparison engine on synthetic arrays: every verdict both ways."""

from __future__ import annotations

import json

import numpy as np
import pytest
from rich.console import Console

from onnxgate.verify.compare import (
    Tolerance,
    check_input_sensitivity,
    compare_outputs,
    comparisons_table,
    default_tolerance,
    match_detections,
    sci,
)

RNG = np.random.default_rng(0)


def one(ref, got, **kw):
    (comp,) = compare_outputs({"y": ref}, {"y": got}, **kw)
    return comp


def test_default_tolerances_by_dtype():
    assert default_tolerance("float32") == Tolerance(1e-3, 1e-4)
    assert default_tolerance("float16") == default_tolerance("bfloat16") == Tolerance(1e-2, 1e-3)
    assert default_tolerance("float64") == Tolerance(1e-7, 1e-9)
    assert default_tolerance("int64") == default_tolerance("bool") == Tolerance(0.0, 0.0)


def test_sci_is_compact():
    assert (sci(1e-3), sci(0.0312), sci(3.2e7), sci(0.0)) == ("1e-3", "3.1e-2", "3.2e7", "0")


def test_identical_outputs_pass_with_full_statistics():
    ref = RNG.standard_normal((4, 8)).astype(np.float32)
    comp = one(ref, ref.copy())
    assert comp.passed and comp.reason is None
    assert comp.max_abs_err == 0 and comp.mismatch_fraction == 0
    assert comp.cosine == pytest.approx(1.0) and comp.top1_agreement == 1.0 and comp.top5_agreement == 1.0
    assert comp.tolerance == Tolerance(1e-3, 1e-4) and not comp.scale_relative


def test_every_output_is_compared_and_failures_explained():
    ref = {"a": np.zeros((2, 10), np.float32), "b": np.ones(3, np.float32), "c": np.ones(2, np.int64),
           "gone": np.ones(1, np.float32)}
    got = {"a": np.zeros((2, 11), np.float32), "b": np.ones(3, np.float16), "c": np.array([1, 2])}
    comps = {c.name: c for c in compare_outputs(ref, got)}
    assert list(comps) == ["a", "b", "c", "gone"]
    assert not any(c.passed for c in comps.values())
    assert comps["a"].reason == "shape mismatch (2, 10) vs (2, 11)"
    assert comps["b"].reason.startswith("dtype mismatch float32 vs float16")
    assert "50% of elements outside rtol=0 atol=0" in comps["c"].reason  # integers compare exactly
    assert "missing" in comps["gone"].reason and comps["gone"].shape_got is None


def test_mismatch_reason_names_fraction_tolerance_and_error():
    ref = np.ones(8, np.float32)
    got = ref.copy()
    got[0] += 0.031
    comp = one(ref, got)
    assert not comp.passed
    assert comp.reason == "12.5% of elements outside rtol=1e-3 atol=1e-4 (max abs err 3.1e-2)"
    assert comp.max_rel_err == pytest.approx(0.031, rel=1e-3)


def test_small_error_within_tolerance_passes_and_custom_tolerance_applies():
    ref = RNG.standard_normal(100).astype(np.float32)
    got = ref + np.float32(5e-5)
    assert one(ref, got).passed
    assert not one(ref, got, tolerances={"y": Tolerance(0.0, 1e-6)}).passed
    assert not one(ref, got, default=Tolerance(0.0, 1e-6)).passed


def test_nan_and_inf_must_sit_where_the_reference_has_them():
    ref = np.array([1.0, np.nan, 3.0, np.inf], np.float32)
    assert one(ref, ref.copy()).passed  # NaN and Inf in the same places: fine
    got = ref.copy()
    got[0] = np.nan
    comp = one(ref, got)
    assert not comp.passed and "NaN where PyTorch has none (1 elements)" in comp.reason
    got = ref.copy()
    got[2] = -np.inf
    assert "Inf where PyTorch has none" in one(ref, got).reason
    got = ref.copy()
    got[3] = -np.inf  # opposite sign
    assert "Inf where PyTorch has none" in one(ref, got).reason
    got = ref.copy()
    got[1] = 2.0
    assert "PyTorch has NaN where the candidate has a number" in one(ref, got).reason
    assert "NaN where ORT has none" in one(np.zeros(2), np.array([0, np.nan]), reference_label="ORT").reason


def test_huge_outputs_are_judged_against_their_scale_both_ways():
    ref = (RNG.standard_normal(10_000) * 3.2e7).astype(np.float32)
    ref[:10] = RNG.standard_normal(10) * 1e-2  # values near a zero-crossing
    noise = ref.astype(np.float64) + RNG.standard_normal(ref.shape) * 1e-6 * np.abs(ref).max()
    comp = one(ref, noise.astype(np.float32))
    assert comp.mismatch_fraction > 0  # element-wise the near-zero values fail ...
    assert comp.passed and comp.scale_relative  # ... yet relative to the output's scale this is noise
    assert comp.scale == pytest.approx(np.abs(ref).max())
    assert comp.scaled_max_err < 1e-5
    assert "judged against the output's scale (max |ref| = " in comp.notes[0]

    wrong = ref * np.float32(1.01)  # a real 1% error
    comp = one(ref, wrong)
    assert not comp.passed and comp.scale_relative
    assert "also above atol + rtol * scale" in comp.reason


def test_moderate_outputs_stay_element_wise():
    ref = np.array([100.0, 1e-3], np.float32)
    comp = one(ref, np.array([100.0, 2e-3], np.float32))
    assert not comp.passed and not comp.scale_relative


def test_topk_agreement_only_for_classifier_like_outputs():
    ref = np.array([[0.1, 0.9, 0.0, 0.2, 0.3, 0.4], [0.5, 0.4, 0.0, 0.1, 0.2, 0.3]], np.float32)
    got = ref.copy()
    got[1, 1] = 0.6  # row 1 argmax flips; the top-5 set stays the same
    comp = one(ref, got)
    assert comp.top1_agreement == 0.5 and comp.top5_agreement == 1.0
    got[1, 2] = 0.7  # class 2 enters row 1's top 5
    assert one(ref, got).top5_agreement == 0.5
    assert one(ref[:, :3], ref[:, :3]).top5_agreement is None  # fewer than 5 classes: top-1 only
    assert one(ref[:, :3], ref[:, :3]).top1_agreement == 1.0
    assert one(ref[0], ref[0]).top1_agreement is None  # 1-D: not a classifier output
    assert one(ref.astype(np.int64), ref.astype(np.int64)).top1_agreement is None


def test_comparison_serializes_to_json():
    comps = compare_outputs({"y": np.ones((2, 3), np.float32), "z": np.ones(1)}, {"y": np.ones((2, 3), np.float32)})
    data = json.loads(json.dumps([c.to_dict() for c in comps]))
    assert data[0]["shape_ref"] == [2, 3] and data[0]["tolerance"] == {"rtol": 1e-3, "atol": 1e-4}
    assert data[0]["passed"] is True and data[1]["passed"] is False


def test_table_renders_every_output():
    comps = compare_outputs({"logits": np.ones((2, 5), np.float32), "box[0]": np.ones(2, np.float32)},
                            {"logits": np.ones((2, 5), np.float32), "box[0]": np.zeros(2, np.float32)})
    console = Console(width=200, record=True)
    console.print(comparisons_table(comps))
    text = console.export_text()
    assert "logits" in text and "box[0]" in text and "pass" in text and "FAIL" in text and "100.0%" in text


def test_input_sensitivity_flags_identical_and_constant_outputs():
    a = {"live": RNG.standard_normal(4), "same": np.arange(4.0), "flat": np.full(4, 0.25), "nan": np.array([np.nan])}
    b = {"live": RNG.standard_normal(4), "same": np.arange(4.0), "flat": np.full(4, 0.5), "nan": np.array([np.nan])}
    assert check_input_sensitivity(a, b) == ["same", "flat", "nan"]


BOXES = np.array([[0, 0, 10, 10], [20, 20, 40, 40], [5, 5, 15, 15], [50, 50, 60, 70]], np.float32)
SCORES = np.array([0.9, 0.8, 0.8001, 0.3], np.float32)
LABELS = np.array([1, 2, 1, 3])


def test_detections_match_as_sets_despite_reordering():
    perm = np.array([2, 0, 3, 1])  # near-tied scores reordered
    result = match_detections(BOXES, SCORES, LABELS, BOXES[perm] + 0.01, SCORES[perm], LABELS[perm])
    assert result.passed and result.matched == 4 and result.reason is None
    assert result.min_iou > 0.99


def test_moved_box_fails():
    moved = BOXES.copy()
    moved[1] += 5
    result = match_detections(BOXES, SCORES, LABELS, moved, SCORES, LABELS)
    assert not result.passed
    assert result.unmatched_ref == [1] and result.unmatched_got == [1]
    assert "1 reference detection(s) without a match" in result.reason


def test_wrong_label_or_score_fails():
    assert not match_detections(BOXES, SCORES, LABELS, BOXES, SCORES, np.array([5, 2, 1, 3])).passed
    result = match_detections(BOXES, SCORES, LABELS, BOXES, SCORES + np.array([0, 0.01, 0, 0], np.float32), LABELS)
    assert not result.passed and "matched scores differ" in result.reason


def test_detection_near_the_score_cut_may_be_dropped():
    scores = SCORES.copy()
    scores[3] = 0.0502  # just above the model's threshold of 0.05: the other runtime dropped it
    result = match_detections(BOXES, scores, LABELS, BOXES[:3], scores[:3], LABELS[:3], score_threshold=0.05)
    assert result.passed and result.unmatched_ref == [3]
    assert not match_detections(BOXES, SCORES, LABELS, BOXES[:3], SCORES[:3], LABELS[:3], score_threshold=0.05).passed
    # without a threshold the cut is the lowest score present (a top-k cap)
    assert match_detections(BOXES, SCORES, LABELS, BOXES[:3], SCORES[:3], LABELS[:3]).passed
    assert not match_detections(BOXES, SCORES, LABELS, BOXES[[0, 2, 3]], SCORES[[0, 2, 3]], LABELS[[0, 2, 3]]).passed


def test_tiny_outputs_are_judged_against_their_own_scale():
    """Vanished activations (max |ref| ~ 1e-9) would pass any candidate within atol=1e-4, zeros included."""
    rng = np.random.default_rng(0)
    ref = (rng.standard_normal((2, 10)) * 1e-9).astype(np.float32)
    zeros = compare_outputs({"y": ref}, {"y": np.zeros_like(ref)})[0]
    assert not zeros.passed and "atol tightened" in " ".join(zeros.notes)
    noise = compare_outputs({"y": ref}, {"y": ref * (1 + 1e-6)})[0]
    assert noise.passed
