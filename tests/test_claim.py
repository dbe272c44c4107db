"""The claim: one typed record of what a verification proved, its one codec, and one reader of each form.

Round trips through every form (ONNX metadata, bundle manifest, deploy side file, report), old files read as
before, malformed entries refused by name, ``bundle.open`` reading a bundle once, the export's proof handed to the
verify stage (no second discovery), and a scan of the source: nothing but the codec spells where a claim is
stored (issue 24)."""

from __future__ import annotations

import ast
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from helpers import edit_manifest, golden_and_reference, make_model

import onnxgate
from onnxgate import claim as cl
from onnxgate.errors import BadInputError, IntegrityError
from onnxgate.spec import Dim, parse_input

SRC = Path(onnxgate.__file__).parent


def full_claim() -> cl.Claim:
    spec = parse_input("input:Nx3x16x16:float32")
    dim = cl.DimClaim("N", 1, 64, None, 2, declared_min=1, declared_max=None, declared_multiple_of=1, unranged=True,
                      narrower=False, granularity=1,
                      edges=(cl.EdgeReason("max", 64, 65, "pytorch", "index out of range"),),
                      failures=(cl.DimFailure(65, "pytorch", "index out of range"),), probes=(2, 1, 64, 65, 3),
                      skipped=(33,), summary="N: 1..64 (upper edge 64: PyTorch itself fails at 65)")
    return cl.Claim(
        inputs=(spec,), dims=(dim,),
        outputs=(cl.OutputClaim("logits", 1e-3, 1e-4, "dtype default", 2.5e-6),),
        conditions=(cl.RuntimeCondition("onnxruntime", "CPUExecutionProvider", opt_level="disable", version="1.2"),
                    cl.RuntimeCondition("openvino", "CPU", precision_hint="f32", threads=4, layout="NCHW")),
        preprocess={"spec": "resize=256,crop=224,mean=0.485/0.456/0.406,std=0.229/0.224/0.225,order=RGB"},
        reference=cl.ReferenceIdentity("torchvision:resnet18", "ab" * 32, True),
        evidence=cl.Evidence(cases=14, seeds=(0, 1), data=2, sizes={"N": (2, 1, 64, 65, 3)}),
        noise={"logits": {"noise_abs": 3e-6, "scale": 4.0, "measured_by": "float64, threads"}},
        hunt={"budget": 200, "seed": 0, "score": 0.4}, batching={"sizes": [1, 2, 8], "bound": 1e-6})


# ------------------------------------------------------------------------------------------------ round trips


def test_metadata_round_trip_keeps_every_field():
    claim = full_claim()
    meta = cl.to_metadata(claim)
    assert set(meta) == {"onnxgate.inputs", "onnxgate.dims", cl.CLAIM_KEY} and all(isinstance(v, str) for v in meta.values())
    assert cl.from_metadata(meta, model="m.onnx") == claim


def test_manifest_round_trip_keeps_every_field_and_the_long_standing_form():
    claim = full_claim()
    fields = cl.to_manifest(claim)
    assert fields["tolerances"] == {"logits": {"rtol": 1e-3, "atol": 1e-4}}
    assert {k: fields["domain"]["N"][k] for k in ("min", "max", "multiple_of", "example")} == \
        {"min": 1, "max": 64, "multiple_of": None, "example": 2}
    manifest = json.loads(json.dumps({"outputs": [{"name": "logits"}], **fields}))  # as it is stored
    assert cl.from_manifest(manifest) == claim


def test_side_file_and_report_round_trip():
    from onnxgate.report.html import render_html

    claim = full_claim()
    assert cl.from_side_file(cl.to_side_file(claim), where="a.claim.json") == claim
    assert cl.from_report(json.loads(json.dumps(cl.to_report(claim)))) == claim
    page = render_html({"stages": {"verify": {"claim": cl.to_report(claim)}}})  # the HTML report reads the claim
    assert "Holds under: onnxruntime 1.2, CPUExecutionProvider" in page and "precision f32, 4 thread(s)" in page
    assert "max 64: pytorch fails at 65 (index out of range)" in page


def test_metadata_entries_are_what_export_has_always_written():
    from dataclasses import asdict

    spec, dim = parse_input("x:Bx3:float32"), Dim("B", 1, 8, 2)
    entries = cl.metadata_entries([spec], {"B": dim})
    assert entries["onnxgate.dims"] == json.dumps({"B": asdict(dim)}) == cl.dims_entries({"B": dim})["onnxgate.dims"]
    assert json.loads(entries["onnxgate.dims"]) == {"B": {"name": "B", "min": 1, "max": 8, "example": 2,
                                                          "multiple_of": None}}
    claim = cl.from_metadata(entries, model="m.onnx")  # a file written before onnxgate.claim: specs and dims only
    assert claim.inputs == (spec,) and claim.domains == {"B": dim} and claim.outputs == () and claim.conditions == ()


def test_a_manifest_written_before_the_claim_section_reads_as_its_domain_and_tolerances():
    manifest = {"outputs": [{"name": "y"}], "tolerances": {"y": {"rtol": 0.01, "atol": 0.001}},
                "domain": {"B": {"min": 1, "max": 4, "multiple_of": None, "example": 2}}}
    claim = cl.from_manifest(manifest)
    assert claim.domains == {"B": Dim("B", 1, 4, 2)}
    assert claim.outputs == (cl.OutputClaim("y", 0.01, 0.001, "bundle"),) and claim.inputs == ()


def test_a_discovered_domain_becomes_the_dim_claim_it_proves():
    from onnxgate.verify.domain import DimDomain, DomainFailure

    narrowed = DimDomain("H", 32, 512, 1, 224, 64, 512, 32, [DomainFailure(48, "onnxruntime", "Reshape")],
                         probes=[224, 32, 512, 48], skipped=[40])
    dim = narrowed.to_claim()  # narrower than declared: the verified interval and granularity, and why
    assert (dim.min, dim.max, dim.multiple_of, dim.example, dim.narrower) == (64, 512, 32, 224, True)
    assert (dim.declared_min, dim.declared_max, dim.granularity) == (32, 512, 32)
    assert dim.failures == (cl.DimFailure(48, "onnxruntime", "Reshape"),) and dim.probes == (224, 32, 512, 48)
    assert dim.skipped == (40,) and dim.summary == narrowed.summary()
    edged = DimDomain("H", 1, None, 1, 224, 63, None, 1, [DomainFailure(62, "pytorch", "Output size is too small")],
                      unranged=True)
    assert edged.to_claim().edges == (cl.EdgeReason("min", 63, 62, "pytorch", "Output size is too small"),)
    assert edged.to_claim().as_dim() == Dim("H", 63, None, 224)


# ------------------------------------------------------------------------------------------------ refusals


@pytest.mark.parametrize("edit, named", [
    (lambda c: c["conditions"][0].update(threads=-1), "conditions[0].threads"),
    (lambda c: c["outputs"][0].update(rtol=-1), "outputs[0].rtol"),
    (lambda c: c.update(version=99), "version"),
    (lambda c: c.update(surprise=1), "unknown fields"),
    (lambda c: c["dims"]["N"].update(probes=[-3]), "dims.N.probes"),
    (lambda c: c["reference"].update(reinit_degenerate="yes"), "reference.reinit_degenerate"),
])
def test_a_malformed_claim_entry_is_refused_by_name(edit, named):
    meta = cl.to_metadata(full_claim())
    extras = json.loads(meta[cl.CLAIM_KEY])
    edit(extras)
    meta[cl.CLAIM_KEY] = json.dumps(extras)
    with pytest.raises(BadInputError) as err:
        cl.from_metadata(meta, model="m.onnx")
    assert cl.CLAIM_KEY in err.value.message and named in err.value.message


def test_a_manifest_domain_goes_through_the_dims_checks():
    manifest = {"outputs": [{"name": "y"}], "tolerances": {},
                "domain": {"B": {"min": 8, "max": 4, "multiple_of": None, "example": 2}}}
    with pytest.raises(BadInputError, match="the range 8..4 is empty"):
        cl.from_manifest(manifest)
    with pytest.raises(BadInputError, match="'tolerances' names 'z'"):
        cl.from_manifest({"outputs": [{"name": "y"}], "tolerances": {"z": {"rtol": 0, "atol": 0}}})


# ------------------------------------------------------------------------------------------------ bundle.open


def test_bundle_open_reads_the_claim_once_and_refuses_a_changed_file(tmp_path):
    from onnxgate.bundle import VerifiedBundle, write_bundle
    from onnxgate.bundle import open as open_bundle  # onnxgate.bundle the attribute is the `bundle` command

    model = make_model(tmp_path / "m.onnx")
    inputs, reference = golden_and_reference(model)
    claim = replace(full_claim(), outputs=(cl.OutputClaim("logits", 1e-3, 1e-4, "dtype default", 1e-6),))
    folder = write_bundle(tmp_path / "b", model_path=model, golden_inputs=inputs, reference_outputs=reference,
                          claim=claim)
    opened = open_bundle(folder)
    assert isinstance(opened, VerifiedBundle) and opened.claim == claim
    assert opened.manifest["domain"]["N"]["verified"]["declared_max"] is None
    golden, ref = opened.golden()
    assert np.array_equal(golden["input"], inputs["input"]) and set(ref) == {"logits"}
    edit_manifest(folder, lambda m: m["claim"]["conditions"][0].update(threads=1))  # the manifest's checksum is
    (folder / "golden_inputs.npz").write_bytes(b"x")  # not in the manifest: any listed file changing is caught
    with pytest.raises(IntegrityError) as err:
        open_bundle(folder, purpose="serves")
    assert err.value.exit_code == 9 and "golden_inputs.npz" in err.value.message and "serves only" in err.value.message


def test_a_deployed_artifact_carries_the_claim_it_was_verified_under(tmp_path, monkeypatch):
    from onnxgate.bundle import manifest as mf
    from onnxgate.bundle import verify_bundle, write_bundle
    from onnxgate.deploy.api import deploy_bundle

    model = make_model(tmp_path / "m.onnx")
    inputs, reference = golden_and_reference(model)
    folder = write_bundle(tmp_path / "b", model_path=model, golden_inputs=inputs, reference_outputs=reference,
                          claim=replace(full_claim(), conditions=()))
    hashed, hash_checked = [], mf.hash_checked
    monkeypatch.setattr(mf, "hash_checked", lambda path, size: hashed.append(path.name) or hash_checked(path, size))
    report = deploy_bundle(folder, ("ort-mobile",), measure_latency=False)
    assert hashed.count("model.onnx") == 1  # bundle.open checks the files; verify_bundle(opened) does not again
    monkeypatch.undo()
    (row,) = report.artifacts
    side = folder / "targets" / "ort-mobile-fp32.claim.json"
    assert row.status == "passed" and "ort-mobile-fp32.claim.json" in row.files and side.is_file()
    artifact = cl.from_side_file(side.read_text(), where=side)
    assert [c.runtime for c in artifact.conditions] == ["ort-mobile"] and artifact.conditions[0].provider
    # deploy_bundle has no PyTorch to probe other sizes with: the artifact claims the golden feed's size only
    assert artifact.domains == {"N": Dim("N", 2, 2, 2)} and artifact.reference == full_claim().reference
    assert artifact.evidence.cases == row.feeds and verify_bundle(folder).passed  # the side file is checksummed


# ------------------------------------------------------------------------------------- proof handed along


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The tiny CNN exported with a dynamic B, and its full verification: what the ladder's proof of its winner
    is (``verify_export``: the onnxruntime parity of that graph at verify's settings)."""
    torch = pytest.importorskip("torch")
    from helpers import tiny_cnn, tiny_config

    from onnxgate.sources.model import LoadedModel
    from onnxgate.verify.api import verify

    path = tmp_path_factory.mktemp("claim") / "model.onnx"
    module, config = tiny_cnn(), tiny_config()
    torch.onnx.export(module, (torch.randn(2, 4, 4, 4),), str(path), dynamo=False, input_names=["x"],
                      output_names=["y"], dynamic_axes={"x": {0: "B"}, "y": {0: "B"}}, opset_version=17)
    loaded = LoadedModel(module, "tests/helpers.py:tiny_cnn")
    proof = verify(path, loaded, config=config).parities[0]
    return loaded, config, path, proof


def test_the_verify_stage_takes_the_exports_proof_instead_of_discovering_again(exported):
    from types import SimpleNamespace

    from onnxgate.pipeline import _proof_of
    from onnxgate.verify.api import verify

    loaded, config, path, proof = exported
    ladder = SimpleNamespace(winner=1, attempts=[SimpleNamespace(parity=None), SimpleNamespace(parity=proof)])
    assert _proof_of(ladder) is proof and _proof_of(None) is None  # the pipeline hands the winner's proof along
    assert proof.domains["B"].probes  # the proof holds B's discovered domain
    handed = verify(path, loaded, config=config, proof=proof)
    assert handed.passed and handed.parities[0].cases is proof.cases and handed.parities[0].domains is proof.domains
    assert handed.parities[0].noise.passed  # no second discovery: the proof's cases, judged at its noise afresh
    feeds = [{"x": np.random.default_rng(i).standard_normal((3, 4, 4, 4)).astype(np.float32)} for i in range(2)]
    with_data = verify(path, loaded, config=config, proof=proof, data=feeds)
    added = [c for c in with_data.parities[0].cases if c.source == "data"]
    assert len(added) == 2 and all(c.passed for c in added)  # the real data the proof did not run, judged
    assert len(with_data.parities[0].cases) == len(proof.cases) + 2 and with_data.parities[0].domains == proof.domains
    alone = verify(path, loaded, config=config)  # `onnxgate verify model.onnx`: discovers as before
    assert alone.parities[0] is not proof and alone.claim.domains == handed.claim.domains == {"B": Dim("B", 1, 8, 2)}
    claim = handed.claim
    assert claim.conditions[0].runtime == "onnxruntime" and claim.conditions[0].opt_level == "disable"
    assert claim.outputs and all(o.max_abs_err is not None and "float32 noise" in o.policy for o in claim.outputs)
    assert claim.evidence.sizes["B"] == tuple(proof.domains["B"].probes) and claim.reference.source == loaded.ref
    assert cl.from_report(handed.to_dict()["claim"]) == claim  # the report states the same claim
    other_seeds = verify(path, loaded, config=config, proof=proof, seeds=(5, 6))  # not what the proof ran
    assert other_seeds.parities[0] is not proof


# ------------------------------------------------------------------------------------------------ one codec

# Modules allowed to spell the ``onnxgate.dims`` or ``onnxgate.inputs`` key, and why (transform/fp16.py retypes
# the input specs through claim.metadata_entries).
DIMS_KEY_READERS = {
    "metadata.py": "the validated low-level reader the codec calls (claim.py names the key by its constant)",
}
# Modules allowed to use the manifest's claim keys ("domain", "tolerances") as keys, and why.
MANIFEST_KEY_READERS = {
    "claim.py": "the codec",
    "zoo/task.py": "the zoo ledger's own 'domain' column (from the report's claim), not the manifest's",
    "zoo/html.py": "shows the zoo ledger's 'domain' column",
}


def _key_uses(tree: ast.AST, keys: set[str]) -> list[int]:
    """Lines where one of ``keys`` is a subscript, a ``.get``/``.pop``/``.setdefault`` key or a dict literal key."""
    lines = []
    for node in ast.walk(tree):
        found = []
        if isinstance(node, ast.Subscript):
            found = [node.slice]
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                node.func.attr in ("get", "pop", "setdefault") and node.args:
            found = [node.args[0]]
        elif isinstance(node, ast.Dict):
            found = [k for k in node.keys if k is not None]
        lines += [n.lineno for n in found if isinstance(n, ast.Constant) and n.value in keys]
    return lines


def _sources():
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        yield rel, ast.parse(path.read_text(encoding="utf-8"), rel)


def test_only_the_codec_spells_where_a_claim_is_stored():
    dims_key, manifest_keys = {}, {}
    for rel, tree in _sources():
        dims_key[rel] = [n.lineno for n in ast.walk(tree)
                         if isinstance(n, ast.Constant) and n.value in ("onnxgate.dims", "onnxgate.inputs")]
        manifest_keys[rel] = _key_uses(tree, {"domain", "tolerances"})
    spelled = [f"{rel}:{lines}" for rel, lines in dims_key.items() if lines and rel not in DIMS_KEY_READERS]
    assert not spelled, f"read and write onnxgate.dims / onnxgate.inputs through onnxgate.claim: {spelled}"
    spelled = [f"{rel}:{lines}" for rel, lines in manifest_keys.items() if lines and rel not in MANIFEST_KEY_READERS]
    assert not spelled, f"read and write the manifest's domain/tolerances through onnxgate.claim: {spelled}"
    # The lists only shrink: an entry whose module no longer spells the key must go.
    stale = [rel for rel in DIMS_KEY_READERS if not dims_key.get(rel)]
    stale += [rel for rel in MANIFEST_KEY_READERS if not manifest_keys.get(rel)]
    assert not stale, f"no longer needed: delete from the allowlists: {stale}"


def test_the_scan_sees_a_spelled_key():
    """The scan above can fail: it finds each way of spelling a key."""
    tree = ast.parse('m["tolerances"]\nm.get("domain")\n{"domain": 1}\nm.pop("x")')
    assert _key_uses(tree, {"domain", "tolerances"}) == [1, 2, 3]
    assert any(isinstance(n, ast.Constant) and n.value == "onnxgate.dims"
               for n in ast.walk(ast.parse('meta["onnxgate.dims"]')))


def test_the_claim_module_stays_light():
    import subprocess
    import sys

    code = ("import sys; import onnxgate.claim, onnxgate.bundle.opened; "
            "print([m for m in ('torch', 'onnx') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    code = "import sys; import onnxgate.claim; print('numpy' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() \
        == "False"
